package benchmarks

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestFormatSeconds(t *testing.T) {
	tests := []struct {
		in   float64
		want string
	}{
		{0, "0"},
		{0.00005, "50.0 µs"},
		{0.0000999, "99.9 µs"},
		{0.00009996, "0.1 ms"}, // would round to "100.0 µs"
		{0.0008, "0.8 ms"},
		{0.0123, "12.3 ms"},
		{0.5, "500.0 ms"},
		{0.99996, "1.00 s"}, // would round to "1000.0 ms"
		{1.42, "1.42 s"},
		{9.996, "10.0 s"}, // would round to "10.00 s"
		{95, "95.0 s"},
		{1234.5, "1234.5 s"},
		{-0.0123, "-12.3 ms"},
	}
	for _, tt := range tests {
		if got := FormatSeconds(tt.in); got != tt.want {
			t.Errorf("FormatSeconds(%v) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// sum is a measured Summary with the given median and p99.
func sum(median, p99 float64) Summary {
	return Summary{N: 5, Median: median, P99: p99, Max: p99, Mean: median}
}

// reportFixture is two modes (iptables-nft on the host, IPVS in the lab) at two N, with
// both proxies for IPVS and only switchyard for iptables-nft. Runs and steps are out of
// order on purpose, so the test sees the report sort them.
func reportFixture() *Results {
	step := func(op string, syncMedian, floorMedian float64, tool string, verified bool) Step {
		s := Step{Op: op, Runs: 5, Sync: sum(syncMedian, syncMedian*1.25), Kernel: sum(syncMedian*0.75, syncMedian),
			Ops: sum(4021, 4100), FloorTool: tool, Verified: verified}
		if floorMedian >= 0 { // negative: the floor was not measured
			s.Floor = sum(floorMedian, floorMedian)
		}
		return s
	}
	return &Results{
		Generated: "2025-01-02T03:04:05Z",
		Command:   "bench -services 100,1000",
		Machine:   "Test CPU, 8 cores, 16 GiB, Linux 6.1",
		Config:    Config{Services: []int{100, 1000}, Endpoints: 10, Repeats: 5, Changes: 50, Seed: 42},
		Backends: []BackendRun{
			{Mode: "ipvs", Kernel: "lab", Services: 1000, Endpoints: 10, PeakRSSBytes: 64 << 20, Steps: []Step{
				step(OpChangeEndpoint, 0.0008, 0.0004, "ipvsadm", true),
				step(OpFull, 0.012, 0.004, "ipvsadm-restore", true),
				step(OpBurst, 0.005, 0.002, "ipvsadm", false),
			}},
			{Mode: "iptables-nft", Kernel: "host", Services: 100, Endpoints: 10, PeakRSSBytes: 32 << 20, Steps: []Step{
				step(OpFull, 0.15, 0.1, "iptables-restore", true),
				// A floor that measured as zero must not break the log-scale plot.
				step(OpChangeEndpoint, 0.002, 0, "iptables-restore", true),
			}},
			{Mode: "ipvs", Kernel: "lab", Services: 100, Endpoints: 10, PeakRSSBytes: 48 << 20, Steps: []Step{
				step(OpFull, 0.0015, 0.001, "ipvsadm-restore", true),
				step(OpChangeEndpoint, 0.0006, 0.0004, "ipvsadm", true),
			}},
			// Past its budget: listed, and the floor summary keeps the largest complete N.
			{Mode: "iptables-nft", Kernel: "host", Services: 5000, Endpoints: 10, Incomplete: "stopped after its budget of 25m0s"},
			{Mode: "iptables-nft", Kernel: "host", Services: 1000, Endpoints: 10, PeakRSSBytes: 96 << 20, Steps: []Step{
				step(OpChangeEndpoint, 0.09, -1, "", true),
				step(OpAddService, 0.08, 0.02, "iptables-restore", true),
				step(OpFull, 1.42, 0.355, "iptables-restore", true),
			}},
		},
		Proxies: []ProxyRun{
			{Proxy: "kube-proxy", Mode: "ipvs", Kernel: "lab", Services: 1000, StartupSeconds: 4.5, Changes: 50, Failed: 1,
				EndToEnd:           sum(0.031, 0.09),
				SyncDuration:       Histogram{Count: 50, Mean: 0.02, P50: 0.018, P99: 0.05},
				NetworkProgramming: Histogram{Count: 50, Mean: 0.03, P50: 0.029, P99: 0.08},
				RSSBytes:           200 << 20},
			{Proxy: "switchyard", Mode: "ipvs", Kernel: "lab", Services: 1000, StartupSeconds: 1.5, Changes: 50,
				EndToEnd:           sum(0.010, 0.02),
				SyncDuration:       Histogram{Count: 50, Mean: 0.005, P50: 0.004, P99: 0.011},
				NetworkProgramming: Histogram{Count: 50, Mean: 0.009, P50: 0.0085, P99: 0.019},
				RSSBytes:           80 << 20},
			{Proxy: "switchyard", Mode: "iptables-nft", Kernel: "host", Services: 1000, StartupSeconds: 2, Changes: 50,
				EndToEnd:     sum(0.12, 0.3),
				SyncDuration: Histogram{Count: 50, P50: 0.1, P99: 0.25},
				RSSBytes:     90 << 20},
			{Proxy: "switchyard", Mode: "ipvs", Kernel: "lab", Services: 100, StartupSeconds: 1, Changes: 50,
				EndToEnd: sum(0.006, 0.01), RSSBytes: 40 << 20},
			{Proxy: "kube-proxy", Mode: "ipvs", Kernel: "lab", Services: 100, StartupSeconds: 3, Changes: 50,
				EndToEnd: sum(0.012, 0.03), RSSBytes: 150 << 20},
			{Proxy: "kube-proxy", Mode: "ipvs", Kernel: "lab", Services: 5000, Incomplete: "not run: too slow at 1000"},
			{Proxy: "switchyard", Mode: "ipvs", Kernel: "lab", Services: 5000, StartupSeconds: 30, Changes: 1, Failed: 1,
				Incomplete: "change budget spent"},
		},
	}
}

// markdownTable returns the rows (cells trimmed, header first, separator dropped) of the
// first table after the "## "+heading line.
func markdownTable(t *testing.T, md, heading string) [][]string {
	t.Helper()
	_, rest, ok := strings.Cut(md, "\n## "+heading+"\n")
	if !ok {
		t.Fatalf("no section %q in:\n%s", heading, md)
	}
	var rows [][]string
	for _, line := range strings.Split(rest, "\n") {
		if strings.HasPrefix(line, "## ") {
			break
		}
		if !strings.HasPrefix(line, "|") {
			if len(rows) > 0 {
				break // end of the table
			}
			continue
		}
		if strings.HasPrefix(line, "| ---") {
			continue
		}
		cells := strings.Split(strings.Trim(line, "|"), "|")
		for i := range cells {
			cells[i] = strings.TrimSpace(cells[i])
		}
		rows = append(rows, cells)
	}
	if len(rows) == 0 {
		t.Fatalf("section %q has no table", heading)
	}
	return rows
}

// cell returns the cell of row under the header column named col.
func cell(t *testing.T, table [][]string, row []string, col string) string {
	t.Helper()
	i := slices.Index(table[0], col)
	if i < 0 {
		t.Fatalf("no column %q in %q", col, table[0])
	}
	return row[i]
}

// findRow returns the first row whose leading cells equal prefix.
func findRow(t *testing.T, table [][]string, prefix ...string) []string {
	t.Helper()
	for _, row := range table[1:] {
		if slices.Equal(row[:len(prefix)], prefix) {
			return row
		}
	}
	t.Fatalf("no row starting %q in %q", prefix, table)
	return nil
}

func writeFixtureReport(t *testing.T) (dir, md string) {
	t.Helper()
	dir = t.TempDir()
	if err := WriteReport(reportFixture(), dir); err != nil {
		t.Fatalf("WriteReport: %v", err)
	}
	data, err := os.ReadFile(filepath.Join(dir, "results.md"))
	if err != nil {
		t.Fatal(err)
	}
	return dir, string(data)
}

func TestReportHeader(t *testing.T) {
	_, md := writeFixtureReport(t)
	first, _, _ := strings.Cut(md, "\n")
	if first != "<!-- generated by make bench from results.json; do not edit -->" {
		t.Errorf("first line = %q", first)
	}
	for _, want := range []string{
		"2025-01-02T03:04:05Z",
		"`bench -services 100,1000`",
		"Test CPU, 8 cores, 16 GiB, Linux 6.1",
		"Services (N): 100, 1000",
		"Endpoints per Service: 10",
		"Repeats per incremental operation: 5",
		"EndpointSlice changes per end-to-end run: 50",
		"Seed: 42",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("header lacks %q", want)
		}
	}
}

func TestReportRuleRefreshTable(t *testing.T) {
	_, md := writeFixtureReport(t)
	table := markdownTable(t, md, "Rule refresh (in-process backend)")

	wantHeader := []string{"Mode", "Kernel", "Services", "Operation", "sync median", "sync p99",
		"kernel-write median", "kernel ops (median)", "floor median (tool)", "RSS MiB", "verified"}
	if !slices.Equal(table[0], wantHeader) {
		t.Errorf("header = %q, want %q", table[0], wantHeader)
	}

	// Sorted by kernel ("host" < "lab"), mode, services, then op in Operations order.
	var gotOrder []string
	for _, row := range table[1:] {
		gotOrder = append(gotOrder, strings.Join(row[:4], " "))
	}
	wantOrder := []string{
		"iptables-nft host 100 full-sync",
		"iptables-nft host 100 change-endpoint",
		"iptables-nft host 1000 full-sync",
		"iptables-nft host 1000 add-service",
		"iptables-nft host 1000 change-endpoint",
		"ipvs lab 100 full-sync",
		"ipvs lab 100 change-endpoint",
		"ipvs lab 1000 full-sync",
		"ipvs lab 1000 change-endpoint",
		"ipvs lab 1000 burst-10pct",
	}
	if !slices.Equal(gotOrder, wantOrder) {
		t.Errorf("row order:\n got %q\nwant %q", gotOrder, wantOrder)
	}

	tests := []struct {
		row  []string
		col  string
		want string
	}{
		{[]string{"ipvs", "lab", "1000", "full-sync"}, "sync median", "12.0 ms"},
		{[]string{"ipvs", "lab", "1000", "full-sync"}, "sync p99", "15.0 ms"},
		{[]string{"ipvs", "lab", "1000", "full-sync"}, "kernel-write median", "9.0 ms"},
		{[]string{"ipvs", "lab", "1000", "full-sync"}, "kernel ops (median)", "4021"},
		{[]string{"ipvs", "lab", "1000", "full-sync"}, "floor median (tool)", "4.0 ms (ipvsadm-restore)"},
		{[]string{"ipvs", "lab", "1000", "full-sync"}, "RSS MiB", "64.0"},
		{[]string{"ipvs", "lab", "1000", "full-sync"}, "verified", "✓"},
		{[]string{"ipvs", "lab", "1000", "change-endpoint"}, "sync median", "0.8 ms"},
		{[]string{"ipvs", "lab", "1000", "burst-10pct"}, "verified", "✗"},
		{[]string{"iptables-nft", "host", "1000", "full-sync"}, "sync median", "1.42 s"},
		{[]string{"iptables-nft", "host", "1000", "full-sync"}, "RSS MiB", "96.0"},
		{[]string{"iptables-nft", "host", "1000", "change-endpoint"}, "floor median (tool)", "—"},
		{[]string{"iptables-nft", "host", "100", "change-endpoint"}, "floor median (tool)", "0 (iptables-restore)"},
	}
	for _, tt := range tests {
		if got := cell(t, table, findRow(t, table, tt.row...), tt.col); got != tt.want {
			t.Errorf("%q %s = %q, want %q", tt.row, tt.col, got, tt.want)
		}
	}
}

func TestReportFloorSummary(t *testing.T) {
	_, md := writeFixtureReport(t)
	table := markdownTable(t, md, "switchyard vs the kernel's floor")
	// One row per mode+kernel, at the largest N only: 12 ms / 4 ms and 0.8 ms / 0.4 ms for
	// IPVS (N=100 would give 1.5× and 1.5×), 1.42 s / 355 ms for iptables-nft.
	want := [][]string{
		{"Mode", "Kernel", "Services", "full-sync (switchyard / floor)", "change-endpoint (switchyard / floor)"},
		{"iptables-nft", "host", "1000", "4.0× (1.42 s / 355.0 ms)", "—"},
		{"ipvs", "lab", "1000", "3.0× (12.0 ms / 4.0 ms)", "2.0× (0.8 ms / 0.4 ms)"},
	}
	if !slices.EqualFunc(table, want, slices.Equal) {
		t.Errorf("floor summary:\n got %q\nwant %q", table, want)
	}
}

func TestReportProxyTable(t *testing.T) {
	_, md := writeFixtureReport(t)
	table := markdownTable(t, md, "switchyard vs kube-proxy (real apiserver)")

	var gotOrder []string
	for _, row := range table[1:] {
		gotOrder = append(gotOrder, strings.Join(row[:3], " "))
	}
	wantOrder := []string{"iptables-nft host 1000", "ipvs lab 100", "ipvs lab 1000", "ipvs lab 5000"}
	if !slices.Equal(gotOrder, wantOrder) {
		t.Errorf("row order: got %q, want %q", gotOrder, wantOrder)
	}

	const ratio = "kube-proxy / switchyard e2e p50"
	tests := []struct {
		row  []string
		col  string
		want string
	}{
		{[]string{"ipvs", "lab", "1000"}, "switchyard e2e p50", "10.0 ms"},
		{[]string{"ipvs", "lab", "1000"}, "kube-proxy e2e p50", "31.0 ms"},
		{[]string{"ipvs", "lab", "1000"}, "switchyard e2e p99", "20.0 ms"},
		{[]string{"ipvs", "lab", "1000"}, "kube-proxy e2e p99", "90.0 ms"},
		{[]string{"ipvs", "lab", "1000"}, "switchyard sync p50", "4.0 ms"},
		{[]string{"ipvs", "lab", "1000"}, "kube-proxy sync p99", "50.0 ms"},
		{[]string{"ipvs", "lab", "1000"}, "kube-proxy net-prog p50", "29.0 ms"},
		{[]string{"ipvs", "lab", "1000"}, "switchyard startup", "1.50 s"},
		{[]string{"ipvs", "lab", "1000"}, "kube-proxy RSS MiB", "200.0"},
		{[]string{"ipvs", "lab", "1000"}, "kube-proxy failed/changes", "1/50"},
		{[]string{"ipvs", "lab", "1000"}, ratio, "3.1×"},
		{[]string{"ipvs", "lab", "100"}, ratio, "2.0×"},
		// No histograms were scraped at N=100.
		{[]string{"ipvs", "lab", "100"}, "switchyard sync p50", "—"},
		// kube-proxy did not run on the host.
		{[]string{"iptables-nft", "host", "1000"}, "switchyard e2e p50", "120.0 ms"},
		{[]string{"iptables-nft", "host", "1000"}, "kube-proxy e2e p50", "—"},
		{[]string{"iptables-nft", "host", "1000"}, "kube-proxy startup", "—"},
		{[]string{"iptables-nft", "host", "1000"}, "kube-proxy failed/changes", "—"},
		{[]string{"iptables-nft", "host", "1000"}, ratio, "—"},
		// Not run at all, and started but out of change budget.
		{[]string{"ipvs", "lab", "5000"}, "kube-proxy startup", "—"},
		{[]string{"ipvs", "lab", "5000"}, "switchyard startup", "30.0 s"},
	}
	for _, tt := range tests {
		if got := cell(t, table, findRow(t, table, tt.row...), tt.col); got != tt.want {
			t.Errorf("%q %s = %q, want %q", tt.row, tt.col, got, tt.want)
		}
	}
	for _, line := range []string{
		"- kube-proxy, ipvs (lab), 5000 Services: not run: too slow at 1000.\n",
		"- switchyard, ipvs (lab), 5000 Services: change budget spent.\n",
		"- iptables-nft (host), 5000 Services: stopped after its budget of 25m0s.\n",
	} {
		if !strings.Contains(md, line) {
			t.Errorf("results.md lacks %q", line)
		}
	}
}

func TestReportPlots(t *testing.T) {
	dir, _ := writeFixtureReport(t)
	tests := []struct {
		file    string
		want    []string
		notWant []string
	}{
		{
			file: "rule-refresh.svg",
			want: []string{
				"Full sync: median seconds", "Change one endpoint: median seconds",
				"ipvs (lab)", "iptables-nft (host)",
				"ipvs (lab) floor (ipvsadm-restore)", "ipvs (lab) floor (ipvsadm)",
				"iptables-nft (host) floor (iptables-restore)",
			},
		},
		{
			file: "end-to-end.svg",
			want: []string{
				"switchyard ipvs (lab)", "kube-proxy ipvs (lab)", "switchyard iptables-nft (host)",
			},
			notWant: []string{"kube-proxy iptables-nft (host)"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			data, err := os.ReadFile(filepath.Join(dir, tt.file))
			if err != nil {
				t.Fatal(err)
			}
			svg := string(data)
			if !strings.HasPrefix(svg, "<?xml") && !strings.HasPrefix(svg, "<svg") {
				t.Errorf("%s does not start as SVG: %.40q", tt.file, svg)
			}
			if !strings.Contains(svg, "</svg>") {
				t.Errorf("%s is not a complete SVG", tt.file)
			}
			for _, w := range tt.want {
				if !strings.Contains(svg, ">"+w+"<") {
					t.Errorf("%s lacks the label %q", tt.file, w)
				}
			}
			for _, w := range tt.notWant {
				if strings.Contains(svg, ">"+w+"<") {
					t.Errorf("%s has the label %q, which has no data", tt.file, w)
				}
			}
		})
	}
}

// TestReportDeterministic checks that the same results give byte-identical files, so
// regenerating the report does not produce spurious diffs.
func TestReportDeterministic(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	for _, dir := range []string{a, b} {
		if err := WriteReport(reportFixture(), dir); err != nil {
			t.Fatalf("WriteReport: %v", err)
		}
	}
	for _, name := range []string{"results.md", "rule-refresh.svg", "end-to-end.svg"} {
		x, err := os.ReadFile(filepath.Join(a, name))
		if err != nil {
			t.Fatal(err)
		}
		y, err := os.ReadFile(filepath.Join(b, name))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(x, y) {
			t.Errorf("%s differs between two runs on the same results", name)
		}
	}
}

func TestReportEmptyResults(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "new")
	if err := WriteReport(&Results{}, dir); err != nil {
		t.Fatalf("WriteReport of empty results: %v", err)
	}
	for _, name := range []string{"results.md", "rule-refresh.svg", "end-to-end.svg"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	if err := WriteReport(nil, t.TempDir()); err == nil {
		t.Error("WriteReport(nil) succeeded")
	}
}
