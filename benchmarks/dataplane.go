package benchmarks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/switchyard/switchyard/internal/lab"
	"github.com/switchyard/switchyard/internal/loadgen"
)

// The target of the data-plane benchmark's requests: a ClusterIP Service backed by the
// lab's first two pods, in a namespace that sorts after the workload's. switchyard's
// iptables mode writes the services chain in name order, so the target's rule is the
// last one a new connection's first packet is matched against: the worst case, where
// the N other Services cost the most. kube-proxy writes that chain in its map's order,
// so the target's place in it is arbitrary.
const (
	TargetNamespace = "load"
	targetName      = "target"
	TargetClusterIP = "10.96.0.101"
)

// Kinds of load: a new connection per request, or one connection per worker.
const (
	LoadNewConnection = "new-connection"
	LoadKeepAlive     = "keep-alive"
)

// LoadKinds lists the kinds in report order.
var LoadKinds = []string{LoadNewConnection, LoadKeepAlive}

// DataplaneResults is everything one data-plane run measured; it is written as
// benchmarks/results/dataplane.json and is the only input of dataplane.md and its plots.
type DataplaneResults struct {
	Generated string          `json:"generated"`
	Command   string          `json:"command"`
	Machine   string          `json:"machine"`
	Config    DataplaneConfig `json:"config"`
	Runs      []DataplaneRun  `json:"runs"`
}

// DataplaneConfig is how the runs were made.
type DataplaneConfig struct {
	// Services are the numbers of other Services (N) on the node, besides the target.
	Services  []int `json:"services"`
	Endpoints int   `json:"endpoints"`
	Seed      int64 `json:"seed"`
	// Load: Conns connections for LoadSeconds after WarmupSeconds, Repeats times per kind.
	Conns         int     `json:"conns"`
	LoadSeconds   float64 `json:"loadSeconds"`
	WarmupSeconds float64 `json:"warmupSeconds"`
	Repeats       int     `json:"repeats"`
	// RestSeconds is the window resource use is measured over with no changes;
	// ChurnPerSecond EndpointSlice writes a second for ChurnSeconds is the churn window.
	RestSeconds    float64 `json:"restSeconds"`
	ChurnPerSecond int     `json:"churnPerSecond"`
	ChurnSeconds   float64 `json:"churnSeconds"`
}

// Resume adopts the runs of prev, an earlier run with the same settings on the same
// machine, at the N that r does not measure; r measures its own N again. Use it to
// measure some N again after a fix without repeating the others.
func (r *DataplaneResults) Resume(prev *DataplaneResults) error {
	a, b := prev.Config, r.Config
	a.Services, b.Services = nil, nil
	if !reflect.DeepEqual(a, b) {
		return fmt.Errorf("cannot resume: the earlier run's settings %+v differ from this one's %+v", prev.Config, r.Config)
	}
	if prev.Machine != r.Machine {
		return fmt.Errorf("cannot resume: the earlier run was on another machine (%s)", prev.Machine)
	}
	var kept []DataplaneRun
	for _, run := range prev.Runs {
		if !slices.Contains(r.Config.Services, run.Services) {
			kept = append(kept, run)
		}
	}
	services := slices.Clone(r.Config.Services)
	for _, n := range prev.Config.Services {
		if !slices.Contains(services, n) {
			services = append(services, n)
		}
	}
	slices.Sort(services)
	r.Config.Services = services
	r.Runs = append(kept, r.Runs...)
	r.Command = prev.Command + "; resumed as: " + r.Command
	return nil
}

// DataplaneRun is one proxy in one mode and kernel with N other Services programmed.
type DataplaneRun struct {
	Proxy    string `json:"proxy"`
	Mode     string `json:"mode"`
	Kernel   string `json:"kernel"`
	Services int    `json:"services"`
	// StartupSeconds is from the process start to its first complete sync.
	StartupSeconds float64 `json:"startupSeconds"`
	// Incomplete, when set, says why the run has no figures.
	Incomplete string `json:"incomplete,omitempty"`
	// Load has one entry per kind (LoadKinds).
	Load []LoadSeries `json:"load,omitempty"`
	// Rest is the proxy's resource use with nothing changing; Churn under endpoint
	// churn (absent with no other Services to change).
	Rest  *Usage `json:"rest,omitempty"`
	Churn *Usage `json:"churn,omitempty"`
}

// LoadSeries is the repeats of one kind of load, with the median of each figure over
// them and its spread (the lowest and highest repeat).
type LoadSeries struct {
	Kind              string            `json:"kind"`
	Runs              []*loadgen.Result `json:"runs"`
	RequestsPerSecond Spread            `json:"requestsPerSecond"`
	P50               Spread            `json:"p50"`
	P99               Spread            `json:"p99"`
	P999              Spread            `json:"p999"`
	// Errors is the number of failed requests over every repeat.
	Errors int `json:"errors"`
}

// Spread is the median of a few repeats and their range.
type Spread struct {
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
}

// spreadOf summarizes one figure of each repeat.
func spreadOf(values []float64) Spread {
	if len(values) == 0 {
		return Spread{}
	}
	s := slices.Clone(values)
	slices.Sort(s)
	median := s[len(s)/2]
	if len(s)%2 == 0 {
		median = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return Spread{Median: median, Min: s[0], Max: s[len(s)-1]}
}

// Usage is a proxy's resource use over a window.
type Usage struct {
	Seconds float64 `json:"seconds"`
	// CPUSeconds is user and system time, the proxy's and its children's (see
	// CPUSeconds).
	CPUSeconds float64 `json:"cpuSeconds"`
	// RSSBytes is the resident set at the end of the window, PeakRSSBytes the highest
	// sampled (every second) in it.
	RSSBytes     int64 `json:"rssBytes"`
	PeakRSSBytes int64 `json:"peakRSSBytes"`
	// Writes is the number of EndpointSlice writes made in a churn window.
	Writes int `json:"writes,omitempty"`
}

// CPUPercent is the CPU used as a percentage of one core.
func (u *Usage) CPUPercent() float64 {
	if u == nil || u.Seconds <= 0 {
		return 0
	}
	return 100 * u.CPUSeconds / u.Seconds
}

// DataplaneOptions configures RunDataplane.
type DataplaneOptions struct {
	// Proxy holds what starting a proxy needs: the kernel, the mode, the proxies and
	// their binaries, the lab (with at least three pods: two behind the target, the third
	// the client) and the startup timeout.
	Proxy ProxyOptions
	// Agent is the labagent binary, the load generator.
	Agent    string
	Conns    int
	Load     time.Duration
	Warmup   time.Duration
	Repeats  int
	Rest     time.Duration
	Churn    time.Duration
	ChurnPer int
	// Workload generated the N other Services; churn changes them.
	Workload *Workload
}

// EnsureTarget makes the apiserver hold the target Service and its EndpointSlice, the
// lab's first two pods.
func EnsureTarget(ctx context.Context, client kubernetes.Interface, pods []*lab.Pod) error {
	if err := ensureFixedService(ctx, client, TargetNamespace, targetName, TargetClusterIP); err != nil {
		return err
	}
	slice := &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: TargetNamespace, Name: targetName + "-1",
			Labels: map[string]string{discovery.LabelServiceName: targetName}},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](lab.PodPort), Protocol: ptr.To(v1.ProtocolTCP)}},
	}
	for _, pod := range pods[:2] {
		slice.Endpoints = append(slice.Endpoints, discovery.Endpoint{Addresses: []string{pod.IP}, NodeName: ptr.To(lab.NodeName),
			Conditions: discovery.EndpointConditions{Ready: ptr.To(true)}})
	}
	if _, err := client.DiscoveryV1().EndpointSlices(TargetNamespace).Create(ctx, slice, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating EndpointSlice %s/%s: %w", TargetNamespace, slice.Name, err)
	}
	return nil
}

// RunDataplane runs each proxy in turn on the lab's node, in o.Proxy.Mode, against the
// apiserver (which must hold the workload and the target, see EnsureTarget). For each it
// waits for the first complete sync, measures its resource use at rest, sends the load
// to the target from the client pod, and measures its resource use under churn.
//
// It fails when the data path is broken (a load run with no answers, or one whose new
// connections did not reach both pods), never because of a figure.
func RunDataplane(ctx context.Context, o DataplaneOptions) ([]DataplaneRun, error) {
	if len(o.Proxy.Lab.Pods) < 3 {
		return nil, errors.New("the data-plane benchmark needs a lab with three pods: two behind the target, one client")
	}
	if err := EnsureTarget(ctx, o.Proxy.Lab.Client, o.Proxy.Lab.Pods); err != nil {
		return nil, err
	}
	var runs []DataplaneRun
	proxies := o.Proxy.Proxies
	if len(proxies) == 0 {
		proxies = []string{ProxySwitchyard, ProxyKubeProxy}
	}
	for _, proxy := range proxies {
		if err := cleanNode(ctx, o.Proxy); err != nil {
			return nil, err
		}
		if err := checkClean(ctx, o.Proxy); err != nil {
			return nil, err
		}
		run, err := runDataplane(ctx, o, proxy)
		o.Proxy.Lab.StopProxy()
		if err != nil {
			return nil, fmt.Errorf("%s in %s mode with %d other Services: %w", proxy, o.Proxy.Mode, o.Proxy.Services, err)
		}
		runs = append(runs, *run)
	}
	return runs, cleanNode(ctx, o.Proxy)
}

func runDataplane(ctx context.Context, o DataplaneOptions, proxy string) (*DataplaneRun, error) {
	p, incomplete, err := startProxy(ctx, o.Proxy, proxy)
	if err != nil {
		return nil, err
	}
	run := &DataplaneRun{Proxy: proxy, Mode: o.Proxy.Mode, Kernel: o.Proxy.Kernel, Services: o.Proxy.Services,
		StartupSeconds: p.startup.Seconds(), Incomplete: incomplete}
	if incomplete != "" {
		return run, nil
	}
	logf := o.Proxy.Logf
	l := o.Proxy.Lab
	client := l.Pods[2]
	url := "http://" + net.JoinHostPort(TargetClusterIP, strconv.Itoa(ServicePort)) + "/"
	if err := lab.Eventually(ctx, time.Minute, 100*time.Millisecond, func() error {
		res, err := l.PodGet(ctx, client, url, 1)
		if err == nil && len(res.Failures) > 0 {
			err = fmt.Errorf("the target did not answer the client pod: %s", res.LastError)
		}
		return err
	}); err != nil {
		return nil, err
	}
	pid := l.ProxyPID()
	logf("%s %s N=%d: ready after %s; resource use at rest for %s", proxy, o.Proxy.Mode, o.Proxy.Services, FormatSeconds(run.StartupSeconds), o.Rest)
	if run.Rest, err = measureUsage(ctx, pid, func(ctx context.Context) (int, error) { return 0, sleep(ctx, o.Rest) }); err != nil {
		return nil, err
	}
	// The kinds alternate within each repeat, so that a slow drift of the machine
	// spreads over both instead of biasing one.
	series := map[string]*LoadSeries{}
	for range o.Repeats {
		for _, kind := range LoadKinds {
			res, err := sendLoad(ctx, o, kind)
			if err != nil {
				return nil, err
			}
			if s := series[kind]; s == nil {
				series[kind] = &LoadSeries{Kind: kind}
			}
			series[kind].Runs = append(series[kind].Runs, res)
		}
	}
	for _, kind := range LoadKinds {
		s := series[kind]
		s.summarize()
		logf("%s %s N=%d %s: %.0f requests/s (%.0f-%.0f), p50 %s p99 %s p999 %s, %d errors", proxy, o.Proxy.Mode, o.Proxy.Services, kind,
			s.RequestsPerSecond.Median, s.RequestsPerSecond.Min, s.RequestsPerSecond.Max,
			FormatSeconds(s.P50.Median), FormatSeconds(s.P99.Median), FormatSeconds(s.P999.Median), s.Errors)
		run.Load = append(run.Load, *s)
	}
	if o.Proxy.Services > 0 {
		churn := &Churn{Client: l.Client, Workload: o.Workload, Services: o.Proxy.Services, PerSecond: o.ChurnPer, Seed: 3}
		if run.Churn, err = measureUsage(ctx, pid, func(ctx context.Context) (int, error) { return churn.Run(ctx, o.Churn) }); err != nil {
			return nil, err
		}
		logf("%s %s N=%d: CPU %.1f%% at rest, %.1f%% under %d writes in %s", proxy, o.Proxy.Mode, o.Proxy.Services,
			run.Rest.CPUPercent(), run.Churn.CPUPercent(), run.Churn.Writes, o.Churn)
	}
	if !l.ProxyRunning() {
		return nil, errors.New("the proxy exited during the run")
	}
	return run, nil
}

// sendLoad runs the load generator in the client pod against the target.
func sendLoad(ctx context.Context, o DataplaneOptions, kind string) (*loadgen.Result, error) {
	l := o.Proxy.Lab
	args := []string{"load", "-conns", strconv.Itoa(o.Conns), "-duration", o.Load.String(), "-warmup", o.Warmup.String()}
	if kind == LoadKeepAlive {
		args = append(args, "-keep-alive")
	}
	args = append(args, net.JoinHostPort(TargetClusterIP, strconv.Itoa(ServicePort)))
	cmd := l.Pods[2].Netns.Exec(ctx, o.Agent, args...)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("labagent %s in the client pod: %w", strings.Join(args, " "), err)
	}
	var res loadgen.Result
	if err := json.Unmarshal(out, &res); err != nil {
		return nil, fmt.Errorf("labagent load output %q: %w", out, err)
	}
	if res.Requests == 0 {
		return nil, fmt.Errorf("%s load: no request answered (errors %v)", kind, res.Errors)
	}
	// Thousands of new connections always reach both pods; keep-alive's few connections
	// may all land on one.
	if kind == LoadNewConnection {
		for _, pod := range l.Pods[:2] {
			if res.Answers[pod.Name] == 0 {
				return nil, fmt.Errorf("%s load: %d requests answered %v, none by %s: the target's rules do not balance over both pods",
					kind, res.Requests, res.Answers, pod.Name)
			}
		}
	}
	return &res, nil
}

func (s *LoadSeries) summarize() {
	var rps, p50, p99, p999 []float64
	s.Errors = 0
	for _, r := range s.Runs {
		rps, p50, p99, p999 = append(rps, r.RequestsPerSecond), append(p50, r.P50), append(p99, r.P99), append(p999, r.P999)
		for _, n := range r.Errors {
			s.Errors += n
		}
	}
	s.RequestsPerSecond, s.P50, s.P99, s.P999 = spreadOf(rps), spreadOf(p50), spreadOf(p99), spreadOf(p999)
}

// measureUsage runs work and measures process pid's CPU time and RSS while it does;
// work returns how many writes it made.
func measureUsage(ctx context.Context, pid int, work func(context.Context) (int, error)) (*Usage, error) {
	cpu0, err := CPUSeconds(pid)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	u := &Usage{}
	sampleCtx, stop := context.WithCancel(ctx)
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			if rss, err := RSS(pid); err == nil {
				u.PeakRSSBytes = max(u.PeakRSSBytes, rss)
			}
			select {
			case <-sampleCtx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	u.Writes, err = work(ctx)
	stop()
	<-sampled
	if err != nil {
		return nil, err
	}
	u.Seconds = time.Since(start).Seconds()
	cpu1, err := CPUSeconds(pid)
	if err != nil {
		return nil, err
	}
	u.CPUSeconds = cpu1 - cpu0
	if u.RSSBytes, err = RSS(pid); err != nil {
		return nil, err
	}
	u.PeakRSSBytes = max(u.PeakRSSBytes, u.RSSBytes)
	return u, nil
}

func sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}
