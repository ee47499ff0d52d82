// Package loadgen is the load generator of the data-plane benchmark: a fixed number of
// connections, each sending HTTP requests back to back (a closed loop) to one address
// for a fixed time, with every request's latency kept.
//
// It speaks just enough HTTP/1.1 for the lab's pods (hack/labagent serve), on raw
// connections, so that the client's own cost per request stays small next to the path
// it measures. A request on a new connection is timed from the dial: the connection's
// first packet is the one the Service rules translate, and that is what differs between
// the modes.
package loadgen

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"sync"
	"syscall"
	"time"
)

// Options configures a run.
type Options struct {
	// Addr is the "ip:port" to send requests to.
	Addr string
	// Conns is the number of concurrent connections (workers).
	Conns int
	// Duration is the measured time; Warmup runs before it and is not recorded, so that
	// the first connections (ARP, conntrack, lazily built state) do not count.
	Duration time.Duration
	Warmup   time.Duration
	// KeepAlive sends every request of a worker on one connection; otherwise each
	// request opens a new one.
	KeepAlive bool
	// Timeout bounds one request, connection included.
	Timeout time.Duration
}

// Result is what a run measured. Latencies are in seconds.
type Result struct {
	// Requests is the number of requests answered with 200 inside the measured window.
	Requests          int     `json:"requests"`
	Seconds           float64 `json:"seconds"`
	RequestsPerSecond float64 `json:"requestsPerSecond"`
	// Errors counts failed requests by kind: "refused", "timeout", "reset", "status"
	// (an answer other than 200) and "other".
	Errors map[string]int `json:"errors"`
	// Answers counts the answered requests by the name in the body (the pod).
	Answers map[string]int `json:"answers"`
	P50     float64        `json:"p50"`
	P99     float64        `json:"p99"`
	P999    float64        `json:"p999"`
	Max     float64        `json:"max"`
}

// Run sends requests as o says and returns what it measured. It fails only on invalid
// options; failed requests are counted, not returned.
func Run(o Options) (*Result, error) {
	if o.Conns < 1 || o.Duration <= 0 || o.Warmup < 0 {
		return nil, fmt.Errorf("invalid load options %+v: need at least one connection and a positive duration", o)
	}
	if _, _, err := net.SplitHostPort(o.Addr); err != nil {
		return nil, fmt.Errorf("invalid load address %q: %w", o.Addr, err)
	}
	if o.Timeout <= 0 {
		o.Timeout = 2 * time.Second
	}
	start := time.Now()
	measureFrom, end := start.Add(o.Warmup), start.Add(o.Warmup+o.Duration)
	workers := make([]worker, o.Conns)
	var wg sync.WaitGroup
	for i := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			workers[i].run(o, measureFrom, end)
		}()
	}
	wg.Wait()

	res := &Result{Seconds: o.Duration.Seconds(), Errors: map[string]int{}, Answers: map[string]int{}}
	var latencies []float64
	for _, w := range workers {
		latencies = append(latencies, w.latencies...)
		for k, v := range w.errors {
			res.Errors[k] += v
		}
		for k, v := range w.answers {
			res.Answers[k] += v
		}
	}
	res.Requests = len(latencies)
	res.RequestsPerSecond = float64(res.Requests) / res.Seconds
	if len(latencies) > 0 {
		slices.Sort(latencies)
		res.P50, res.P99, res.P999 = rank(latencies, 0.5), rank(latencies, 0.99), rank(latencies, 0.999)
		res.Max = latencies[len(latencies)-1]
	}
	return res, nil
}

// rank is the nearest-rank percentile of a sorted sample.
func rank(sorted []float64, q float64) float64 {
	i := int(float64(len(sorted))*q+0.999999) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

type worker struct {
	latencies []float64
	errors    map[string]int
	answers   map[string]int
	conn      net.Conn
	reader    *bufio.Reader
}

func (w *worker) run(o Options, measureFrom, end time.Time) {
	w.errors, w.answers = map[string]int{}, map[string]int{}
	request := []byte("GET / HTTP/1.1\r\nHost: load\r\nConnection: close\r\n\r\n")
	if o.KeepAlive {
		request = []byte("GET / HTTP/1.1\r\nHost: load\r\nConnection: keep-alive\r\n\r\n")
	}
	defer w.drop()
	for {
		begin := time.Now()
		if !begin.Before(end) {
			return
		}
		answer, err := w.request(o, request, begin)
		measured := !begin.Before(measureFrom)
		if err != nil {
			if measured {
				w.errors[kind(err)]++
			}
			// A path that refuses at once would otherwise spin the CPU the pods need.
			time.Sleep(time.Millisecond)
			continue
		}
		if measured {
			w.latencies = append(w.latencies, time.Since(begin).Seconds())
			w.answers[answer]++
		}
	}
}

// request sends one request and returns the body of a 200 answer.
func (w *worker) request(o Options, request []byte, begin time.Time) (string, error) {
	if w.conn == nil {
		conn, err := net.DialTimeout("tcp", o.Addr, o.Timeout)
		if err != nil {
			return "", err
		}
		w.conn, w.reader = conn, bufio.NewReader(conn)
	}
	if !o.KeepAlive {
		defer w.drop()
	}
	_ = w.conn.SetDeadline(begin.Add(o.Timeout))
	if _, err := w.conn.Write(request); err != nil {
		w.drop()
		return "", err
	}
	resp, err := http.ReadResponse(w.reader, nil)
	if err != nil {
		w.drop()
		return "", err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		w.drop()
		return "", err
	}
	if resp.Close {
		w.drop()
	}
	if resp.StatusCode != http.StatusOK {
		return "", errStatus
	}
	return string(body), nil
}

func (w *worker) drop() {
	if w.conn != nil {
		w.conn.Close()
		w.conn, w.reader = nil, nil
	}
}

var errStatus = errors.New("answer other than 200")

func kind(err error) string {
	var timeout interface{ Timeout() bool }
	switch {
	case errors.Is(err, errStatus):
		return "status"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "reset"
	case errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &timeout) && timeout.Timeout():
		return "timeout"
	}
	return "other"
}
