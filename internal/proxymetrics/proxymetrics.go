// Package proxymetrics builds, for tests, the metrics the proxy registers in a proxy
// mode, over the kernel boundaries' stateful fakes: what its dashboards and its
// comparison with kube-proxy's metrics are checked against.
package proxymetrics

import (
	"context"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/switchyard/switchyard/iptables"
	"github.com/switchyard/switchyard/iptables/iptablestest"
	"github.com/switchyard/switchyard/ipvs"
	"github.com/switchyard/switchyard/ipvs/ipvstest"
	"github.com/switchyard/switchyard/proxier"
)

// Metrics are the metrics the proxy registers in a mode.
type Metrics struct {
	// Families are what a scrape shows once every series of kube-proxy's metrics
	// exists.
	Families []*dto.MetricFamily
	// Labels are the label names of every metric, by name, from the collectors'
	// descriptions: a vector without series yet has them too.
	Labels map[string][]string
}

// Registered are the metrics the proxy registers in the named mode, in both IP
// families, as the command registers them (proxier.NewMetrics, and each family's
// backend), after one full sync of each backend and one request of each health path. A
// mode it has no fake backend for fails the test.
func Registered(t testing.TB, mode string) Metrics {
	t.Helper()
	reg := &capturing{Registry: prometheus.NewRegistry()}
	metrics := proxier.NewMetrics(reg)
	var healths proxier.Healths
	for _, family := range []proxier.Family{proxier.IPv4, proxier.IPv6} {
		metrics.For(family)
		healths = append(healths, proxier.NewHealth(family, clock.RealClock{}, 0))
		var backend proxier.Backend
		switch mode {
		case "iptables":
			backend = iptables.NewBackend(iptablestest.NewFake(), iptables.RenderConfig{IPv6: family == proxier.IPv6, MasqueradeMark: "0x4000"}, reg, klog.Background())
		case "ipvs":
			node := ipvstest.NewNode()
			backend = ipvs.NewBackendWithKernel(node.IPVS, node.IPTables, node.Device, node.Sets,
				ipvs.Config{Scheduler: "rr", MasqueradeMark: "0x4000", IPv6: family == proxier.IPv6}, reg, klog.Background())
		default:
			t.Fatalf("no fake backend for proxy mode %q: add one to internal/proxymetrics", mode)
		}
		state := &proxier.State{Services: map[proxier.ServicePortName]*proxier.ServicePort{}, Endpoints: map[proxier.ServicePortName][]proxier.Endpoint{}}
		if err := backend.Sync(context.Background(), state, proxier.Changes{Full: true}); err != nil {
			t.Fatalf("%s mode, %s: %v", mode, family, err)
		}
	}
	health := proxier.HealthHandler(clock.RealClock{}, healths, &proxier.NodeEligibility{}, metrics)
	for _, path := range []string{"/healthz", "/livez"} {
		health.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, path, nil))
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	return Metrics{Families: families, Labels: reg.labels()}
}

// capturing is a registry that keeps the collectors registered with it.
type capturing struct {
	*prometheus.Registry
	collectors []prometheus.Collector
}

func (c *capturing) Register(coll prometheus.Collector) error {
	c.collectors = append(c.collectors, coll)
	return c.Registry.Register(coll)
}

func (c *capturing) MustRegister(colls ...prometheus.Collector) {
	for _, coll := range colls {
		if err := c.Register(coll); err != nil {
			panic(err)
		}
	}
}

// desc reads a description's name and label names from its String(), the one place
// client_golang shows the label names of a vector that has no series yet.
var desc = regexp.MustCompile(`fqName: "([^"]+)".*constLabels: \{([^}]*)\}, variableLabels: \{([^}]*)\}`)

func (c *capturing) labels() map[string][]string {
	out := map[string][]string{}
	descs := make(chan *prometheus.Desc)
	go func() {
		for _, coll := range c.collectors {
			coll.Describe(descs)
		}
		close(descs)
	}()
	for d := range descs {
		m := desc.FindStringSubmatch(d.String())
		if m == nil {
			continue
		}
		var labels []string
		for _, kv := range strings.Split(m[2], ",") {
			if name, _, ok := strings.Cut(kv, "="); ok {
				labels = append(labels, name)
			}
		}
		for _, l := range strings.Split(m[3], ",") {
			// A label with a constraint prints as c(name).
			if l = strings.TrimSuffix(strings.TrimPrefix(l, "c("), ")"); l != "" {
				labels = append(labels, l)
			}
		}
		out[m[1]] = labels
	}
	return out
}
