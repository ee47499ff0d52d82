package loadgen

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// server answers like a lab pod: its name, and a closed connection unless the client
// asks to keep it. It counts the connections it accepted.
func server(t *testing.T, name string) (addr string, conns *atomic.Int64) {
	conns = &atomic.Int64{}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.EqualFold(r.Header.Get("Connection"), "keep-alive") {
			w.Header().Set("Connection", "close")
		}
		fmt.Fprint(w, name)
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String(), conns
}

func TestRun(t *testing.T) {
	for _, tc := range []struct {
		name      string
		keepAlive bool
	}{
		{"new connection per request", false},
		{"keep-alive", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr, conns := server(t, "pod-1")
			res, err := Run(Options{Addr: addr, Conns: 3, Duration: 300 * time.Millisecond, Warmup: 50 * time.Millisecond, KeepAlive: tc.keepAlive})
			if err != nil {
				t.Fatal(err)
			}
			if res.Requests < 10 || len(res.Errors) != 0 {
				t.Fatalf("got %d requests and errors %v, want at least 10 and none", res.Requests, res.Errors)
			}
			if res.Answers["pod-1"] != res.Requests {
				t.Errorf("answers %v, want all %d from pod-1", res.Answers, res.Requests)
			}
			if !(0 < res.P50 && res.P50 <= res.P99 && res.P99 <= res.P999 && res.P999 <= res.Max) {
				t.Errorf("percentiles out of order: p50 %g p99 %g p999 %g max %g", res.P50, res.P99, res.P999, res.Max)
			}
			if want := float64(res.Requests) / 0.3; res.RequestsPerSecond != want {
				t.Errorf("requests/s %g, want %g", res.RequestsPerSecond, want)
			}
			// Warm-up requests are not counted, but their connections are.
			switch got := conns.Load(); {
			case tc.keepAlive && got != 3:
				t.Errorf("keep-alive run opened %d connections, want one per worker (3)", got)
			case !tc.keepAlive && got < int64(res.Requests):
				t.Errorf("run opened %d connections for %d requests, want one per request", got, res.Requests)
			}
		})
	}
}

func TestRunCountsFailures(t *testing.T) {
	// A port nothing listens on: every connection is refused.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	res, err := Run(Options{Addr: addr, Conns: 2, Duration: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if res.Requests != 0 || res.Errors["refused"] == 0 {
		t.Fatalf("got %d requests and errors %v, want none answered and refusals counted", res.Requests, res.Errors)
	}
}

func TestRunRejectsInvalidOptions(t *testing.T) {
	for _, o := range []Options{
		{Addr: "127.0.0.1:80", Conns: 0, Duration: time.Second},
		{Addr: "127.0.0.1:80", Conns: 1},
		{Addr: "no-port", Conns: 1, Duration: time.Second},
	} {
		if _, err := Run(o); err == nil {
			t.Errorf("Run(%+v) succeeded, want an error", o)
		}
	}
}

func TestRank(t *testing.T) {
	sample := make([]float64, 1000)
	for i := range sample {
		sample[i] = float64(i + 1)
	}
	for _, tc := range []struct {
		q    float64
		want float64
	}{{0.5, 500}, {0.99, 990}, {0.999, 999}, {1, 1000}} {
		if got := rank(sample, tc.q); got != tc.want {
			t.Errorf("rank(q=%g) = %g, want %g", tc.q, got, tc.want)
		}
	}
	if got := rank([]float64{7}, 0.999); got != 7 {
		t.Errorf("rank of one value = %g, want 7", got)
	}
}
