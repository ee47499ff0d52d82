package main

import (
	"fmt"
	"io"
	"net/http"
	"net/http/pprof"

	"k8s.io/component-base/logs"
)

// installProfiling serves what kube-proxy's --profiling (enableProfiling) adds to its
// metrics server, at the same paths (the apiserver library's routes.Profiling and
// routes.DebugFlags): Go's profiles under /debug/pprof/, and /debug/flags/v, where a PUT
// of a number sets the log verbosity.
func installProfiling(mux *http.ServeMux) {
	mux.Handle("/debug/pprof", http.RedirectHandler("/debug/pprof/", http.StatusFound))
	// The index also serves each named profile (heap, goroutine, ...) under its name.
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)

	mux.HandleFunc("/debug/flags", debugFlagsIndex)
	mux.HandleFunc("/debug/flags/", debugFlagsIndex)
	mux.HandleFunc("/debug/flags/v", setVerbosity)
}

// debugFlagsIndex lists the flags /debug/flags/ can set, as kube-proxy's page does.
func debugFlagsIndex(w http.ResponseWriter, _ *http.Request) {
	io.WriteString(w, "<html>\n<head>\n<title>/debug/flags/</title>\n</head>\n<body>\n/debug/flags/<br>\n<br>\nflags:<br>\n<table>\n<tr>v<br>\n</table>\n<br>\nfull flags configurable<br>\n</body>\n</html>\n")
}

// setVerbosity sets klog's verbosity (and the json logger's) to the number PUT, through
// the same component-base setter kube-proxy uses.
func setVerbosity(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPut {
		plainText(w, http.StatusNotAcceptable, "unsupported http method")
		return
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		plainText(w, http.StatusBadRequest, "error reading request body: "+err.Error())
		return
	}
	response, err := logs.GlogSetter(string(body))
	if err != nil {
		plainText(w, http.StatusBadRequest, err.Error())
		return
	}
	plainText(w, http.StatusOK, response)
}

func plainText(w http.ResponseWriter, status int, text string) {
	w.Header().Set("Content-Type", "text/plain")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	fmt.Fprintln(w, text)
}
