package benchmarks

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// Files WriteDataplane writes into its directory, next to the rule-refresh report.
const (
	DataplaneJSONFile     = "dataplane.json"
	DataplaneMarkdownFile = "dataplane.md"
	dataplaneRequestsFile = "dataplane-requests.svg"
	dataplaneLatencyFile  = "dataplane-latency.svg"
	dataplaneCPUFile      = "dataplane-cpu.svg"
)

// ReadDataplane reads a data-plane results file.
func ReadDataplane(path string) (*DataplaneResults, error) {
	var r DataplaneResults
	if err := readJSONFile(path, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// WriteDataplane writes r as dataplane.json and its report (dataplane.md and the plots)
// into dir.
func WriteDataplane(r *DataplaneResults, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := WriteJSON(filepath.Join(dir, DataplaneJSONFile), r); err != nil {
		return err
	}
	return WriteDataplaneReport(r, dir)
}

// WriteDataplaneReport writes dataplane.md and the plots for r into dir. Output depends
// only on r.
func WriteDataplaneReport(r *DataplaneResults, dir string) error {
	if r == nil {
		return errors.New("writing the data-plane report: no results")
	}
	path := filepath.Join(dir, DataplaneMarkdownFile)
	if err := os.WriteFile(path, []byte(renderDataplane(r)), 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	palette := dataplanePalette(r)
	plots := []struct {
		file   string
		panels []dataplanePanel
	}{
		{dataplaneRequestsFile, []dataplanePanel{
			{"New connection per request: requests/s", "requests/s", loadFigure(LoadNewConnection, func(s *LoadSeries) float64 { return s.RequestsPerSecond.Median }), countTickLabel},
			{"Keep-alive: requests/s", "requests/s", loadFigure(LoadKeepAlive, func(s *LoadSeries) float64 { return s.RequestsPerSecond.Median }), countTickLabel},
		}},
		{dataplaneLatencyFile, []dataplanePanel{
			{"New connection per request: p99 latency", "seconds", loadFigure(LoadNewConnection, func(s *LoadSeries) float64 { return s.P99.Median }), secondsTickLabel},
			{"Keep-alive: p99 latency", "seconds", loadFigure(LoadKeepAlive, func(s *LoadSeries) float64 { return s.P99.Median }), secondsTickLabel},
		}},
		{dataplaneCPUFile, []dataplanePanel{
			{"Proxy CPU at rest: % of one core", "% of one core", func(run *DataplaneRun) float64 { return usagePercent(run.Rest) }, countTickLabel},
			{fmt.Sprintf("Proxy CPU under %d EndpointSlice writes/s: %% of one core", r.Config.ChurnPerSecond), "% of one core",
				func(run *DataplaneRun) float64 { return usagePercent(run.Churn) }, countTickLabel},
		}},
	}
	for _, pl := range plots {
		var panels []*logLogPanel
		for _, panel := range pl.panels {
			p, err := newCategoryPlot(r, panel, palette)
			if err != nil {
				return fmt.Errorf("plotting %s: %w", pl.file, err)
			}
			panels = append(panels, p)
		}
		if err := savePanelsSVG(panels, filepath.Join(dir, pl.file)); err != nil {
			return err
		}
	}
	return nil
}

// dataplanePanel is one panel: a figure of each run against N.
type dataplanePanel struct {
	title, yLabel string
	// figure is the run's value, NaN when it has none.
	figure func(*DataplaneRun) float64
	tick   func(float64) string
}

func loadFigure(kind string, f func(*LoadSeries) float64) func(*DataplaneRun) float64 {
	return func(run *DataplaneRun) float64 {
		if s := run.load(kind); s != nil {
			return f(s)
		}
		return math.NaN()
	}
}

func usagePercent(u *Usage) float64 {
	if u == nil || u.Seconds <= 0 {
		return math.NaN()
	}
	return u.CPUPercent()
}

// load returns the run's series of kind, or nil.
func (r *DataplaneRun) load(kind string) *LoadSeries {
	for i := range r.Load {
		if r.Load[i].Kind == kind {
			return &r.Load[i]
		}
	}
	return nil
}

func dataplanePalette(r *DataplaneResults) seriesPalette {
	seen := map[seriesKey]bool{}
	for _, run := range r.Runs {
		seen[seriesKey{run.Mode, run.Kernel}] = true
	}
	palette := seriesPalette{}
	for i, k := range sortedKeys(seen) {
		palette[k] = i
	}
	return palette
}

// newCategoryPlot plots one line per proxy, mode and kernel (kube-proxy dashed) with the
// configured N evenly spaced on the x axis, N = 0 included, and a log y axis.
func newCategoryPlot(r *DataplaneResults, panel dataplanePanel, palette seriesPalette) (*logLogPanel, error) {
	p := plot.New()
	p.Title.Text = panel.title
	p.X.Label.Text = "other Services on the node"
	p.Y.Label.Text = panel.yLabel
	p.Add(plotter.NewGrid())
	legend := plot.NewLegend()
	legend.TextStyle.Font.Size = vg.Points(10)
	legend.Padding = vg.Points(3)
	type seriesID struct {
		proxy string
		key   seriesKey
	}
	byID := map[seriesID]*plotSeries{}
	for _, run := range sortedDataplaneRuns(r) {
		v := panel.figure(run)
		x := slices.Index(r.Config.Services, run.Services)
		if run.Incomplete != "" || math.IsNaN(v) || x < 0 {
			continue
		}
		id := seriesID{run.Proxy, seriesKey{run.Mode, run.Kernel}}
		s, ok := byID[id]
		if !ok {
			s = &plotSeries{label: run.Proxy + " " + id.key.String(), key: id.key, dashed: run.Proxy == ProxyKubeProxy}
			byID[id] = s
		}
		s.points = append(s.points, plotter.XY{X: float64(x), Y: math.Max(v, logEpsilon)})
	}
	ids := make([]seriesID, 0, len(byID))
	for id := range byID {
		ids = append(ids, id)
	}
	slices.SortFunc(ids, func(a, b seriesID) int {
		return cmp.Or(compareSeriesKeys(a.key, b.key), cmp.Compare(b.proxy, a.proxy)) // switchyard first
	})
	series := make([]plotSeries, len(ids))
	for i, id := range ids {
		series[i] = *byID[id]
	}
	panelOut := &logLogPanel{plot: p, legend: legend}
	_, _, yMin, yMax, err := addLines(p, &panelOut.legend, series, palette)
	if err != nil {
		return nil, err
	}
	var ticks []plot.Tick
	for i, n := range r.Config.Services {
		ticks = append(ticks, plot.Tick{Value: float64(i), Label: fmt.Sprint(n)})
	}
	p.X.Tick.Marker = plot.ConstantTicks(ticks)
	p.X.Min, p.X.Max = -0.25, float64(max(len(r.Config.Services)-1, 0))+0.25
	if math.IsInf(yMin, 1) {
		p.Title.Text += " (no data)"
		return panelOut, nil
	}
	p.Y.Scale = plot.LogScale{}
	p.Y.Min, p.Y.Max = decadeRange(yMin, yMax)
	p.Y.Tick.Marker = logTicks(panel.tick)
	return panelOut, nil
}

// countTickLabel labels a decade of a count or percentage: "0.1", "10", "10k".
func countTickLabel(v float64) string {
	if v >= 1000 {
		return fmt.Sprintf("%gk", v/1000)
	}
	return fmt.Sprintf("%g", v)
}

// sortedDataplaneRuns orders runs by kernel, mode, N and proxy (switchyard first).
func sortedDataplaneRuns(r *DataplaneResults) []*DataplaneRun {
	runs := make([]*DataplaneRun, len(r.Runs))
	for i := range r.Runs {
		runs[i] = &r.Runs[i]
	}
	slices.SortStableFunc(runs, func(a, b *DataplaneRun) int {
		return cmp.Or(compareSeriesKeys(seriesKey{a.Mode, a.Kernel}, seriesKey{b.Mode, b.Kernel}),
			cmp.Compare(a.Services, b.Services), cmp.Compare(b.Proxy, a.Proxy))
	})
	return runs
}

func renderDataplane(r *DataplaneResults) string {
	var b strings.Builder
	b.WriteString("<!-- generated by make bench from dataplane.json; do not edit -->\n\n")
	b.WriteString("# switchyard data-plane results\n\n")
	c := r.Config
	fmt.Fprintf(&b, "- Generated: %s\n", orMissing(r.Generated))
	fmt.Fprintf(&b, "- Command: %s\n", markdownCode(r.Command))
	fmt.Fprintf(&b, "- Machine: %s\n", orMissing(oneLine(r.Machine)))
	fmt.Fprintf(&b, "- Other Services on the node (N): %s, each with %d endpoints; seed %d\n", orMissing(joinInts(c.Services)), c.Endpoints, c.Seed)
	fmt.Fprintf(&b, "- Load: %d connections, %s measured after %s of warm-up, %d repeats of each kind\n",
		c.Conns, FormatSeconds(c.LoadSeconds), FormatSeconds(c.WarmupSeconds), c.Repeats)
	fmt.Fprintf(&b, "- Resource use: %s at rest, then %s under %d EndpointSlice writes a second\n\n",
		FormatSeconds(c.RestSeconds), FormatSeconds(c.ChurnSeconds), c.ChurnPerSecond)
	fmt.Fprintf(&b, "Plots: [requests/s](%s), [p99 latency](%s), [CPU](%s).\n\n", dataplaneRequestsFile, dataplaneLatencyFile, dataplaneCPUFile)
	b.WriteString("\"lab\" figures come from the UML kernel lab, a single-CPU guest kernel where every " +
		"packet and syscall costs far more than natively: compare modes within one kernel, never a lab figure with a host one.\n\n")
	writeHeadlines(&b, r)
	writeLoadTable(&b, r)
	writeUsageTable(&b, r)
	writeIncomplete(&b, r.Runs, func(run DataplaneRun) (string, string) {
		return fmt.Sprintf("%s, %s (%s), %d other Services", run.Proxy, run.Mode, run.Kernel, run.Services), run.Incomplete
	})
	return b.String()
}

// spreadCell is "median (min–max)" of a figure over the repeats.
func spreadCell(s Spread, format func(float64) string) string {
	if s.Max == s.Min {
		return format(s.Median)
	}
	return fmt.Sprintf("%s (%s–%s)", format(s.Median), format(s.Min), format(s.Max))
}

func formatRate(v float64) string { return fmt.Sprintf("%.0f", v) }

func writeLoadTable(b *strings.Builder, r *DataplaneResults) {
	b.WriteString("## Requests through a Service\n\n")
	b.WriteString("HTTP requests from a client pod to a ClusterIP Service backed by two pods, with N other " +
		"Services programmed. Each figure is the median of the repeats, with the lowest and highest repeat in parentheses; " +
		"latencies are per request, connection set-up included for new connections.\n\n")
	writeTableHeader(b, "Kernel", "Mode", "N", "Proxy", "Load", "requests/s", "p50", "p99", "p99.9", "errors")
	rows := 0
	for _, run := range sortedDataplaneRuns(r) {
		for _, s := range run.Load {
			writeTableRow(b, run.Kernel, run.Mode, fmt.Sprint(run.Services), run.Proxy, s.Kind,
				spreadCell(s.RequestsPerSecond, formatRate), spreadCell(s.P50, FormatSeconds),
				spreadCell(s.P99, FormatSeconds), spreadCell(s.P999, FormatSeconds), fmt.Sprint(s.Errors))
			rows++
		}
	}
	if rows == 0 {
		b.WriteString("| " + missing + " |\n")
	}
	b.WriteString("\n")
}

func writeUsageTable(b *strings.Builder, r *DataplaneResults) {
	b.WriteString("## Proxy resource use\n\n")
	b.WriteString("CPU is user and system time of the proxy and the programs it ran (iptables-restore, ipset), " +
		"as a percentage of one core over the window; RSS is the proxy's own, at the end of the window and its peak under churn.\n\n")
	writeTableHeader(b, "Kernel", "Mode", "N", "Proxy", "startup", "CPU at rest", "RSS at rest MiB",
		"CPU under churn", "writes", "peak RSS under churn MiB")
	rows := 0
	for _, run := range sortedDataplaneRuns(r) {
		if run.Rest == nil {
			continue
		}
		churnCPU, writes, churnRSS := missing, missing, missing
		if run.Churn != nil {
			churnCPU, writes, churnRSS = formatPercent(run.Churn.CPUPercent()), fmt.Sprint(run.Churn.Writes), formatMiB(run.Churn.PeakRSSBytes)
		}
		writeTableRow(b, run.Kernel, run.Mode, fmt.Sprint(run.Services), run.Proxy, FormatSeconds(run.StartupSeconds),
			formatPercent(run.Rest.CPUPercent()), formatMiB(run.Rest.RSSBytes), churnCPU, writes, churnRSS)
		rows++
	}
	if rows == 0 {
		b.WriteString("| " + missing + " |\n")
	}
	b.WriteString("\n")
}

func formatPercent(v float64) string { return fmt.Sprintf("%.1f%%", v) }

// writeHeadlines states the ratios a reader chooses a mode by: IPVS against iptables in
// the one kernel that has both, and switchyard against kube-proxy in each mode, each at
// the largest N where both sides were measured.
func writeHeadlines(b *strings.Builder, r *DataplaneResults) {
	b.WriteString("## Headline ratios\n\n")
	find := func(proxy, mode, kernel string, n int) *DataplaneRun {
		for i := range r.Runs {
			run := &r.Runs[i]
			if run.Proxy == proxy && run.Mode == mode && run.Kernel == kernel && run.Services == n && run.Incomplete == "" {
				return run
			}
		}
		return nil
	}
	largest := func(match func(n int) bool) int {
		for i := len(r.Config.Services) - 1; i >= 0; i-- {
			if match(r.Config.Services[i]) {
				return r.Config.Services[i]
			}
		}
		return -1
	}
	lines := 0
	// IPVS against iptables-legacy, both switchyard, in the kernel lab.
	if n := largest(func(n int) bool {
		return find(ProxySwitchyard, ModeIPVS, "lab", n) != nil && find(ProxySwitchyard, ModeIPTablesLegacy, "lab", n) != nil
	}); n >= 0 {
		ipvs, ipt := find(ProxySwitchyard, ModeIPVS, "lab", n), find(ProxySwitchyard, ModeIPTablesLegacy, "lab", n)
		for _, kind := range LoadKinds {
			a, c := ipvs.load(kind), ipt.load(kind)
			if a == nil || c == nil || c.RequestsPerSecond.Median <= 0 || a.P99.Median <= 0 {
				continue
			}
			fmt.Fprintf(b, "- **IPVS vs iptables-legacy** (switchyard, kernel lab, %d other Services), %s: %s the requests/s "+
				"(%.0f against %.0f), p99 %s against %s.\n", n, kind, formatRatio(a.RequestsPerSecond.Median/c.RequestsPerSecond.Median),
				a.RequestsPerSecond.Median, c.RequestsPerSecond.Median, FormatSeconds(a.P99.Median), FormatSeconds(c.P99.Median))
			lines++
		}
		if ipvs.Churn != nil && ipt.Churn != nil {
			fmt.Fprintf(b, "- **IPVS vs iptables-legacy** (switchyard, kernel lab, %d other Services), CPU under churn: %s against %s; at rest %s against %s.\n",
				n, formatPercent(ipvs.Churn.CPUPercent()), formatPercent(ipt.Churn.CPUPercent()),
				formatPercent(ipvs.Rest.CPUPercent()), formatPercent(ipt.Rest.CPUPercent()))
			lines++
		}
	}
	// switchyard against kube-proxy, per mode and kernel.
	seen := map[seriesKey]bool{}
	for _, run := range sortedDataplaneRuns(r) {
		key := seriesKey{run.Mode, run.Kernel}
		if seen[key] {
			continue
		}
		seen[key] = true
		n := largest(func(n int) bool {
			return find(ProxySwitchyard, key.Mode, key.Kernel, n) != nil && find(ProxyKubeProxy, key.Mode, key.Kernel, n) != nil
		})
		if n < 0 {
			continue
		}
		sy, kp := find(ProxySwitchyard, key.Mode, key.Kernel, n), find(ProxyKubeProxy, key.Mode, key.Kernel, n)
		var parts []string
		if a, c := sy.load(LoadNewConnection), kp.load(LoadNewConnection); a != nil && c != nil && c.RequestsPerSecond.Median > 0 {
			parts = append(parts, fmt.Sprintf("new-connection requests/s %s (%.0f against %.0f)",
				formatRatio(a.RequestsPerSecond.Median/c.RequestsPerSecond.Median), a.RequestsPerSecond.Median, c.RequestsPerSecond.Median))
		}
		if sy.Churn != nil && kp.Churn != nil {
			parts = append(parts, fmt.Sprintf("CPU under churn %s against %s", formatPercent(sy.Churn.CPUPercent()), formatPercent(kp.Churn.CPUPercent())))
		}
		parts = append(parts, fmt.Sprintf("RSS at rest %s against %s MiB", formatMiB(sy.Rest.RSSBytes), formatMiB(kp.Rest.RSSBytes)))
		fmt.Fprintf(b, "- **switchyard vs kube-proxy**, %s, %d other Services: %s.\n", key, n, strings.Join(parts, "; "))
		lines++
	}
	if lines == 0 {
		b.WriteString("No pair of complete runs to compare.\n")
	}
	b.WriteString("\n")
}
