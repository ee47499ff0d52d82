package main

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/switchyard/switchyard/benchmarks"
)

func TestParseServiceCounts(t *testing.T) {
	tests := []struct {
		list    string
		want    []int
		wantErr string
	}{
		{list: "0,1000,10000", want: []int{0, 1000, 10000}},
		{list: "0", want: []int{0}},
		{list: "0,-1", wantErr: `invalid value "-1"`},
		{list: "100,100", wantErr: "numbers must increase"},
		{list: "ten", wantErr: `invalid value "ten"`},
	}
	for _, tt := range tests {
		got, err := parseServiceCounts(tt.list)
		switch {
		case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
			t.Errorf("parseServiceCounts(%q) error = %v, want one containing %q", tt.list, err, tt.wantErr)
		case tt.wantErr == "" && (err != nil || !slices.Equal(got, tt.want)):
			t.Errorf("parseServiceCounts(%q) = %v, %v; want %v", tt.list, got, err, tt.want)
		}
	}
}

// TestDataplanePlan: a stop in the rule-refresh run holds from its N on, and says where
// it comes from; a first sync that outlasts the limit in this run stops larger N.
func TestDataplanePlan(t *testing.T) {
	limits := &workloadFlags{startupTimeout: 8 * time.Minute}
	p := &plan{budgets: benchmarks.NewBudgets(), w: limits, priorFile: "results.json"}
	seeded := &plan{budgets: benchmarks.NewBudgets(), w: limits}
	p.prior = seeded.budgets
	seeded.recordProxies([]benchmarks.ProxyRun{
		{Proxy: benchmarks.ProxySwitchyard, Mode: benchmarks.ModeIPTablesNft, Kernel: "host", Services: 1000, StartupSeconds: 10},
		{Proxy: benchmarks.ProxySwitchyard, Mode: benchmarks.ModeIPTablesNft, Kernel: "host", Services: 5000, Incomplete: "first sync not complete after 8m0s"},
	})
	both := []string{benchmarks.ProxySwitchyard, benchmarks.ProxyKubeProxy}
	if toRun, skipped := p.dataplaneProxies("host", benchmarks.ModeIPTablesNft, 1000, both); len(toRun) != 2 || len(skipped) != 0 {
		t.Errorf("at 1000: run %v, skipped %+v; want both run", toRun, skipped)
	}
	toRun, skipped := p.dataplaneProxies("host", benchmarks.ModeIPTablesNft, 10000, both)
	if !slices.Equal(toRun, []string{benchmarks.ProxyKubeProxy}) || len(skipped) != 1 ||
		!strings.Contains(skipped[0].Incomplete, "outlasted its budget at 5000 Services (in the rule-refresh run of results.json)") {
		t.Errorf("at 10000: run %v, skipped %+v; want switchyard skipped by the rule-refresh stop", toRun, skipped)
	}
	p.recordDataplane([]benchmarks.DataplaneRun{{Proxy: benchmarks.ProxyKubeProxy, Mode: benchmarks.ModeIPVS, Kernel: "lab", Services: 1000,
		Incomplete: "first sync not complete after 8m0s"}})
	if toRun, skipped := p.dataplaneProxies("lab", benchmarks.ModeIPVS, 10000, both); !slices.Equal(toRun, []string{benchmarks.ProxySwitchyard}) ||
		len(skipped) != 1 || !strings.Contains(skipped[0].Incomplete, "outlasted its budget at 1000 Services") {
		t.Errorf("lab at 10000: run %v, skipped %+v; want kube-proxy skipped", toRun, skipped)
	}
}
