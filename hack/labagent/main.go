// Command labagent plays the parts of a lab that run inside network namespaces: a "pod"
// that answers HTTP with its own name, and a client that sends requests through a Service
// and reports which pod answered each one.
//
//	labagent serve NAME ADDR         answer every request on ADDR (TCP: HTTP, and UDP) with NAME
//	labagent get URL COUNT           make COUNT HTTP requests (a new connection each), print JSON
//	labagent udp ADDR COUNT SRCPORT  send COUNT datagrams from local port SRCPORT, print JSON
//	labagent sctp ADDR COUNT         make COUNT SCTP associations (IPv4), read the name, print JSON
//	labagent probe [-timeout D] [-give-up N] [-source-port P] PROTO ADDR COUNT
//	                                 make COUNT tcp (HTTP), udp or sctp (IPv4) requests to ADDR, each a new
//	                                 connection or flow, print JSON with the client address each
//	                                 pod saw ("NAME saw ADDR"); stop after N failures in a row
//	                                 without an answer. PROTO healthz asks ADDR's /healthz and
//	                                 answers with its status code and body, times left out.
//	                                 -source-port makes every udp request one flow
//	labagent load [-conns C] [-duration D] [-warmup W] [-keep-alive] ADDR
//	                                 send HTTP requests to ADDR for D on C connections, print JSON
//	                                 (the data-plane benchmark's load generator, internal/loadgen)
//
// serve also answers SCTP where the kernel has it.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/switchyard/switchyard/internal/loadgen"
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
		udp, err := net.ListenPacket("udp", args[2])
		if err != nil {
			return err
		}
		go serveUDP(udp, name)
		go serveSCTP(args[2], name)
		return http.ListenAndServe(args[2], http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			// One connection per request, so that every request of a test is a new
			// connection through the rules, unless the client asks to keep it (the load
			// generator's keep-alive runs).
			if !strings.EqualFold(r.Header.Get("Connection"), "keep-alive") {
				w.Header().Set("Connection", "close")
			}
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
	case len(args) == 4 && args[0] == "udp":
		count, err1 := strconv.Atoi(args[2])
		srcPort, err2 := strconv.Atoi(args[3])
		if err := errors.Join(err1, err2); err != nil {
			return err
		}
		res, err := sendUDP(args[1], count, srcPort)
		if err != nil {
			return err
		}
		return json.NewEncoder(os.Stdout).Encode(res)
	case len(args) == 3 && args[0] == "sctp":
		count, err := strconv.Atoi(args[2])
		if err != nil {
			return err
		}
		res, err := sendSCTP(args[1], count)
		if err != nil {
			return err
		}
		return json.NewEncoder(os.Stdout).Encode(res)
	case len(args) > 1 && args[0] == "probe":
		fs := flag.NewFlagSet("probe", flag.ContinueOnError)
		timeout := fs.Duration("timeout", time.Second, "how long each request waits for its answer")
		giveUp := fs.Int("give-up", 3, "stop after this many failures in a row when nothing answered yet (a DROP costs the timeout each time)")
		sourcePort := fs.Int("source-port", 0, "udp: send every request from this local port, so that they are one flow (one conntrack entry)")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		if fs.NArg() != 3 {
			return errors.New("usage: labagent probe [flags] tcp|udp|sctp|healthz ADDR COUNT")
		}
		count, err := strconv.Atoi(fs.Arg(2))
		if err != nil {
			return fmt.Errorf("count %q: %w", fs.Arg(2), err)
		}
		res, err := probe(fs.Arg(0), fs.Arg(1), count, *timeout, *giveUp, *sourcePort)
		if err != nil {
			return err
		}
		return json.NewEncoder(os.Stdout).Encode(res)
	case len(args) > 1 && args[0] == "load":
		fs := flag.NewFlagSet("load", flag.ContinueOnError)
		o := loadgen.Options{}
		fs.IntVar(&o.Conns, "conns", 8, "concurrent connections")
		fs.DurationVar(&o.Duration, "duration", 10*time.Second, "how long requests are measured")
		fs.DurationVar(&o.Warmup, "warmup", time.Second, "how long requests run before they are measured")
		fs.BoolVar(&o.KeepAlive, "keep-alive", false, "send each connection's requests on one connection (default: a new connection per request)")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		if fs.NArg() != 1 {
			return errors.New("usage: labagent load [flags] ADDR")
		}
		o.Addr = fs.Arg(0)
		res, err := loadgen.Run(o)
		if err != nil {
			return err
		}
		return json.NewEncoder(os.Stdout).Encode(res)
	default:
		return errors.New("usage: labagent serve NAME ADDR | labagent get URL COUNT | labagent udp ADDR COUNT SRCPORT | labagent sctp ADDR COUNT | labagent probe [flags] PROTO ADDR COUNT | labagent load [flags] ADDR")
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
		res.fail(err, start)
	}
	return res
}

func isTimeout(err error) bool {
	var t interface{ Timeout() bool }
	return errors.As(err, &t) && t.Timeout()
}

// udpProbe is the datagram of `probe`, answered with the pod's name and the client
// address it saw (as the HTTP server's header carries it); any other datagram is
// answered with the name alone.
const udpProbe = "probe"

// serveUDP answers every datagram with the pod's name.
func serveUDP(conn net.PacketConn, name string) {
	buf := make([]byte, 1500)
	for {
		n, from, err := conn.ReadFrom(buf)
		if err != nil {
			return
		}
		answer := name
		if string(buf[:n]) == udpProbe {
			if host, _, err := net.SplitHostPort(from.String()); err == nil {
				answer += " " + host
			}
		}
		_, _ = conn.WriteTo([]byte(answer), from)
	}
}

// probe makes count requests to addr over proto, each on a new connection (tcp: HTTP)
// or a new flow (udp: a new socket, so a new source port), and records who answered and
// which client address they saw. While nothing has answered, it gives up after giveUp
// failures in a row: the outcome is clear by then.
func probe(proto, addr string, count int, timeout time.Duration, giveUp, sourcePort int) (Result, error) {
	res := Result{Answers: map[string]int{}, Clients: map[string]int{}, Failures: map[string]int{}}
	var once func() (name, client string, err error)
	// get asks for url on a new connection: the status, the body and the client
	// address the pod saw.
	client := &http.Client{Timeout: timeout, Transport: &http.Transport{DisableKeepAlives: true}}
	get := func(url string) (int, []byte, string, error) {
		resp, err := client.Get(url)
		if err != nil {
			return 0, nil, "", err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		return resp.StatusCode, body, resp.Header.Get(clientHeader), err
	}
	switch proto {
	case "tcp":
		once = func() (string, string, error) {
			_, body, client, err := get("http://" + addr + "/")
			return string(body), client, err
		}
	case "udp":
		// Port 0 is a new port, so a new flow, for every request.
		dialer := net.Dialer{LocalAddr: &net.UDPAddr{Port: sourcePort}}
		once = func() (string, string, error) {
			conn, err := dialer.Dial("udp", addr)
			if err != nil {
				return "", "", err
			}
			defer conn.Close()
			_ = conn.SetDeadline(time.Now().Add(timeout))
			if _, err := conn.Write([]byte(udpProbe)); err != nil {
				return "", "", err
			}
			buf := make([]byte, 1500)
			n, err := conn.Read(buf)
			if err != nil {
				return "", "", err
			}
			name, client, _ := strings.Cut(string(buf[:n]), " ")
			return name, client, nil
		}
	case "sctp":
		ap, err := netip.ParseAddrPort(addr)
		if err != nil || !ap.Addr().Is4() {
			return res, fmt.Errorf("probe: sctp: %q is not an IPv4 address:port", addr)
		}
		once = func() (string, string, error) {
			return sctpOnce(unix.SockaddrInet4{Addr: ap.Addr().As4(), Port: int(ap.Port())}, timeout)
		}
	case "healthz":
		once = func() (string, string, error) {
			status, body, _, err := get("http://" + addr + "/healthz")
			if err != nil {
				return "", "", err
			}
			return fmt.Sprintf("HTTP %d %s", status, withoutTimes(body)), "", nil
		}
	default:
		return res, fmt.Errorf("probe: unknown protocol %q (want tcp, udp, sctp or healthz)", proto)
	}
	failedInARow := 0
	for range count {
		start := time.Now()
		name, client, err := once()
		if err != nil {
			res.fail(err, start)
			if failedInARow++; failedInARow >= giveUp && len(res.Answers) == 0 {
				break
			}
			continue
		}
		failedInARow = 0
		res.Answers[name]++
		// Which pod saw which client: hairpin traffic is masqueraded only when it
		// comes back to the pod that sent it.
		res.Clients[name+" saw "+client]++
	}
	return res, nil
}

// withoutTimes is a health answer's JSON body with every time in it (lastUpdated,
// currentTime, at any depth) replaced by "TIME", so that two proxies' answers compare
// by their status and keys alone. A body that is not JSON is kept as it is.
func withoutTimes(body []byte) string {
	var v any
	if err := json.Unmarshal(body, &v); err != nil {
		return string(body)
	}
	var scrub func(any)
	scrub = func(v any) {
		m, ok := v.(map[string]any)
		if !ok {
			return
		}
		for k, inner := range m {
			if k == "lastUpdated" || k == "currentTime" {
				m[k] = "TIME"
				continue
			}
			scrub(inner)
		}
	}
	scrub(v)
	out, _ := json.Marshal(v) // a value Unmarshal made always marshals
	return string(out)
}

// sendUDP sends count datagrams from a fixed local port, so they all belong to one flow
// (one conntrack entry), and records who answered each.
func sendUDP(addr string, count, srcPort int) (Result, error) {
	res := Result{Answers: map[string]int{}, Clients: map[string]int{}, Failures: map[string]int{}}
	raddr, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return res, err
	}
	conn, err := net.DialUDP("udp", &net.UDPAddr{Port: srcPort}, raddr)
	if err != nil {
		return res, err
	}
	defer conn.Close()
	buf := make([]byte, 1500)
	for range count {
		start := time.Now()
		_ = conn.SetDeadline(time.Now().Add(time.Second))
		_, err := conn.Write([]byte("ping"))
		var n int
		if err == nil {
			n, err = conn.Read(buf)
		}
		if err == nil {
			res.Answers[string(buf[:n])]++
			continue
		}
		res.fail(err, start)
	}
	return res, nil
}

// fail records a failed request by kind. "refused" is an active rejection: a TCP reset
// or ICMP port unreachable (ECONNREFUSED), or, for a sender on the node itself, its packet
// rejected by the firewall on the way out (EPERM). "unreachable" is an ICMP host or
// network unreachable: no route on the way.
func (res *Result) fail(err error, start time.Time) {
	kind := "other"
	switch {
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.EPERM):
		kind = "refused"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		kind = "unreachable"
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, syscall.EAGAIN), errors.Is(err, syscall.ETIMEDOUT), errors.Is(err, syscall.EINPROGRESS), isTimeout(err):
		kind = "timeout"
	}
	res.Failures[kind]++
	res.LastError = err.Error()
	res.MaxFailureSeconds = max(res.MaxFailureSeconds, time.Since(start).Seconds())
}

// serveSCTP answers every SCTP association on the port of addr with the pod's name. The
// standard library has no SCTP, so it uses one-to-one style sockets directly. Where the
// kernel has no SCTP it serves nothing.
func serveSCTP(addr, name string) {
	_, portText, err := net.SplitHostPort(addr)
	if err != nil {
		return
	}
	port, _ := strconv.Atoi(portText)
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, unix.IPPROTO_SCTP)
	if err != nil {
		fmt.Fprintln(os.Stderr, "labagent: no SCTP here:", err)
		return
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Port: port}); err != nil {
		fmt.Fprintln(os.Stderr, "labagent: SCTP bind:", err)
		return
	}
	// A backlog as deep as the HTTP server's, so that a probe's parallel associations
	// are never dropped at the listener (the client would retransmit its INIT only after
	// SCTP's 3 s initial timeout, a probe's whole timeout in the kernel lab).
	if err := unix.Listen(fd, unix.SOMAXCONN); err != nil {
		fmt.Fprintln(os.Stderr, "labagent: SCTP listen:", err)
		return
	}
	for {
		conn, peer, err := unix.Accept(fd)
		if err != nil {
			continue
		}
		// The name, and the client address as the UDP server answers a probe.
		answer := name
		if in4, ok := peer.(*unix.SockaddrInet4); ok {
			answer += " " + netip.AddrFrom4(in4.Addr).String()
		}
		_, _ = unix.Write(conn, []byte(answer))
		_ = unix.Close(conn)
	}
}

// sendSCTP opens count SCTP associations to addr and records who answered each.
func sendSCTP(addr string, count int) (Result, error) {
	res := Result{Answers: map[string]int{}, Clients: map[string]int{}, Failures: map[string]int{}}
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || !ap.Addr().Is4() {
		return res, fmt.Errorf("sctp: %q is not an IPv4 address:port", addr)
	}
	for range count {
		start := time.Now()
		name, _, err := sctpOnce(unix.SockaddrInet4{Addr: ap.Addr().As4(), Port: int(ap.Port())}, 2*time.Second)
		if err != nil {
			res.fail(err, start)
			continue
		}
		res.Answers[name]++
	}
	return res, nil
}

// sctpOnce opens one association to `to` and reads the pod's answer: its name and the
// client address it saw. timeout bounds the whole exchange. The socket is non-blocking
// and waited on with poll, which is retried when a signal interrupts it: the Go runtime
// preempts goroutines with signals, and a blocking connect or read would fail with EINTR.
func sctpOnce(to unix.SockaddrInet4, timeout time.Duration) (name, client string, err error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK, unix.IPPROTO_SCTP)
	if err != nil {
		return "", "", fmt.Errorf("SCTP socket (does the kernel have the sctp module?): %w", err)
	}
	defer unix.Close(fd)
	deadline := time.Now().Add(timeout)
	if err := unix.Connect(fd, &to); err != nil && !errors.Is(err, unix.EINPROGRESS) {
		return "", "", err
	}
	if err := pollUntil(fd, unix.POLLOUT, deadline); err != nil {
		return "", "", err
	}
	if soErr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR); err != nil {
		return "", "", err
	} else if soErr != 0 {
		return "", "", syscall.Errno(soErr)
	}
	if err := pollUntil(fd, unix.POLLIN, deadline); err != nil {
		return "", "", err
	}
	buf := make([]byte, 256)
	n, err := unix.Read(fd, buf)
	if err != nil {
		return "", "", err
	}
	name, client, _ = strings.Cut(string(buf[:n]), " ")
	return name, client, nil
}

// pollUntil waits until fd is ready for events or has an error, until deadline; it
// returns os.ErrDeadlineExceeded when the deadline passes first.
func pollUntil(fd int, events int16, deadline time.Time) error {
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return os.ErrDeadlineExceeded
		}
		fds := []unix.PollFd{{Fd: int32(fd), Events: events}}
		n, err := unix.Poll(fds, int(left.Milliseconds())+1)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			return err
		case n > 0:
			return nil
		}
	}
}
