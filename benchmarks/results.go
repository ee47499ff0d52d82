// Package benchmarks measures how fast each backend refreshes its rules as the number of
// Services grows, next to the kernel's own tools (the floor) and upstream kube-proxy (the
// peer), and writes the figures as JSON, a Markdown table and plots.
package benchmarks

import (
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Results is everything one run of the harness measured; it is written as
// benchmarks/results/results.json and is the only input of the report.
type Results struct {
	// Generated is when the run finished (RFC 3339).
	Generated string `json:"generated"`
	// Command is the command line that produced the results.
	Command string `json:"command"`
	// Machine describes the host: CPU model, cores, memory and kernel.
	Machine string `json:"machine"`
	Config  Config `json:"config"`
	// Backends are the in-process rule-refresh runs: one backend, a hand-built desired
	// state, no apiserver.
	Backends []BackendRun `json:"backends"`
	// Proxies are the process runs against a real apiserver: switchyard and kube-proxy.
	Proxies []ProxyRun `json:"proxies"`
}

// Config is the workload: N Services with M endpoints each, built by a seeded generator.
type Config struct {
	Services  []int `json:"services"`
	Endpoints int   `json:"endpoints"`
	// Repeats is how many times each incremental operation is measured.
	Repeats int `json:"repeats"`
	// Changes is how many EndpointSlice writes the end-to-end latency is measured over.
	Changes int   `json:"changes"`
	Seed    int64 `json:"seed"`
}

// Operations of a rule-refresh run, in the order they are measured.
const (
	OpFull           = "full-sync"
	OpAddService     = "add-service"
	OpChangeEndpoint = "change-endpoint"
	OpDeleteService  = "delete-service"
	OpBurst          = "burst-10pct"
)

// Operations lists the operations in report order.
var Operations = []string{OpFull, OpAddService, OpChangeEndpoint, OpDeleteService, OpBurst}

// BackendRun is one backend, in one kernel, at one N.
type BackendRun struct {
	// Mode is "ipvs", "iptables-legacy" or "iptables-nft".
	Mode string `json:"mode"`
	// Kernel says where it ran: "host" (a network namespace on the host) or "lab" (the
	// UML kernel lab, where IPVS exists).
	Kernel    string `json:"kernel"`
	Services  int    `json:"services"`
	Endpoints int    `json:"endpoints"`
	// Steps has one entry per operation (see Operations).
	Steps []Step `json:"steps"`
	// PeakRSSBytes is the harness process's peak resident set (VmHWM): the backend's
	// memory plus the desired state it was handed.
	PeakRSSBytes int64 `json:"peakRSSBytes"`
	// WallSeconds is the whole run: every sync, its floor and the verifications.
	WallSeconds float64 `json:"wallSeconds"`
	// Incomplete, when set, says why the run has no figures: it outlasted the harness's
	// budget, or it was not started because smaller N showed that it would.
	Incomplete string `json:"incomplete,omitempty"`
}

// Step is one operation, measured Runs times.
type Step struct {
	Op   string `json:"op"`
	Runs int    `json:"runs"`
	// Sync is the wall time of the backend's Sync call, in seconds.
	Sync Summary `json:"sync"`
	// Kernel is the time spent inside kernel writes during the sync (iptables-restore;
	// IPVS netlink calls for virtual and real servers), in seconds.
	Kernel Summary `json:"kernel"`
	// Ops counts kernel operations per sync: restore input lines (iptables) or netlink
	// operations on virtual servers, real servers, ipset members and addresses (IPVS).
	Ops Summary `json:"ops"`
	// Floor is the time the kernel's own tool (FloorTool) takes to apply the same change
	// to an identical kernel state, in seconds: the lower bound.
	Floor     Summary `json:"floor"`
	FloorTool string  `json:"floorTool"`
	// RSSBytes is the process's resident set after the last run of this step.
	RSSBytes int64 `json:"rssBytes"`
	// Verified is true when, after every run, the kernel held exactly the desired state.
	Verified bool `json:"verified"`
}

// ProxyRun is one proxy process (switchyard or kube-proxy), in one mode and kernel, at
// one N, driven by a real apiserver.
type ProxyRun struct {
	// Proxy is "switchyard" or "kube-proxy".
	Proxy     string `json:"proxy"`
	Mode      string `json:"mode"`
	Kernel    string `json:"kernel"`
	Services  int    `json:"services"`
	Endpoints int    `json:"endpoints"`
	// StartupSeconds is from the process start to its first sync being complete and the
	// probe Service answering.
	StartupSeconds float64 `json:"startupSeconds"`
	// Changes is the number of EndpointSlice writes made; Failed those that were not
	// visible in the kernel when the run's change budget ran out.
	Changes int `json:"changes"`
	Failed  int `json:"failed"`
	// Incomplete, when set, says why the run stopped short: its first sync or its
	// series of changes outlasted the harness's budget.
	Incomplete string `json:"incomplete,omitempty"`
	// EndToEnd is the time from an EndpointSlice write to the change carrying packets
	// (a new connection to the Service reaching the new endpoint), in seconds.
	EndToEnd Summary `json:"endToEnd"`
	// SyncDuration and NetworkProgramming are the proxy's own
	// kubeproxy_sync_proxy_rules_duration_seconds and
	// kubeproxy_network_programming_duration_seconds histograms over the change series.
	SyncDuration       Histogram `json:"syncDuration"`
	NetworkProgramming Histogram `json:"networkProgramming"`
	// RSSBytes is the proxy process's resident set at the end of the change series.
	RSSBytes int64 `json:"rssBytes"`
}

// Summary describes a sample.
type Summary struct {
	N      int     `json:"n"`
	Median float64 `json:"median"`
	P99    float64 `json:"p99"`
	Max    float64 `json:"max"`
	Mean   float64 `json:"mean"`
}

// Summarize computes a Summary; percentiles are nearest-rank.
func Summarize(sample []float64) Summary {
	if len(sample) == 0 {
		return Summary{}
	}
	s := slices.Clone(sample)
	slices.Sort(s)
	sum := 0.0
	for _, v := range s {
		sum += v
	}
	return Summary{N: len(s), Median: percentile(s, 0.50), P99: percentile(s, 0.99), Max: s[len(s)-1], Mean: sum / float64(len(s))}
}

func percentile(sorted []float64, q float64) float64 {
	rank := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[max(rank, 0)]
}

// Seconds converts durations to a sample in seconds.
func Seconds(ds []time.Duration) []float64 {
	out := make([]float64, len(ds))
	for i, d := range ds {
		out[i] = d.Seconds()
	}
	return out
}

// Histogram summarizes a Prometheus histogram: the observation count, the mean, and p50
// and p99 estimated from the buckets as Prometheus's histogram_quantile does.
type Histogram struct {
	Count uint64  `json:"count"`
	Mean  float64 `json:"mean"`
	P50   float64 `json:"p50"`
	P99   float64 `json:"p99"`
}

// ReadResults reads a results file.
func ReadResults(path string) (*Results, error) {
	var r Results
	if err := readJSONFile(path, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

func readJSONFile(path string, v any) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("parsing %s: %w", path, err)
	}
	return nil
}

// WriteJSON writes v as indented JSON.
func WriteJSON(path string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(data, '\n'), 0o644)
}

// Resume adopts the runs of prev, an earlier run of the same workload that was cut
// short, and returns the N it holds. Results are written after each N, so every N in
// prev is complete and is kept as it is; the caller measures only the others.
// The adopted N must be the smallest of r's: the budgets extend what smaller N took to
// larger ones, never the other way.
func (r *Results) Resume(prev *Results) (map[int]bool, error) {
	if !prev.Config.sameWorkload(r.Config) {
		return nil, fmt.Errorf("cannot resume: the earlier run's workload %+v differs from this one's %+v", prev.Config, r.Config)
	}
	done := map[int]bool{}
	for _, b := range prev.Backends {
		done[b.Services] = true
	}
	for _, p := range prev.Proxies {
		done[p.Services] = true
	}
	for i, n := range r.Config.Services {
		if !done[n] {
			for _, later := range r.Config.Services[i+1:] {
				if done[later] {
					return nil, fmt.Errorf("cannot resume: the earlier run holds %d Services but not %d, a smaller N of this run", later, n)
				}
			}
			break
		}
	}
	for n := range done {
		if !slices.Contains(r.Config.Services, n) {
			return nil, fmt.Errorf("cannot resume: the earlier run holds %d Services, which this run's -services does not list", n)
		}
	}
	switch {
	case prev.Machine == r.Machine:
	case strings.Contains(prev.Machine, r.Machine):
		r.Machine = prev.Machine // resumed on this machine before: it is named already
	default:
		// A machine of the same kind can finish a run (a long run outlives a session's
		// machine); figures at one N always come from one machine, and the report names
		// both, so that no reader compares across them unawares.
		kept := slices.Sorted(maps.Keys(done))
		r.Machine = fmt.Sprintf("%s (N = %s); %s (the larger N)", prev.Machine, joinInts(kept), r.Machine)
	}
	r.Backends = append(slices.Clone(prev.Backends), r.Backends...)
	r.Proxies = append(slices.Clone(prev.Proxies), r.Proxies...)
	r.Command = prev.Command + "; resumed as: " + r.Command
	return done, nil
}

// sameWorkload reports whether c and o generate the same Services and measure them the
// same way, whatever N each lists.
func (c Config) sameWorkload(o Config) bool {
	return c.Endpoints == o.Endpoints && c.Repeats == o.Repeats && c.Changes == o.Changes && c.Seed == o.Seed
}

func joinInts(ns []int) string {
	s := make([]string, len(ns))
	for i, n := range ns {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ", ")
}
