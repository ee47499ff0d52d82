package benchmarks

import (
	"cmp"
	"maps"
	"slices"
	"strings"
	"testing"
)

func TestResume(t *testing.T) {
	const machine = "test CPU, 2 CPUs"
	workload := Config{Endpoints: 10, Repeats: 3, Changes: 100, Seed: 1}
	earlier := func(ns ...int) *Results {
		r := &Results{Command: "bench -out x", Machine: machine, Config: workload}
		for _, n := range ns {
			r.Backends = append(r.Backends, BackendRun{Mode: ModeIPVS, Kernel: "lab", Services: n})
			r.Proxies = append(r.Proxies, ProxyRun{Proxy: ProxySwitchyard, Mode: ModeIPVS, Kernel: "lab", Services: n})
		}
		return r
	}
	tests := []struct {
		name        string
		prev        *Results
		machine     string
		seed        int64
		wantDone    []int
		wantMachine string
		wantErr     string
	}{
		{name: "smaller N adopted", prev: earlier(100, 1000), wantDone: []int{100, 1000}},
		{name: "nothing measured yet", prev: earlier(), wantDone: nil},
		{name: "every N measured", prev: earlier(100, 1000, 5000, 10000), wantDone: []int{100, 1000, 5000, 10000}},
		{name: "another machine of the kind", prev: earlier(100, 1000), machine: "other CPU", wantDone: []int{100, 1000},
			wantMachine: machine + " (N = 100, 1000); other CPU (the larger N)"},
		{name: "other seed", prev: earlier(100), seed: 2, wantErr: "workload"},
		{name: "a gap below an adopted N", prev: earlier(100, 5000), wantErr: "holds 5000 Services but not 1000"},
		{name: "resumed again on the machine that resumed it", prev: func() *Results {
			r := earlier(100, 1000)
			r.Machine = "first CPU (N = 100); " + machine + " (the larger N)"
			return r
		}(), wantDone: []int{100, 1000}, wantMachine: "first CPU (N = 100); " + machine + " (the larger N)"},
		{name: "an N this run does not list", prev: earlier(100, 2000), wantErr: "holds 2000 Services"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := workload
			cfg.Services = []int{100, 1000, 5000, 10000}
			if tt.seed != 0 {
				cfg.Seed = tt.seed
			}
			r := &Results{Command: "bench -resume", Machine: machine, Config: cfg}
			if tt.machine != "" {
				r.Machine = tt.machine
			}
			done, err := r.Resume(tt.prev)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Resume: error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Resume: %v", err)
			}
			got := slices.Sorted(maps.Keys(done))
			if !slices.Equal(got, tt.wantDone) {
				t.Errorf("done = %v, want %v", got, tt.wantDone)
			}
			if len(r.Backends) != len(tt.prev.Backends) || len(r.Proxies) != len(tt.prev.Proxies) {
				t.Errorf("adopted %d backend and %d proxy runs, want %d and %d", len(r.Backends), len(r.Proxies), len(tt.prev.Backends), len(tt.prev.Proxies))
			}
			if want := cmp.Or(tt.wantMachine, machine); r.Machine != want {
				t.Errorf("Machine = %q, want %q", r.Machine, want)
			}
			if want := "bench -out x; resumed as: bench -resume"; r.Command != want {
				t.Errorf("Command = %q, want %q", r.Command, want)
			}
		})
	}
}
