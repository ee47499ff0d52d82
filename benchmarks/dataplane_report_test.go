package benchmarks

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/switchyard/switchyard/internal/loadgen"
)

func TestSpreadOf(t *testing.T) {
	tests := []struct {
		values []float64
		want   Spread
	}{
		{nil, Spread{}},
		{[]float64{5}, Spread{5, 5, 5}},
		{[]float64{9, 1, 5}, Spread{5, 1, 9}},
		{[]float64{4, 1, 2, 8}, Spread{3, 1, 8}},
	}
	for _, tt := range tests {
		if got := spreadOf(tt.values); got != tt.want {
			t.Errorf("spreadOf(%v) = %+v, want %+v", tt.values, got, tt.want)
		}
	}
}

// dataplaneRun builds a complete run with one repeat per kind.
func dataplaneRun(proxy, mode, kernel string, n int, newConnRPS, keepAliveRPS, p99, restCPU, churnCPU float64) DataplaneRun {
	run := DataplaneRun{Proxy: proxy, Mode: mode, Kernel: kernel, Services: n, StartupSeconds: 1,
		Rest: &Usage{Seconds: 10, CPUSeconds: restCPU / 10, RSSBytes: 40 << 20, PeakRSSBytes: 40 << 20}}
	if n > 0 {
		run.Churn = &Usage{Seconds: 10, CPUSeconds: churnCPU / 10, RSSBytes: 50 << 20, PeakRSSBytes: 60 << 20, Writes: 100}
	}
	for kind, rps := range map[string]float64{LoadNewConnection: newConnRPS, LoadKeepAlive: keepAliveRPS} {
		s := LoadSeries{Kind: kind, Runs: []*loadgen.Result{{Requests: int(rps * 10), Seconds: 10, RequestsPerSecond: rps, P50: p99 / 4, P99: p99, P999: 2 * p99}}}
		s.summarize()
		run.Load = append(run.Load, s)
	}
	// Report order must not depend on the order the kinds were measured in.
	if run.Load[0].Kind != LoadNewConnection {
		run.Load[0], run.Load[1] = run.Load[1], run.Load[0]
	}
	return run
}

func sampleDataplane() *DataplaneResults {
	return &DataplaneResults{
		Generated: "2026-12-01T00:00:00Z", Command: "bench dataplane", Machine: "test machine",
		Config: DataplaneConfig{Services: []int{0, 1000}, Endpoints: 10, Seed: 1, Conns: 8, LoadSeconds: 10, WarmupSeconds: 1,
			Repeats: 1, RestSeconds: 10, ChurnPerSecond: 10, ChurnSeconds: 10},
		Runs: []DataplaneRun{
			dataplaneRun(ProxySwitchyard, ModeIPVS, "lab", 0, 150, 600, 0.2, 2, 0),
			dataplaneRun(ProxySwitchyard, ModeIPVS, "lab", 1000, 150, 600, 0.2, 2, 10),
			dataplaneRun(ProxySwitchyard, ModeIPTablesLegacy, "lab", 1000, 100, 600, 0.4, 5, 40),
			dataplaneRun(ProxyKubeProxy, ModeIPVS, "lab", 1000, 120, 500, 0.3, 50, 80),
			{Proxy: ProxyKubeProxy, Mode: ModeIPTablesLegacy, Kernel: "lab", Services: 1000, Incomplete: "first sync not complete after 8m0s"},
		},
	}
}

func TestDataplaneReport(t *testing.T) {
	md := renderDataplane(sampleDataplane())
	for _, want := range []string{
		"- **IPVS vs iptables-legacy** (switchyard, kernel lab, 1000 other Services), new-connection: 1.5× the requests/s (150 against 100), p99 200.0 ms against 400.0 ms.",
		"CPU under churn: 10.0% against 40.0%; at rest 2.0% against 5.0%.",
		"- **switchyard vs kube-proxy**, ipvs (lab), 1000 other Services: new-connection requests/s 1.2× (150 against 120); CPU under churn 10.0% against 80.0%; RSS at rest 40.0 against 40.0 MiB.",
		"| lab | ipvs | 1000 | switchyard | new-connection | 150 | 50.0 ms | 200.0 ms | 400.0 ms | 0 |",
		"| lab | ipvs | 0 | switchyard | 1.00 s | 2.0% | 40.0 | — | — | — |",
		"| lab | ipvs | 1000 | kube-proxy | 1.00 s | 50.0% | 40.0 | 80.0% | 100 | 60.0 |",
		"- kube-proxy, iptables-legacy (lab), 1000 other Services: first sync not complete after 8m0s.",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("dataplane.md lacks %q:\n%s", want, md)
		}
	}
	// No comparison with the incomplete kube-proxy run.
	if strings.Contains(md, "switchyard vs kube-proxy**, iptables-legacy") {
		t.Errorf("dataplane.md compares against an incomplete run:\n%s", md)
	}
}

func TestDataplaneReportFiles(t *testing.T) {
	dirs := []string{t.TempDir(), t.TempDir()}
	for _, dir := range dirs {
		if err := WriteDataplane(sampleDataplane(), dir); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{DataplaneJSONFile, DataplaneMarkdownFile, dataplaneRequestsFile, dataplaneLatencyFile, dataplaneCPUFile} {
		a, err := os.ReadFile(filepath.Join(dirs[0], name))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := os.ReadFile(filepath.Join(dirs[1], name))
		if !bytes.Equal(a, b) {
			t.Errorf("%s differs between two writes of the same results", name)
		}
		if strings.HasSuffix(name, ".svg") && (!bytes.Contains(a, []byte("switchyard ipvs (lab)")) || bytes.Contains(a, []byte("no data"))) {
			t.Errorf("%s has no switchyard ipvs (lab) line", name)
		}
	}
	back, err := ReadDataplane(filepath.Join(dirs[0], DataplaneJSONFile))
	if err != nil {
		t.Fatal(err)
	}
	if len(back.Runs) != 5 || back.Runs[1].Churn.Writes != 100 {
		t.Errorf("dataplane.json read back as %+v", back.Runs)
	}
	// Empty results still make a report, with the plots marked as empty.
	if err := WriteDataplaneReport(&DataplaneResults{}, t.TempDir()); err != nil {
		t.Errorf("empty results: %v", err)
	}
}

func TestDataplaneResume(t *testing.T) {
	prev := sampleDataplane() // N = 0 and 1000
	again := dataplaneRun(ProxySwitchyard, ModeIPVS, "lab", 1000, 999, 999, 0.1, 1, 1)
	cfg := prev.Config
	cfg.Services = []int{1000}
	r := &DataplaneResults{Command: "bench dataplane -services 1000 -resume", Machine: prev.Machine, Config: cfg, Runs: []DataplaneRun{again}}
	if err := r.Resume(prev); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(r.Config.Services, []int{0, 1000}) {
		t.Errorf("services %v, want [0 1000]", r.Config.Services)
	}
	// The N = 0 run is kept; every earlier run at 1000 gives way to the new one.
	if len(r.Runs) != 2 || r.Runs[0].Services != 0 || r.Runs[1].Load[0].RequestsPerSecond.Median != 999 {
		t.Errorf("runs after resume: %+v", r.Runs)
	}
	if !strings.Contains(r.Command, "bench dataplane; resumed as: bench dataplane -services 1000 -resume") {
		t.Errorf("command %q does not name both runs", r.Command)
	}
	other := &DataplaneResults{Machine: prev.Machine, Config: cfg}
	other.Config.Conns = 1
	if err := other.Resume(sampleDataplane()); err == nil {
		t.Error("resuming a run with other load settings succeeded, want an error")
	}
}
