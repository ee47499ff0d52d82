// Command labagent plays the parts of a lab that run inside network namespaces: a "pod"
// that answers HTTP with its own name, and a client that sends requests through a Service
// and reports which pod answered each one.
//
//	labagent serve NAME ADDR       answer every request on ADDR with NAME
//	labagent get URL COUNT         make COUNT requests (a new connection each) and print JSON
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"syscall"
	"time"
)

// Result is what `get` prints: how many requests each pod answered, from which client
// address the pods saw them come (to tell masqueraded traffic), and the failures by kind
// ("refused" means the connection was actively rejected, "timeout" that nothing
// answered), so callers can tell REJECT from DROP.
type Result struct {
	Answers  map[string]int `json:"answers"`
	Clients  map[string]int `json:"clients"`
	Failures map[string]int `json:"failures"`
	// LastError is the text of the last failure, for test messages.
	LastError string `json:"lastError,omitempty"`
	// MaxFailureSeconds is the longest time a failed request took.
	MaxFailureSeconds float64 `json:"maxFailureSeconds"`
}

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "labagent:", err)
		os.Exit(2)
	}
}

func run(args []string) error {
	switch {
	case len(args) == 3 && args[0] == "serve":
		name := args[1]
		return http.ListenAndServe(args[2], http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Connection", "close")
			if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
				w.Header().Set(clientHeader, host)
			}
			fmt.Fprint(w, name)
		}))
	case len(args) == 3 && args[0] == "get":
		count, err := strconv.Atoi(args[2])
		if err != nil {
			return fmt.Errorf("count %q: %w", args[2], err)
		}
		return json.NewEncoder(os.Stdout).Encode(get(args[1], count))
	default:
		return errors.New("usage: labagent serve NAME ADDR | labagent get URL COUNT")
	}
}

// clientHeader carries the client address a pod saw.
const clientHeader = "X-Lab-Client"

func get(url string, count int) Result {
	client := &http.Client{
		Timeout:   2 * time.Second,
		Transport: &http.Transport{DisableKeepAlives: true},
	}
	res := Result{Answers: map[string]int{}, Clients: map[string]int{}, Failures: map[string]int{}}
	for range count {
		start := time.Now()
		resp, err := client.Get(url)
		if err == nil {
			body, readErr := io.ReadAll(resp.Body)
			resp.Body.Close()
			if readErr == nil {
				res.Answers[string(body)]++
				res.Clients[resp.Header.Get(clientHeader)]++
				continue
			}
			err = readErr
		}
		kind := "other"
		switch {
		case errors.Is(err, syscall.ECONNREFUSED):
			kind = "refused"
		case errors.Is(err, os.ErrDeadlineExceeded), isTimeout(err):
			kind = "timeout"
		}
		res.Failures[kind]++
		res.LastError = err.Error()
		res.MaxFailureSeconds = max(res.MaxFailureSeconds, time.Since(start).Seconds())
	}
	return res
}

func isTimeout(err error) bool {
	var t interface{ Timeout() bool }
	return errors.As(err, &t) && t.Timeout()
}
