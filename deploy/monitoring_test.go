package deploy

import (
	"encoding/json"
	"os"
	"regexp"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/switchyard/switchyard/internal/proxymetrics"
	"github.com/switchyard/switchyard/modes"
)

// exportedLabels are the label names of every metric switchyard exports, in any mode.
func exportedLabels(t *testing.T) map[string]map[string]bool {
	t.Helper()
	out := map[string]map[string]bool{}
	for _, mode := range modes.All {
		for name, labels := range proxymetrics.Registered(t, mode.Name).Labels {
			if out[name] == nil {
				out[name] = map[string]bool{}
			}
			for _, l := range labels {
				out[name][l] = true
			}
		}
	}
	return out
}

var (
	// metricName finds the metric names in a PromQL expression, with the label
	// matchers that follow one.
	metricName = regexp.MustCompile(`\b((?:kubeproxy|switchyard)_[a-z_]+)\b(\{[^}]*\})?`)
	// matcherLabel finds the label of each matcher in a selector's braces.
	matcherLabel = regexp.MustCompile(`(\w+)\s*(?:=~|!~|!=|=)`)
	// grouping finds the labels of by (...) and without (...).
	grouping = regexp.MustCompile(`\b(?:by|without)\s*\(([^)]*)\)`)
	// templateLabel finds the labels an alert's annotations ({{ $labels.x }}) or a
	// panel's legend ({{x}}) print.
	templateLabel = regexp.MustCompile(`\{\{\s*(?:\$labels\.)?(\w+)\s*\}\}`)
)

// targetLabels are the labels Prometheus adds to every series it scrapes.
var targetLabels = map[string]bool{"instance": true, "job": true}

// query is one PromQL expression and the texts that print its labels.
type query struct {
	where, expr string
	templates   []string
}

// TestMonitoringUsesExportedMetrics reads the alert rules and the Grafana dashboard and
// checks that every metric they query is one switchyard exports, and every label they
// select, group by or print is one it has: a renamed metric or a removed label would
// otherwise leave an alert that can never fire and a panel without data.
func TestMonitoringUsesExportedMetrics(t *testing.T) {
	exported := exportedLabels(t)
	var queries []query
	var rules struct {
		Groups []struct {
			Name  string `json:"name"`
			Rules []struct {
				Alert       string            `json:"alert"`
				Expr        string            `json:"expr"`
				For         string            `json:"for"`
				Labels      map[string]string `json:"labels"`
				Annotations map[string]string `json:"annotations"`
			} `json:"rules"`
		} `json:"groups"`
	}
	data, err := os.ReadFile("monitoring/prometheus-rules.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(data, &rules); err != nil {
		t.Fatalf("monitoring/prometheus-rules.yaml: %v", err)
	}
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" || r.Expr == "" || r.Annotations["summary"] == "" {
				t.Errorf("alert %q: needs a name, an expression and a summary", r.Alert)
			}
			q := query{where: "alert " + r.Alert, expr: r.Expr}
			for _, a := range r.Annotations {
				q.templates = append(q.templates, a)
			}
			queries = append(queries, q)
		}
	}
	var dashboard struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr   string `json:"expr"`
				Legend string `json:"legendFormat"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if data, err = os.ReadFile("monitoring/grafana-dashboard.json"); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &dashboard); err != nil {
		t.Fatalf("monitoring/grafana-dashboard.json: %v", err)
	}
	for _, p := range dashboard.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q queries nothing", p.Title)
		}
		for _, target := range p.Targets {
			queries = append(queries, query{where: "panel " + p.Title, expr: target.Expr, templates: []string{target.Legend}})
		}
	}
	if len(queries) < 10 {
		t.Fatalf("found %d expressions; the files were not read as intended", len(queries))
	}
	for _, q := range queries {
		checkQuery(t, q, exported)
	}
}

// checkQuery checks one query's metrics and labels against what switchyard exports.
func checkQuery(t *testing.T, q query, exported map[string]map[string]bool) {
	t.Helper()
	// labels are the labels any of the query's metrics has.
	labels := map[string]bool{}
	for l := range targetLabels {
		labels[l] = true
	}
	for _, m := range metricName.FindAllStringSubmatch(q.expr, -1) {
		name, base := m[1], m[1]
		for _, suffix := range []string{"_bucket", "_count", "_sum"} {
			base = strings.TrimSuffix(base, suffix)
		}
		has, ok := exported[base]
		if !ok {
			t.Errorf("%s: %s is not a metric switchyard exports (in %q)", q.where, name, q.expr)
			continue
		}
		for l := range has {
			labels[l] = true
		}
		if strings.HasSuffix(name, "_bucket") {
			labels["le"] = true
		}
		for _, matcher := range matcherLabel.FindAllStringSubmatch(m[2], -1) {
			if l := matcher[1]; !has[l] && !targetLabels[l] {
				t.Errorf("%s: %s has no label %q (in %q)", q.where, base, l, q.expr)
			}
		}
	}
	var used []string
	for _, g := range grouping.FindAllStringSubmatch(q.expr, -1) {
		for _, l := range strings.Split(g[1], ",") {
			used = append(used, strings.TrimSpace(l))
		}
	}
	for _, text := range q.templates {
		for _, m := range templateLabel.FindAllStringSubmatch(text, -1) {
			used = append(used, m[1])
		}
	}
	for _, l := range used {
		if !labels[l] {
			t.Errorf("%s: no metric of %q has the label %q it uses", q.where, q.expr, l)
		}
	}
}
