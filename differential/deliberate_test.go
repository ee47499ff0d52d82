package differential

import (
	"testing"

	"github.com/switchyard/switchyard/benchmarks"
	"github.com/switchyard/switchyard/internal/lab"
)

// TestExplain: a divergence is deliberate only in its mode, for its scenarios, entry
// points and senders, and only when switchyard does what the contract says.
func TestExplain(t *testing.T) {
	answered := Outcome{Endpoints: []string{"pod-4"}, Clients: []string{"pod-4 saw 10.252.0.2"}}
	timeout := Outcome{Failures: []string{"timeout"}}
	refused := Outcome{Failures: []string{"refused"}}
	masq := Outcome{Endpoints: []string{"pod-4", "pod-5"}, Clients: []string{"pod-4 saw " + lab.PodGatewayIP, "pod-5 saw " + lab.PodGatewayIP}}
	etpNoLocal := []string{TraitLoadBalancer, TraitExternalLocal, TraitExternalLocalNoLocalEndpoints}
	itpNoLocal := []string{TraitClusterIP, TraitInternalLocal, TraitInternalLocalNoLocalEndpoints}
	tests := []struct {
		name       string
		mode       string
		traits     []string
		entry      string
		from       string
		switchyard Outcome
		want       bool
	}{
		{"Local policy without a local endpoint, off-node client dropped", benchmarks.ModeIPVS, etpNoLocal, EntryNodePort, FromClient, timeout, true},
		{"the same in iptables mode is a bug", benchmarks.ModeIPTablesNft, etpNoLocal, EntryNodePort, FromClient, timeout, false},
		{"refused where the contract says dropped", benchmarks.ModeIPVS, etpNoLocal, EntryLoadBalancer, FromClient, refused, false},
		{"answered where the contract says dropped", benchmarks.ModeIPVS, etpNoLocal, EntryLoadBalancer, FromClient, answered, false},
		{"a pod is not an off-node client", benchmarks.ModeIPVS, etpNoLocal, EntryLoadBalancer, FromPod, timeout, false},
		{"a scenario with a local endpoint", benchmarks.ModeIPVS, []string{TraitLoadBalancer, TraitExternalLocal}, EntryNodePort, FromClient, timeout, false},
		{"internalTrafficPolicy Local without a local endpoint, pod dropped", benchmarks.ModeIPVS, itpNoLocal, EntryClusterIP, FromPod, timeout, true},
		{"the same, the node refused", benchmarks.ModeIPVS, itpNoLocal, EntryClusterIP, FromNode, refused, true},
		{"the same, the node dropped", benchmarks.ModeIPVS, itpNoLocal, EntryClusterIP, FromNode, timeout, false},
		{"mixed failures", benchmarks.ModeIPVS, itpNoLocal, EntryClusterIP, FromPod, Outcome{Failures: []string{"refused", "timeout"}}, false},
		{"the node to a Local load-balancer IP without a local endpoint, masqueraded", benchmarks.ModeIPVS, etpNoLocal, EntryLoadBalancer, FromNode, masq, true},
		{"the same, the node's address kept", benchmarks.ModeIPVS, etpNoLocal, EntryLoadBalancer, FromNode, answered, false},
		{"the same at a NodePort, where the node's address is kept", benchmarks.ModeIPVS, etpNoLocal, EntryNodePort, FromNode, masq, false},
		{"masqueraded once, refused once", benchmarks.ModeIPVS, etpNoLocal, EntryExternalIP, FromNode,
			Outcome{Endpoints: masq.Endpoints, Clients: masq.Clients, Failures: []string{"refused"}}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := []Divergence{{
				Probe:    Probe{Scenario: "s1-001", Entry: tc.entry, From: tc.from},
				Outcomes: map[string]Outcome{benchmarks.ProxySwitchyard: tc.switchyard, benchmarks.ProxyKubeProxy: answered},
			}}
			explain(tc.mode, map[string][]string{"s1-001": tc.traits}, d)
			if got := d[0].Deliberate != ""; got != tc.want {
				t.Errorf("deliberate = %q, want explained %v", d[0].Deliberate, tc.want)
			}
			m := ModeReport{Divergences: d}
			if want := map[bool]int{true: 0, false: 1}[tc.want]; m.Unexplained() != want {
				t.Errorf("Unexplained() = %d, want %d", m.Unexplained(), want)
			}
		})
	}
}
