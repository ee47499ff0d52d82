// Package metricstest reads what a Prometheus registry holds, for tests.
package metricstest

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// Values are the values of the series of the counter or gauge called name in g, by
// their labels ("name=value" joined by commas, in name order; "" without labels), and of
// a histogram its number of observations; nil when name has no series.
func Values(t testing.TB, g prometheus.Gatherer, name string) map[string]float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatalf("gathering metrics: %v", err)
	}
	var out map[string]float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		out = map[string]float64{}
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
			value := m.GetGauge().GetValue()
			if c := m.GetCounter(); c != nil {
				value = c.GetValue()
			}
			if h := m.GetHistogram(); h != nil {
				value = float64(h.GetSampleCount())
			}
			out[strings.Join(labels, ",")] = value
		}
	}
	return out
}
