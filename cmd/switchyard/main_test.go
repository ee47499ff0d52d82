package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/klog/v2"

	"github.com/switchyard/switchyard/config"
)

// runArgs, when set in the environment, makes the test binary run switchyard with these
// arguments (one a line) instead of the tests: what sets up logging can only run once
// in a process, and help goes to the process's standard output.
const runArgs = "SWYD_TEST_RUN_ARGS"

func TestMain(m *testing.M) {
	if args, ok := os.LookupEnv(runArgs); ok {
		os.Exit(run(strings.Split(args, "\n")))
	}
	os.Exit(m.Run())
}

// runSwitchyard runs switchyard with args in a process of its own: it must only be given
// arguments that exit before the proxy starts.
func runSwitchyard(t *testing.T, args ...string) (stdout, stderr string, status int) {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), runArgs+"="+strings.Join(args, "\n"))
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatal(err)
	}
	return out.String(), errOut.String(), cmd.ProcessState.ExitCode()
}

func TestExitStatus(t *testing.T) {
	tests := []struct {
		args []string
		want int
	}{
		{[]string{"--proxy-mode=bogus"}, 2},
		{[]string{"--no-such-flag"}, 2},
		{[]string{"--cluster-cidr=banana"}, 2},
		{[]string{"--feature-gates=NoSuchGate=true"}, 2},
		{[]string{"--metrics-port=0"}, 2},
		{[]string{"--version"}, 0},
		{[]string{"--help"}, 0},
		{[]string{"-h"}, 0},
		{[]string{"explain", "--help"}, 0},
		{[]string{"explain", "-h"}, 0},
		{[]string{"explain"}, 2},
		{[]string{"explain", "--proxy-mode=ipvs"}, 2},
		{[]string{"explain", "default"}, 2},
		{[]string{"explain", "--no-such-flag", "default/web"}, 2},
	}
	for _, tc := range tests {
		if got := run(tc.args); got != tc.want {
			t.Errorf("switchyard %q exited %d, want %d", tc.args, got, tc.want)
		}
	}
}

// TestHelp: --help names the explain subcommand, explain --help says how to use it, and
// both list the flags.
func TestHelp(t *testing.T) {
	tests := []struct {
		args []string
		want []string
	}{
		{args: []string{"--help"}, want: []string{"switchyard [flags]\n", "switchyard explain [flags] NAMESPACE/NAME", "explain --help", "\nFlags:\n", "--config string", "--logging-format"}},
		{args: []string{"explain", "--help"}, want: []string{"Usage:\n  switchyard explain [flags] NAMESPACE/NAME\n", "exits 0 when the kernel matches", "\nFlags:\n", "--kubeconfig string"}},
	}
	for _, tc := range tests {
		stdout, stderr, status := runSwitchyard(t, tc.args...)
		if status != 0 || stderr != "" {
			t.Errorf("switchyard %q exited %d, printed %q on stderr; want 0 and nothing", tc.args, status, stderr)
		}
		for _, w := range tc.want {
			if !strings.Contains(stdout, w) {
				t.Errorf("switchyard %q printed\n%s\nwithout %q", tc.args, stdout, w)
			}
		}
	}
}

// TestLoggingFormat: --write-config-to writes the file and logs that it did, as
// kube-proxy, in the format --logging-format asks for: JSON lines, or klog's text.
func TestLoggingFormat(t *testing.T) {
	tests := []struct {
		format string
		json   bool
	}{
		{format: "json", json: true},
		{format: "text"},
	}
	for _, tc := range tests {
		t.Run(tc.format, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "config.yaml")
			_, stderr, status := runSwitchyard(t, "--logging-format="+tc.format, "--write-config-to="+path, "--hostname-override=node-a")
			if status != 0 {
				t.Fatalf("exited %d: %s", status, stderr)
			}
			written, err := os.ReadFile(path)
			if err != nil || !bytes.Contains(written, []byte("kind: KubeProxyConfiguration\n")) || !bytes.Contains(written, []byte("format: "+tc.format+"\n")) {
				t.Errorf("wrote %q, %v; want a KubeProxyConfiguration with format %s", written, err, tc.format)
			}
			lines := strings.Split(strings.TrimSpace(stderr), "\n")
			var entry struct{ Msg, File string }
			last := lines[len(lines)-1]
			if isJSON := json.Unmarshal([]byte(last), &entry) == nil; isJSON != tc.json {
				t.Fatalf("logged %q: JSON %t, want %t", stderr, isJSON, tc.json)
			}
			if tc.json && (entry.Msg != "Wrote configuration" || entry.File != path) {
				t.Errorf("logged %+v, want msg \"Wrote configuration\" and the file", entry)
			}
			if !tc.json && !strings.Contains(last, `"Wrote configuration" file="`+path+`"`) {
				t.Errorf("logged %q, want klog's text with the file", last)
			}
		})
	}
}

// TestProfiling: the paths kube-proxy's --profiling serves on its metrics server.
func TestProfiling(t *testing.T) {
	mux := http.NewServeMux()
	installProfiling(mux)
	tests := []struct {
		method, path, body string
		status             int
		// want is in the response: its body, or its Location.
		want string
	}{
		{method: "GET", path: "/debug/pprof", status: http.StatusFound, want: "/debug/pprof/"},
		{method: "GET", path: "/debug/pprof/", status: http.StatusOK, want: "goroutine"},
		{method: "GET", path: "/debug/pprof/goroutine?debug=1", status: http.StatusOK, want: "goroutine profile"},
		{method: "GET", path: "/debug/pprof/symbol", status: http.StatusOK, want: "num_symbols"},
		{method: "GET", path: "/debug/flags/", status: http.StatusOK, want: "<tr>v<br>"},
		{method: "GET", path: "/debug/flags/v", status: http.StatusNotAcceptable, want: "unsupported http method"},
		{method: "PUT", path: "/debug/flags/v", body: "many", status: http.StatusBadRequest},
		{method: "PUT", path: "/debug/flags/v", body: "0", status: http.StatusOK, want: "successfully set klog.logging.verbosity to 0"},
	}
	for _, tc := range tests {
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, httptest.NewRequest(tc.method, tc.path, strings.NewReader(tc.body)))
		got := rec.Body.String() + rec.Header().Get("Location")
		if rec.Code != tc.status || !strings.Contains(got, tc.want) {
			t.Errorf("%s %s: %d %q, want %d with %q", tc.method, tc.path, rec.Code, got, tc.status, tc.want)
		}
	}
}

// TestListenHardFail: with --bind-address-hard-fail, a server that cannot bind reports it
// (and switchyard stops) instead of retrying.
func TestListenHardFail(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	failed := make(chan error, 1)
	listen(ctx, "metrics", taken.Addr().String(), http.NotFoundHandler(), func(err error) { failed <- err }, klog.Background())
	select {
	case err := <-failed:
		if !strings.Contains(err.Error(), "metrics server failed") || !strings.Contains(err.Error(), "address already in use") {
			t.Errorf("failed with %v, want the metrics server's bind error", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the server's failure was not reported")
	}
}

// TestWatchConfigFile: as kube-proxy, switchyard stops when the --config file is written
// or renamed, and not for other changes.
func TestWatchConfigFile(t *testing.T) {
	tests := []struct {
		name   string
		change func(path string) error
		stops  bool
	}{
		{name: "written", change: func(path string) error { return os.WriteFile(path, []byte("mode: ipvs\n"), 0o644) }, stops: true},
		{name: "renamed", change: func(path string) error { return os.Rename(path, path+".old") }, stops: true},
		{name: "its mode changed", change: func(path string) error { return os.Chmod(path, 0o600) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "config.conf")
			if err := os.WriteFile(path, []byte("mode: iptables\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			ctx, stop := context.WithCancelCause(context.Background())
			defer stop(nil)
			if err := watchConfigFile(ctx, path, stop); err != nil {
				t.Fatal(err)
			}
			if err := tc.change(path); err != nil {
				t.Fatal(err)
			}
			wait := time.Second
			if tc.stops {
				wait = 5 * time.Second
			}
			select {
			case <-ctx.Done():
			case <-time.After(wait):
			}
			err := stopped(ctx)
			if stopped := err != nil; stopped != tc.stops || (stopped && !strings.Contains(err.Error(), path)) {
				t.Errorf("stopped with %v; want stopped %t, naming the file", err, tc.stops)
			}
		})
	}
}

// TestClientConfig: kube-proxy's clientConnection settings replace the kubeconfig's in
// the client's rest.Config, with kube-proxy's defaults when none is given.
func TestClientConfig(t *testing.T) {
	tests := []struct {
		name  string
		set   func(*config.Config)
		want  rest.ContentConfig
		qps   float32
		burst int
	}{
		{name: "kube-proxy's defaults", set: func(*config.Config) {},
			want: rest.ContentConfig{ContentType: "application/vnd.kubernetes.protobuf"}, qps: 5, burst: 10},
		{name: "given", set: func(c *config.Config) {
			c.KubeAPIContentType, c.KubeAPIAcceptContentTypes, c.KubeAPIQPS, c.KubeAPIBurst = "application/json", "application/json", 50, 100
		}, want: rest.ContentConfig{ContentType: "application/json", AcceptContentTypes: "application/json"}, qps: 50, burst: 100},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := config.Defaults()
			cfg.Master = "https://127.0.0.1:6443"
			tc.set(&cfg)
			got, err := clientConfig(cfg)
			if err != nil {
				t.Fatal(err)
			}
			if got.ContentType != tc.want.ContentType || got.AcceptContentTypes != tc.want.AcceptContentTypes || got.QPS != tc.qps || got.Burst != tc.burst {
				t.Errorf("rest.Config has content type %q, accept %q, QPS %v, burst %d; want %q, %q, %v, %d",
					got.ContentType, got.AcceptContentTypes, got.QPS, got.Burst, tc.want.ContentType, tc.want.AcceptContentTypes, tc.qps, tc.burst)
			}
		})
	}
}
