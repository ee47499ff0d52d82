package deploy

import (
	"context"
	"encoding/json"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"
	"sigs.k8s.io/yaml"

	"github.com/switchyard/switchyard/iptables"
	"github.com/switchyard/switchyard/ipvs"
	"github.com/switchyard/switchyard/proxier"
)

// exportedMetrics are the names of every metric switchyard registers, in either mode.
func exportedMetrics(t *testing.T) map[string]bool {
	t.Helper()
	rec := &describingRegisterer{names: map[string]bool{}}
	proxier.NewMetrics(rec)
	iptables.NewBackend(noIPTables{}, iptables.RenderConfig{}, rec, klog.Background())
	ipvs.NewBackend(nil, noIPTables{}, nil, ipvs.Config{}, rec, klog.Background())
	return rec.names
}

// metricName finds the metric names in a PromQL expression.
var metricName = regexp.MustCompile(`\b(?:kubeproxy|switchyard)_[a-z_]+\b`)

// TestMonitoringUsesExportedMetrics reads the alert rules and the Grafana dashboard and
// checks that every metric they query is one switchyard exports: a renamed metric would
// otherwise leave an alert that can never fire and a panel without data.
func TestMonitoringUsesExportedMetrics(t *testing.T) {
	exported := exportedMetrics(t)
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
	var exprs []string
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" || r.Expr == "" || r.Annotations["summary"] == "" {
				t.Errorf("alert %q: needs a name, an expression and a summary", r.Alert)
			}
			exprs = append(exprs, r.Expr)
		}
	}
	var dashboard struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
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
			exprs = append(exprs, target.Expr)
		}
	}
	if len(exprs) < 10 {
		t.Fatalf("found %d expressions; the files were not read as intended", len(exprs))
	}
	for _, expr := range exprs {
		for _, name := range metricName.FindAllString(expr, -1) {
			base := name
			for _, suffix := range []string{"_bucket", "_count", "_sum"} {
				base = strings.TrimSuffix(base, suffix)
			}
			if !exported[base] {
				t.Errorf("%s is not a metric switchyard exports (in %q)", name, expr)
			}
		}
	}
}

// describingRegisterer records the name of every metric registered with it.
type describingRegisterer struct{ names map[string]bool }

var fqName = regexp.MustCompile(`fqName: "([^"]+)"`)

func (r *describingRegisterer) Register(c prometheus.Collector) error {
	descs := make(chan *prometheus.Desc, 16)
	go func() { c.Describe(descs); close(descs) }()
	for d := range descs {
		if m := fqName.FindStringSubmatch(d.String()); m != nil {
			r.names[m[1]] = true
		}
	}
	return nil
}

func (r *describingRegisterer) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		_ = r.Register(c)
	}
}

func (r *describingRegisterer) Unregister(prometheus.Collector) bool { return true }

// noIPTables satisfies iptables.Interface for backends that are only constructed.
type noIPTables struct{}

func (noIPTables) Restore(context.Context, []byte) error                { return nil }
func (noIPTables) Save(context.Context, iptables.Table) ([]byte, error) { return nil, nil }
func (noIPTables) Flavor() iptables.Flavor                              { return iptables.Nft }
