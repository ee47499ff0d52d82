package iptables_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"

	"github.com/switchyard/switchyard/iptables"
	"github.com/switchyard/switchyard/iptables/iptablestest"
	"github.com/switchyard/switchyard/proxier"
)

// refusedState is a state of ClusterIP Services on port 80, each named after the last
// byte of its cluster IP 10.96.0.N, with endpoints IP:8080 on other nodes.
type refusedState struct{ *proxier.State }

func newRefusedState() refusedState {
	return refusedState{&proxier.State{NodeName: "node-a", Services: map[proxier.ServicePortName]*proxier.ServicePort{}, Endpoints: map[proxier.ServicePortName][]proxier.Endpoint{}}}
}

func refusedName(n int) proxier.ServicePortName {
	return proxier.ServicePortName{NamespacedName: types.NamespacedName{Namespace: "default", Name: fmt.Sprintf("svc-%d", n)}, Protocol: v1.ProtocolTCP}
}

// set creates or changes Service n to have these endpoints (none: it rejects).
func (s refusedState) set(n int, endpoints ...string) proxier.ServicePortName {
	name := refusedName(n)
	s.Services[name] = &proxier.ServicePort{Name: name, ClusterIP: netip.AddrFrom4([4]byte{10, 96, 0, byte(n)}), Port: 80, Protocol: v1.ProtocolTCP}
	delete(s.Endpoints, name)
	for _, ip := range endpoints {
		s.Endpoints[name] = append(s.Endpoints[name], proxier.Endpoint{IP: netip.MustParseAddr(ip), Port: 8080, Ready: true, Serving: true, NodeName: "node-b"})
	}
	return name
}

// reached says where a new connection from off the node to Service n's cluster IP goes:
// its endpoints, REJECT, or UNTOUCHED when no rule of ours handles it.
func reached(t *testing.T, ipt *iptablestest.Fake, n int) string {
	t.Helper()
	results, err := ipt.Trace(iptablestest.Packet{Protocol: "tcp", Src: netip.MustParseAddr("198.51.100.7"),
		Dst: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 96, 0, byte(n)}), 80), Local: []netip.Addr{netip.MustParseAddr("192.0.2.1")}}, nil)
	if err != nil {
		t.Fatalf("tracing to svc-%d: %v", n, err)
	}
	var out []string
	for _, r := range results {
		switch {
		case r.DNAT:
			out = append(out, r.Dst.String())
		case r.Verdict == "ACCEPT":
			out = append(out, "UNTOUCHED")
		default:
			out = append(out, r.Verdict)
		}
	}
	slices.Sort(out)
	return strings.Join(slices.Compact(out), ",")
}

// refuseRulesOf refuses every rule of Service n that matches all the fragments, as the
// kernel refuses a rule it lacks a match or target for.
func refuseRulesOf(n int, fragments ...string) func(chain string, rule iptables.SavedRule) bool {
	return func(_ string, rule iptables.SavedRule) bool {
		if !strings.Contains(rule.Comment(), refusedName(n).String()) {
			return false
		}
		for _, f := range fragments {
			if !strings.Contains(string(rule), f) {
				return false
			}
		}
		return true
	}
}

// TestRefusedServicePort: when the kernel refuses one ServicePort's rules, the backend
// programs every other port, keeps what the refused one had, returns it in a
// proxier.PortErrors, and programs it once the kernel takes it; a line that is no port's
// own, or a deletion that fails, still fails the whole sync.
func TestRefusedServicePort(t *testing.T) {
	type step struct {
		name   string
		mutate func(s refusedState) // before the sync
		// tamper changes the kernel behind the backend's back before the sync.
		tamper func(ipt *iptablestest.Fake) error
		refuse func(chain string, rule iptables.SavedRule) bool
		full   bool
		// changed are the Services a partial sync is told about.
		changed []int
		// wantRefused are the Services the sync returns in a PortErrors; wantWhole is set
		// when it must fail as a whole instead.
		wantRefused []int
		wantWhole   bool
		// want is where each Service's cluster IP leads after the sync.
		want map[int]string
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{
			name: "full sync: a refused new port gets nothing, the others are programmed",
			steps: []step{{
				mutate:      func(s refusedState) { s.set(1, "10.244.1.1"); s.set(2, "10.244.2.1"); s.set(3) },
				refuse:      refuseRulesOf(2),
				full:        true,
				wantRefused: []int{2},
				want:        map[int]string{1: "10.244.1.1:8080", 2: "UNTOUCHED", 3: "REJECT"},
			}},
		},
		{
			name: "full sync: a refused port keeps what was written for it, and gets nothing if that is refused too",
			steps: []step{
				{
					mutate: func(s refusedState) { s.set(1, "10.244.1.1"); s.set(2, "10.244.2.1") },
					full:   true,
					want:   map[int]string{1: "10.244.1.1:8080", 2: "10.244.2.1:8080"},
				},
				{
					name:        "its new endpoint refused",
					mutate:      func(s refusedState) { s.set(2, "10.244.2.2") },
					refuse:      refuseRulesOf(2, "10.244.2.2"),
					full:        true,
					wantRefused: []int{2},
					want:        map[int]string{1: "10.244.1.1:8080", 2: "10.244.2.1:8080"},
				},
				{
					name:        "all of its rules refused",
					refuse:      refuseRulesOf(2),
					full:        true,
					wantRefused: []int{2},
					want:        map[int]string{1: "10.244.1.1:8080", 2: "UNTOUCHED"},
				},
				{
					name:    "the kernel takes it again: the retry programs it",
					changed: []int{2},
					want:    map[int]string{1: "10.244.1.1:8080", 2: "10.244.2.2:8080"},
				},
			},
		},
		{
			name: "partial sync: a new Service is programmed while a changed one is refused and keeps its rules",
			steps: []step{
				{
					mutate: func(s refusedState) { s.set(1, "10.244.1.1"); s.set(2, "10.244.2.1") },
					full:   true,
					want:   map[int]string{1: "10.244.1.1:8080", 2: "10.244.2.1:8080"},
				},
				{
					mutate:      func(s refusedState) { s.set(2, "10.244.2.2"); s.set(3, "10.244.3.1") },
					refuse:      refuseRulesOf(2),
					changed:     []int{2, 3},
					wantRefused: []int{2},
					want:        map[int]string{1: "10.244.1.1:8080", 2: "10.244.2.1:8080", 3: "10.244.3.1:8080"},
				},
				{
					name:        "still refused when retried with another change",
					mutate:      func(s refusedState) { s.set(4) },
					refuse:      refuseRulesOf(2),
					changed:     []int{2, 4},
					wantRefused: []int{2},
					want:        map[int]string{2: "10.244.2.1:8080", 4: "REJECT"},
				},
				{
					changed: []int{2},
					want:    map[int]string{1: "10.244.1.1:8080", 2: "10.244.2.2:8080", 3: "10.244.3.1:8080", 4: "REJECT"},
				},
			},
		},
		{
			// The filter section, which removes the REJECT, commits before the nat one
			// fails: the retry must start from that, not from what was there before.
			name: "partial sync: refused in nat after its filter change took effect",
			steps: []step{
				{
					mutate: func(s refusedState) { s.set(1, "10.244.1.1"); s.set(2) },
					full:   true,
					want:   map[int]string{1: "10.244.1.1:8080", 2: "REJECT"},
				},
				{
					mutate:      func(s refusedState) { s.set(2, "10.244.2.1") },
					refuse:      refuseRulesOf(2, "-j SWYD-SVC-"),
					changed:     []int{2},
					wantRefused: []int{2},
					want:        map[int]string{1: "10.244.1.1:8080", 2: "UNTOUCHED"},
				},
				{
					changed: []int{2},
					want:    map[int]string{1: "10.244.1.1:8080", 2: "10.244.2.1:8080"},
				},
			},
		},
		{
			name: "a refused rule that is no port's fails the whole sync",
			steps: []step{{
				mutate:    func(s refusedState) { s.set(1, "10.244.1.1") },
				refuse:    func(chain string, _ iptables.SavedRule) bool { return chain == iptables.PostroutingChain },
				full:      true,
				wantWhole: true,
			}},
		},
		{
			name: "more refused ports than the bound fail the whole sync",
			steps: []step{{
				mutate: func(s refusedState) {
					for n := 1; n <= 20; n++ {
						s.set(n, "10.244.1.1")
					}
				},
				refuse:    func(_ string, rule iptables.SavedRule) bool { return strings.Contains(string(rule), "DNAT") },
				full:      true,
				wantWhole: true,
			}},
		},
		{
			// The kernel no longer holds what was written: only a full sync repairs that.
			name: "a deletion that fails is no port's fault",
			steps: []step{
				{
					mutate: func(s refusedState) { s.set(1, "10.244.1.1") },
					full:   true,
					want:   map[int]string{1: "10.244.1.1:8080"},
				},
				{
					name:   "SWYD-SERVICES flushed behind our back",
					mutate: func(s refusedState) { delete(s.Services, refusedName(1)) },
					tamper: func(ipt *iptablestest.Fake) error {
						return ipt.Restore(context.Background(), []byte("*nat\n:SWYD-SERVICES - [0:0]\nCOMMIT\n"))
					},
					changed:   []int{1},
					wantWhole: true,
				},
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			ipt := iptablestest.NewFake()
			b := iptables.NewBackend(ipt, iptables.RenderConfig{MasqueradeMark: "0x4000", NodeName: "node-a"}, prometheus.NewRegistry(), klog.Background())
			state := newRefusedState()
			for i, step := range tc.steps {
				if step.mutate != nil {
					step.mutate(state)
				}
				if step.tamper != nil {
					if err := step.tamper(ipt); err != nil {
						t.Fatal(err)
					}
				}
				ipt.RejectRules(step.refuse)
				changes := proxier.Changes{Full: step.full, ServicePorts: map[proxier.ServicePortName]struct{}{}}
				for _, n := range step.changed {
					changes.ServicePorts[refusedName(n)] = struct{}{}
				}

				err := b.Sync(ctx, state.State, changes)

				var refused proxier.PortErrors
				switch {
				case errors.As(err, &refused):
					if step.wantWhole {
						t.Fatalf("step %d %s: refused only %v; want the whole sync to fail", i, step.name, err)
					}
				case err != nil && !step.wantWhole:
					t.Fatalf("step %d %s: %v", i, step.name, err)
				case err == nil && step.wantWhole:
					t.Fatalf("step %d %s: succeeded; want the whole sync to fail", i, step.name)
				}
				var want []string
				for _, n := range step.wantRefused {
					want = append(want, refusedName(n).String())
				}
				var got []string
				for n, reason := range refused {
					got = append(got, n.String())
					if !strings.Contains(reason.Error(), "iptables-restore refused") || !strings.Contains(reason.Error(), n.String()) {
						t.Errorf("step %d %s: %s refused for %q; want the refused rule quoted", i, step.name, n, reason)
					}
				}
				slices.Sort(got)
				if diff := cmp.Diff(want, got); diff != "" {
					t.Errorf("step %d %s: refused ports (-want +got):\n%s", i, step.name, diff)
				}
				for _, n := range slices.Sorted(maps.Keys(step.want)) {
					if got := reached(t, ipt, n); got != step.want[n] {
						t.Errorf("step %d %s: svc-%d's cluster IP leads to %s, want %s", i, step.name, n, got, step.want[n])
					}
				}
			}
		})
	}
}

// TestRefusedLine reads the line each iptables-restore flavor says it failed at, from
// what each really prints.
func TestRefusedLine(t *testing.T) {
	input := strings.Join([]string{
		"*filter",                  // 1
		":SWYD-SERVICES - [0:0]",   // 2
		"-A SWYD-SERVICES -j DROP", // 3
		"COMMIT",                   // 4
		"*nat",                     // 5
		":SWYD-SVC-A - [0:0]",      // 6
		"-A SWYD-SVC-A -j RETURN",  // 7
		"-A SWYD-SVC-A -m comment --comment x -j SWYD-MISSING", // 8
		"COMMIT", // 9
		"",
	}, "\n")
	tests := []struct {
		name   string
		stderr string
		want   iptables.RefusedLine
		wantOK bool
	}{
		{
			name:   "legacy, a rule it cannot load",
			stderr: "iptables-restore v1.8.9 (legacy): Couldn't load target `SWYD-MISSING':No such file or directory\n\nError occurred at line: 8\nTry `iptables-restore -h' or 'iptables-restore --help' for more information.",
			want:   iptables.RefusedLine{Text: "-A SWYD-SVC-A -m comment --comment x -j SWYD-MISSING", Table: iptables.TableNAT, Committed: []iptables.Table{iptables.TableFilter}},
			wantOK: true,
		},
		{
			name:   "nft, a rule the kernel refused",
			stderr: "iptables-nft-restore v1.8.9 (nf_tables): \nline 3: RULE_APPEND failed (Invalid argument): rule in chain SWYD-SERVICES",
			want:   iptables.RefusedLine{Text: "-A SWYD-SERVICES -j DROP", Table: iptables.TableFilter},
			wantOK: true,
		},
		{
			name:   "nft blames a jump to a missing chain on the COMMIT: the jump it is",
			stderr: "iptables-nft-restore v1.8.9 (nf_tables): Chain 'SWYD-MISSING' does not exist\nError occurred at line: 9\nTry `iptables-nft-restore -h' or 'iptables-nft-restore --help' for more information.",
			want:   iptables.RefusedLine{Text: "-A SWYD-SVC-A -m comment --comment x -j SWYD-MISSING", Table: iptables.TableNAT, Committed: []iptables.Table{iptables.TableFilter}},
			wantOK: true,
		},
		{
			name:   "legacy blames what the kernel refuses on the COMMIT",
			stderr: "iptables-restore: line 9 failed",
			want:   iptables.RefusedLine{Text: "COMMIT", Table: iptables.TableNAT, Committed: []iptables.Table{iptables.TableFilter}},
			wantOK: true,
		},
		{
			name:   "no line named",
			stderr: "Another app is currently holding the xtables lock.",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := &iptables.RestoreError{Err: errors.New("exit status 1"), Stderr: tc.stderr, Input: []byte(input)}
			got, ok := e.RefusedLine()
			if ok != tc.wantOK {
				t.Fatalf("RefusedLine() ok = %v, want %v", ok, tc.wantOK)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("RefusedLine() (-want +got):\n%s", diff)
			}
		})
	}
}
