package benchmarks

import (
	"net/netip"
	"testing"
)

// TestWorkloadEndpointsDistinct checks that no generated Service lists an address twice,
// at first and after many rolling changes: with seed 1, Service 8502 once drew the same
// address twice, so the harness expected ten real servers where IPVS (rightly) held nine.
func TestWorkloadEndpointsDistinct(t *testing.T) {
	w := &Workload{Endpoints: 10, Seed: 1}
	distinct := func(s *Spec) bool {
		seen := map[netip.Addr]bool{}
		for _, a := range s.Endpoints {
			if seen[a] {
				return false
			}
			seen[a] = true
		}
		return len(s.Endpoints) == w.Endpoints
	}
	for i := range 20000 {
		if s := w.Spec(i); !distinct(s) {
			t.Fatalf("Service %d has endpoints %v: want %d distinct addresses", i, s.Endpoints, w.Endpoints)
		}
	}
	s := w.Spec(8502)
	for range 10000 {
		w.ChangeEndpoint(s)
		if !distinct(s) {
			t.Fatalf("after a change, Service 8502 has endpoints %v: want %d distinct addresses", s.Endpoints, w.Endpoints)
		}
	}
}
