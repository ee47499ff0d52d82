package benchmarks

import (
	"strings"
	"testing"
	"time"
)

func TestBudgetsSkip(t *testing.T) {
	type run struct {
		n        int
		took     time.Duration
		exceeded bool
		notRun   string
	}
	tests := []struct {
		name     string
		runs     []run
		n        int
		limit    time.Duration
		wantSkip string // substring of the reason; "" means run
	}{
		{name: "nothing measured runs", n: 100, limit: time.Minute},
		{name: "one fast run", runs: []run{{n: 100, took: time.Second}}, n: 1000, limit: time.Minute},
		{name: "one run already beyond the limit", runs: []run{{n: 100, took: 2 * time.Minute}}, n: 1000, limit: time.Minute,
			wantSkip: "extrapolates to at least 120.0 s at 1000"},
		{name: "the same N measured beyond the limit (a prior run)", runs: []run{{n: 100, took: 50 * time.Second}, {n: 1000, took: 281 * time.Second}},
			n: 1000, limit: 2 * time.Minute, wantSkip: "not run: it took 281.0 s at 1000 Services, beyond the 2m0s limit"},
		{name: "slope crosses the limit", runs: []run{{n: 100, took: 50 * time.Second}, {n: 1000, took: 243 * time.Second}},
			n: 5000, limit: 8 * time.Minute, wantSkip: "at least 1100.8 s at 5000"},
		{name: "slope stays under the limit", runs: []run{{n: 100, took: time.Second}, {n: 1000, took: 10 * time.Second}},
			n: 10000, limit: 8 * time.Minute},
		{name: "a falling duration is not extrapolated downwards", runs: []run{{n: 100, took: 2 * time.Minute}, {n: 1000, took: time.Minute}},
			n: 10000, limit: 90 * time.Second},
		{name: "exceeded stops the series", runs: []run{{n: 100, took: time.Second}, {n: 1000, exceeded: true}}, n: 5000, limit: time.Hour,
			wantSkip: "outlasted its budget at 1000 Services"},
		{name: "a skipped run's reason carries over", runs: []run{{n: 1000, took: time.Minute}, {n: 5000, notRun: "not run: 60 s at 1000 extrapolates"}},
			n: 10000, limit: time.Hour, wantSkip: "not run: 60 s at 1000 extrapolates"},
		{name: "a stop holds from its N on, not below", runs: []run{{n: 100, took: time.Second}, {n: 5000, exceeded: true}}, n: 1000, limit: time.Hour},
		{name: "a smaller N measured later does not bend the slope", runs: []run{{n: 100, took: time.Second}, {n: 1000, took: 10 * time.Second}, {n: 0, took: 0}},
			n: 10000, limit: 95 * time.Second, wantSkip: "at least 100.0 s at 10000"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := NewBudgets()
			b.Measured("other", 100, 10*time.Hour) // series do not mix
			for _, r := range tt.runs {
				switch {
				case r.exceeded:
					b.Exceeded("s", r.n)
				case r.notRun != "":
					b.NotRun("s", r.n, r.notRun)
				default:
					b.Measured("s", r.n, r.took)
				}
			}
			got := b.Skip("s", tt.n, tt.limit)
			switch {
			case tt.wantSkip == "" && got != "":
				t.Errorf("Skip = %q, want to run", got)
			case tt.wantSkip != "" && !strings.Contains(got, tt.wantSkip):
				t.Errorf("Skip = %q, want a reason containing %q", got, tt.wantSkip)
			}
		})
	}
}
