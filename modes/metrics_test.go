package modes

import (
	"bufio"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/switchyard/switchyard/internal/proxymetrics"
	"github.com/switchyard/switchyard/internal/upstream"
)

// metricShape is what a dashboard's query depends on: a metric's name, type, label
// names and buckets, and the help text its /metrics prints.
type metricShape struct {
	Type    string
	Labels  []string
	Buckets []float64
	Help    string
}

// TestMetricsAsKubeProxy checks, in each proxy mode, that switchyard exports every
// metric kube-proxy v1.35 registers in that mode (pkg/proxy/metrics RegisterMetrics),
// with its type, label names, buckets and help, and no kubeproxy_* metric kube-proxy does
// not have there. kube-proxy's metrics are read from its source at the version this
// repository pins, as config's reference reads its flags. A difference passes only when
// the node contract's metrics table lists it for that metric and mode, and every row of
// that table must still be a difference.
func TestMetricsAsKubeProxy(t *testing.T) {
	kubernetes, err := upstream.KubernetesDir("..")
	if err != nil {
		t.Fatal(err)
	}
	want := kubeProxyMetrics(t, kubernetes)
	listed := listedMetricDifferences(t, "../docs/node-contract.md")
	for _, mode := range All {
		t.Run(mode.Name, func(t *testing.T) {
			upstream, ok := want[mode.Name]
			if !ok {
				t.Fatalf("kube-proxy's RegisterMetrics has no case for mode %q", mode.Name)
			}
			got := switchyardMetrics(t, mode.Name)
			differ := map[string]bool{}
			for _, name := range slices.Sorted(maps.Keys(upstream)) {
				if diff := cmp.Diff(upstream[name], got[name], cmpopts.EquateEmpty()); diff != "" {
					differ[name] = true
					if !listed[mode.Name][name] {
						t.Errorf("%s differs from kube-proxy's in %s mode, and docs/node-contract.md does not list it (-kube-proxy +switchyard):\n%s", name, mode.Name, diff)
					}
				}
			}
			for name := range got {
				if _, theirs := upstream[name]; !theirs && strings.HasPrefix(name, "kubeproxy_") {
					differ[name] = true
					if !listed[mode.Name][name] {
						t.Errorf("%s is not kube-proxy's in %s mode, and docs/node-contract.md does not list it", name, mode.Name)
					}
				}
			}
			for name := range listed[mode.Name] {
				if !differ[name] {
					t.Errorf("docs/node-contract.md lists %s as different in %s mode, but it is not", name, mode.Name)
				}
			}
		})
	}
}

// switchyardMetrics are the shapes of the metrics the proxy registers in a mode.
func switchyardMetrics(t *testing.T, mode string) map[string]metricShape {
	t.Helper()
	out := map[string]metricShape{}
	for _, mf := range proxymetrics.Registered(t, mode).Families {
		shape := metricShape{Type: strings.ToLower(mf.GetType().String()), Help: mf.GetHelp()}
		labels := map[string]bool{}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = true
			}
			shape.Buckets = bounds(m.GetHistogram())
		}
		shape.Labels = slices.Sorted(maps.Keys(labels))
		out[mf.GetName()] = shape
	}
	return out
}

func bounds(h *dto.Histogram) []float64 {
	var out []float64
	for _, b := range h.GetBucket() {
		out = append(out, b.GetUpperBound())
	}
	return out
}

// kubeProxyMetrics are the metrics kube-proxy's RegisterMetrics registers in each proxy
// mode, by name, read from pkg/proxy/metrics/metrics.go: the variables its var block
// makes with component-base's metrics.New* constructors, and, in RegisterMetrics, those
// named outside its switch on the mode (every mode) and in each case of it.
func kubeProxyMetrics(t *testing.T, kubernetes string) map[string]map[string]metricShape {
	t.Helper()
	dir := filepath.Join(kubernetes, "pkg/proxy/metrics")
	consts, err := upstream.StringConstants(dir)
	if err != nil {
		t.Fatal(err)
	}
	modes, err := upstream.StringConstants(filepath.Join(kubernetes, "pkg/proxy/apis/config"))
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, filepath.Join(dir, "metrics.go"), nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	vars := map[string]metricShape{}
	names := map[string]string{}
	var registerMetrics *ast.FuncDecl
	for _, d := range f.Decls {
		switch d := d.(type) {
		case *ast.GenDecl:
			if d.Tok != token.VAR {
				continue
			}
			for _, spec := range d.Specs {
				vs := spec.(*ast.ValueSpec)
				for i, v := range vs.Values {
					if call, ok := v.(*ast.CallExpr); ok && isSelector(call.Fun, "metrics", "") {
						names[vs.Names[i].Name], vars[vs.Names[i].Name] = upstreamMetric(t, fset, consts, call)
					}
				}
			}
		case *ast.FuncDecl:
			if d.Name.Name == "RegisterMetrics" {
				registerMetrics = d
			}
		}
	}
	if registerMetrics == nil || len(vars) == 0 {
		t.Fatalf("%s: no metrics or no RegisterMetrics: kube-proxy's metrics moved", fset.File(f.Pos()).Name())
	}
	// register adds the metric an identifier names to into.
	register := func(n ast.Node, into map[string]metricShape) {
		if id, ok := n.(*ast.Ident); ok {
			if shape, ok := vars[id.Name]; ok {
				into[names[id.Name]] = shape
			}
		}
	}
	common := map[string]metricShape{}
	byMode := map[string]map[string]metricShape{}
	ast.Inspect(registerMetrics.Body, func(n ast.Node) bool {
		clause, ok := n.(*ast.CaseClause)
		if !ok {
			register(n, common)
			return true
		}
		for _, e := range clause.List {
			sel, ok := e.(*ast.SelectorExpr)
			mode, known := "", false
			if ok {
				mode, known = modes[sel.Sel.Name]
			}
			if !known {
				t.Fatalf("%s: a case of RegisterMetrics that is no proxy mode constant", fset.Position(e.Pos()))
			}
			byMode[mode] = map[string]metricShape{}
			for _, stmt := range clause.Body {
				ast.Inspect(stmt, func(n ast.Node) bool { register(n, byMode[mode]); return true })
			}
		}
		return false
	})
	for _, m := range byMode {
		maps.Copy(m, common)
	}
	return byMode
}

// upstreamMetric reads one metrics.New* call of kube-proxy's var block: the metric's
// name and shape.
func upstreamMetric(t *testing.T, fset *token.FileSet, consts map[string]string, call *ast.CallExpr) (string, metricShape) {
	t.Helper()
	fn := call.Fun.(*ast.SelectorExpr).Sel.Name
	fail := func(format string, args ...any) {
		t.Helper()
		t.Fatalf("%s: metrics.%s: %s", fset.Position(call.Pos()), fn, fmt.Sprintf(format, args...))
	}
	str := func(e ast.Expr) string {
		t.Helper()
		s, ok := upstream.StringValue(e, consts)
		if !ok {
			fail("cannot read a string from %T", e)
		}
		return s
	}
	labels := func(e ast.Expr) []string {
		if id, ok := e.(*ast.Ident); ok && id.Name == "nil" {
			return []string{}
		}
		lit, ok := e.(*ast.CompositeLit)
		if !ok {
			fail("labels are a %T, not a []string literal", e)
		}
		var out []string
		for _, el := range lit.Elts {
			out = append(out, str(el))
		}
		slices.Sort(out)
		return out
	}
	stability := func(e ast.Expr) string {
		if !isSelector(e, "metrics", "") {
			fail("a stability level that is no metrics constant: %T", e)
		}
		return "[" + e.(*ast.SelectorExpr).Sel.Name + "] "
	}

	if fn == "NewDesc" {
		// A collector's description: kube-proxy's nfacctMetricCollector reports it with
		// metrics.CounterValue. NewDesc(fqName, help, variableLabels, constLabels,
		// stabilityLevel, deprecatedVersion).
		if len(call.Args) != 6 {
			fail("%d arguments", len(call.Args))
		}
		return str(call.Args[0]), metricShape{Type: "counter", Labels: labels(call.Args[2]), Help: stability(call.Args[4]) + str(call.Args[1])}
	}
	types := map[string]string{"NewCounter": "counter", "NewCounterVec": "counter", "NewGauge": "gauge", "NewGaugeVec": "gauge", "NewHistogramVec": "histogram"}
	shape := metricShape{Type: types[fn], Labels: []string{}}
	if shape.Type == "" {
		fail("not a constructor this test reads")
	}
	opts, ok := call.Args[0].(*ast.UnaryExpr)
	if !ok {
		fail("the options are not &metrics.*Opts{...}")
	}
	var namespace, subsystem, name, help, level string
	for _, el := range opts.X.(*ast.CompositeLit).Elts {
		kv := el.(*ast.KeyValueExpr)
		switch key := kv.Key.(*ast.Ident).Name; key {
		case "Namespace":
			namespace = str(kv.Value)
		case "Subsystem":
			subsystem = str(kv.Value)
		case "Name":
			name = str(kv.Value)
		case "Help":
			help = str(kv.Value)
		case "StabilityLevel":
			level = stability(kv.Value)
		case "Buckets":
			shape.Buckets = buckets(t, fset, kv.Value)
		default:
			fail("option %s, which this test does not read", key)
		}
	}
	if level == "" {
		fail("no StabilityLevel: component-base would print it as ALPHA")
	}
	shape.Help = level + help
	if len(call.Args) == 2 {
		shape.Labels = labels(call.Args[1])
	}
	return prometheus.BuildFQName(namespace, subsystem, name), shape
}

// buckets evaluates a bucket list built with component-base's metrics helpers.
func buckets(t *testing.T, fset *token.FileSet, e ast.Expr) []float64 {
	t.Helper()
	call, ok := e.(*ast.CallExpr)
	if !ok || !isSelector(call.Fun, "metrics", "") {
		t.Fatalf("%s: buckets that are no metrics.* call", fset.Position(e.Pos()))
	}
	num := func(e ast.Expr) float64 {
		lit, ok := e.(*ast.BasicLit)
		f, err := strconv.ParseFloat(lit.Value, 64)
		if !ok || err != nil {
			t.Fatalf("%s: a bucket parameter that is no number", fset.Position(e.Pos()))
		}
		return f
	}
	switch fn := call.Fun.(*ast.SelectorExpr).Sel.Name; fn {
	case "ExponentialBuckets":
		return prometheus.ExponentialBuckets(num(call.Args[0]), num(call.Args[1]), int(num(call.Args[2])))
	case "LinearBuckets":
		return prometheus.LinearBuckets(num(call.Args[0]), num(call.Args[1]), int(num(call.Args[2])))
	case "MergeBuckets":
		// component-base's MergeBuckets starts its result with one 0 bucket.
		out := []float64{0}
		for _, a := range call.Args {
			out = append(out, buckets(t, fset, a)...)
		}
		return out
	default:
		t.Fatalf("%s: metrics.%s, which this test does not evaluate", fset.Position(e.Pos()), fn)
		return nil
	}
}

// isSelector tells pkg.name (any name when name is "").
func isSelector(e ast.Expr, pkg, name string) bool {
	sel, ok := e.(*ast.SelectorExpr)
	if !ok {
		return false
	}
	id, ok := sel.X.(*ast.Ident)
	return ok && id.Name == pkg && (name == "" || sel.Sel.Name == name)
}

// listedMetricDifferences reads the node contract's table of metrics that differ from
// kube-proxy's: the rows under the heading "Metrics registered unlike kube-proxy's",
// whose first cell is the metric and second the modes it differs in, by mode.
func listedMetricDifferences(t *testing.T, path string) map[string]map[string]bool {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const heading = "Metrics registered unlike kube-proxy's"
	out := map[string]map[string]bool{}
	in, found := false, false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			in = strings.HasSuffix(line, heading)
			found = found || in
			continue
		}
		cells := strings.Split(line, "|")
		if !in || len(cells) < 3 || !strings.HasPrefix(strings.TrimSpace(cells[1]), "`kubeproxy_") {
			continue
		}
		name := strings.Trim(strings.TrimSpace(cells[1]), "`")
		for _, mode := range strings.Split(cells[2], ",") {
			mode = strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(mode), " mode"))
			if out[mode] == nil {
				out[mode] = map[string]bool{}
			}
			out[mode][name] = true
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if !found {
		t.Fatalf("%s has no heading %q", path, heading)
	}
	return out
}
