package proxier

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	v1 "k8s.io/api/core/v1"
)

// TestResolve covers the policy matrix: each expectation follows kube-proxy v1.35's
// iptables mode, pkg/proxy/iptables/proxier.go syncProxyRules (the function cited where
// not otherwise said), with the endpoint sets of topology.go CategorizeEndpoints.
func TestResolve(t *testing.T) {
	podCIDR := netip.MustParsePrefix("10.244.0.0/16")
	nodeIP := netip.MustParseAddr("192.0.2.1")
	local := Endpoint{IP: netip.MustParseAddr("10.244.1.2"), Port: 8080, Ready: true, Serving: true, NodeName: "node-a"}
	remote := Endpoint{IP: netip.MustParseAddr("10.244.2.2"), Port: 8080, Ready: true, Serving: true, NodeName: "node-b"}
	clusterIP := netip.MustParseAddr("10.96.0.10")
	lbIP := netip.MustParseAddr("198.51.100.9")

	reject, drop := Decision{Verdict: Reject}, Decision{Verdict: Drop}
	eps := func(e ...Endpoint) []Endpoint { return e }

	type want struct {
		internal, external, fromPods, fromNode Decision
	}
	tests := []struct {
		name      string
		cfg       ResolveConfig
		tweak     func(*ServicePort)
		endpoints []Endpoint
		want      want
	}{
		{
			// "has no endpoints": REJECT in filter KUBE-SERVICES and KUBE-EXTERNAL-SERVICES.
			name: "no endpoints: every class is rejected",
			cfg:  ResolveConfig{ClusterCIDR: podCIDR},
			want: want{reject, reject, reject, reject},
		},
		{
			// The internal chain masquerades IfNotLocal; the EXT chain masquerades all
			// ("masquerade traffic for %s external destinations").
			name:      "Cluster policies: any endpoint; off-cluster sources to the cluster IP and all external traffic masqueraded",
			cfg:       ResolveConfig{ClusterCIDR: podCIDR},
			endpoints: eps(local, remote),
			want: want{
				internal: forward(ClusterPolicy, eps(local, remote), MasqueradeOffCluster),
				external: forward(ClusterPolicy, eps(local, remote), MasqueradeAlways),
				fromPods: forward(ClusterPolicy, eps(local, remote), MasqueradeAlways),
				fromNode: forward(ClusterPolicy, eps(local, remote), MasqueradeAlways),
			},
		},
		{
			name:      "masqueradeAll masquerades every connection to the cluster IP",
			cfg:       ResolveConfig{MasqueradeAll: true, ClusterCIDR: podCIDR},
			endpoints: eps(local),
			want: want{
				internal: forward(ClusterPolicy, eps(local), MasqueradeAlways),
				external: forward(ClusterPolicy, eps(local), MasqueradeAlways),
				fromPods: forward(ClusterPolicy, eps(local), MasqueradeAlways),
				fromNode: forward(ClusterPolicy, eps(local), MasqueradeAlways),
			},
		},
		{
			// Without a local detector, no masquerade rule in the internal chain.
			name:      "no cluster CIDR: nothing masqueraded at the cluster IP",
			endpoints: eps(local),
			want: want{
				internal: forward(ClusterPolicy, eps(local), MasqueradeNone),
				external: forward(ClusterPolicy, eps(local), MasqueradeAlways),
				fromPods: forward(ClusterPolicy, eps(local), MasqueradeAlways),
				fromNode: forward(ClusterPolicy, eps(local), MasqueradeAlways),
			},
		},
		{
			name:      "internalTrafficPolicy Local with a local endpoint: only it at the cluster IP",
			cfg:       ResolveConfig{ClusterCIDR: podCIDR},
			tweak:     func(sp *ServicePort) { sp.InternalPolicyLocal = true },
			endpoints: eps(local, remote),
			want: want{
				internal: forward(LocalPolicy, eps(local), MasqueradeOffCluster),
				external: forward(ClusterPolicy, eps(local, remote), MasqueradeAlways),
				fromPods: forward(ClusterPolicy, eps(local, remote), MasqueradeAlways),
				fromNode: forward(ClusterPolicy, eps(local, remote), MasqueradeAlways),
			},
		},
		{
			// hasInternalEndpoints false: "has no local endpoints", DROP.
			name:      "internalTrafficPolicy Local without a local endpoint: the cluster IP drops",
			cfg:       ResolveConfig{ClusterCIDR: podCIDR},
			tweak:     func(sp *ServicePort) { sp.InternalPolicyLocal = true },
			endpoints: eps(remote),
			want: want{
				internal: drop,
				external: forward(ClusterPolicy, eps(remote), MasqueradeAlways),
				fromPods: forward(ClusterPolicy, eps(remote), MasqueradeAlways),
				fromNode: forward(ClusterPolicy, eps(remote), MasqueradeAlways),
			},
		},
		{
			// The EXT chain: "pod traffic for %s external destinations" to the cluster
			// policy chain, "masquerade LOCAL traffic" and "route LOCAL traffic" to it,
			// then the local policy chain.
			name:      "externalTrafficPolicy Local: off-node clients keep their address at a local endpoint; pods and the node short-circuit",
			cfg:       ResolveConfig{ClusterCIDR: podCIDR},
			tweak:     func(sp *ServicePort) { sp.ExternalPolicyLocal = true },
			endpoints: eps(local, remote),
			want: want{
				internal: forward(ClusterPolicy, eps(local, remote), MasqueradeOffCluster),
				external: forward(LocalPolicy, eps(local), MasqueradeNone),
				fromPods: forward(ClusterPolicy, eps(local, remote), MasqueradeNone),
				fromNode: forward(ClusterPolicy, eps(local, remote), MasqueradeAlways),
			},
		},
		{
			// hasExternalEndpoints false: DROP in KUBE-EXTERNAL-SERVICES for what the
			// EXT chain did not short-circuit.
			name:      "externalTrafficPolicy Local without a local endpoint: off-node clients dropped; pods and the node short-circuit",
			cfg:       ResolveConfig{ClusterCIDR: podCIDR},
			tweak:     func(sp *ServicePort) { sp.ExternalPolicyLocal = true },
			endpoints: eps(remote),
			want: want{
				internal: forward(ClusterPolicy, eps(remote), MasqueradeOffCluster),
				external: drop,
				fromPods: forward(ClusterPolicy, eps(remote), MasqueradeNone),
				fromNode: forward(ClusterPolicy, eps(remote), MasqueradeAlways),
			},
		},
		{
			// The "pod traffic" rule needs localDetector.IsImplemented().
			name:      "externalTrafficPolicy Local without a cluster CIDR: pods are not told apart from off-node clients",
			tweak:     func(sp *ServicePort) { sp.ExternalPolicyLocal = true },
			endpoints: eps(remote),
			want: want{
				internal: forward(ClusterPolicy, eps(remote), MasqueradeNone),
				external: drop,
				fromPods: drop,
				fromNode: forward(ClusterPolicy, eps(remote), MasqueradeAlways),
			},
		},
		{
			// UsesClusterEndpoints holds for every externally accessible port
			// (serviceport.go), so the short-circuit has Cluster endpoints to use.
			name:      "both policies Local, every endpoint elsewhere: cluster IP and off-node clients dropped; pods and the node short-circuit",
			cfg:       ResolveConfig{ClusterCIDR: podCIDR},
			tweak:     func(sp *ServicePort) { sp.InternalPolicyLocal, sp.ExternalPolicyLocal = true, true },
			endpoints: eps(remote),
			want: want{
				internal: drop,
				external: drop,
				fromPods: forward(ClusterPolicy, eps(remote), MasqueradeNone),
				fromNode: forward(ClusterPolicy, eps(remote), MasqueradeAlways),
			},
		},
		{
			name:      "both policies Local with a local endpoint",
			cfg:       ResolveConfig{ClusterCIDR: podCIDR},
			tweak:     func(sp *ServicePort) { sp.InternalPolicyLocal, sp.ExternalPolicyLocal = true, true },
			endpoints: eps(local, remote),
			want: want{
				internal: forward(LocalPolicy, eps(local), MasqueradeOffCluster),
				external: forward(LocalPolicy, eps(local), MasqueradeNone),
				fromPods: forward(ClusterPolicy, eps(local, remote), MasqueradeNone),
				fromNode: forward(ClusterPolicy, eps(local, remote), MasqueradeAlways),
			},
		},
	}
	opts := cmp.Options{netipComparers, cmpopts.EquateEmpty(), cmpopts.SortSlices(func(a, b Endpoint) bool { return a.String() < b.String() })}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sp := &ServicePort{Name: spn("lb", "http", v1.ProtocolTCP), ClusterIP: clusterIP, Port: 80, Protocol: v1.ProtocolTCP,
				NodePort: 30080, LoadBalancerIPs: []netip.Addr{lbIP}}
			if tc.tweak != nil {
				tc.tweak(sp)
			}
			state := &State{NodeName: "node-a", Endpoints: map[ServicePortName][]Endpoint{sp.Name: tc.endpoints}}
			r := Resolve(&tc.cfg, state, sp, []netip.Addr{nodeIP})
			got := want{internal: r.Internal, external: r.External, fromPods: r.ExternalFromPods, fromNode: r.ExternalFromNode}
			if diff := cmp.Diff(tc.want, got, cmp.AllowUnexported(want{}), opts); diff != "" {
				t.Errorf("Resolve() mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

// TestResolveEntryPoints checks the destinations of a port and what the node must own or
// filter at each.
func TestResolveEntryPoints(t *testing.T) {
	nodeIP := netip.MustParseAddr("192.0.2.1")
	clusterIP, extIP, lbIP := netip.MustParseAddr("10.96.0.10"), netip.MustParseAddr("203.0.113.7"), netip.MustParseAddr("198.51.100.9")
	ep := Endpoint{IP: netip.MustParseAddr("10.244.2.2"), Port: 8080, Ready: true, Serving: true, NodeName: "node-b"}
	ranges := func(s ...string) []netip.Prefix {
		var out []netip.Prefix
		for _, r := range s {
			out = append(out, netip.MustParsePrefix(r))
		}
		return out
	}
	tests := []struct {
		name      string
		tweak     func(*ServicePort)
		endpoints []Endpoint
		want      []EntryPoint
	}{
		{
			name: "cluster IP, external IPs, load-balancer IPs, then the NodePort",
			tweak: func(sp *ServicePort) {
				sp.ExternalIPs, sp.LoadBalancerIPs, sp.NodePort = []netip.Addr{extIP}, []netip.Addr{lbIP}, 30080
			},
			endpoints: []Endpoint{ep},
			want: []EntryPoint{
				{Kind: ClusterIPEntry, Addr: clusterIP, Port: 80},
				{Kind: ExternalIPEntry, Addr: extIP, Port: 80},
				{Kind: LoadBalancerIPEntry, Addr: lbIP, Port: 80},
				{Kind: NodePortEntry, Port: 30080},
			},
		},
		{
			// kube-proxy's IPVS mode never binds a node address (the defect).
			name:      "an external IP that is a node address is marked so",
			tweak:     func(sp *ServicePort) { sp.ExternalIPs = []netip.Addr{nodeIP} },
			endpoints: []Endpoint{ep},
			want: []EntryPoint{
				{Kind: ClusterIPEntry, Addr: clusterIP, Port: 80},
				{Kind: ExternalIPEntry, Addr: nodeIP, Port: 80, NodeAddress: true},
			},
		},
		{
			// usesFWChain, and allowFromNode when a range holds the node's IP.
			name: "source ranges that hold the node's IP also admit the load-balancer IPs as sources",
			tweak: func(sp *ServicePort) {
				sp.LoadBalancerIPs, sp.LoadBalancerSourceRanges = []netip.Addr{lbIP}, ranges("192.0.2.0/24")
			},
			endpoints: []Endpoint{ep},
			want: []EntryPoint{
				{Kind: ClusterIPEntry, Addr: clusterIP, Port: 80},
				{Kind: LoadBalancerIPEntry, Addr: lbIP, Port: 80, SourceRanges: ranges("192.0.2.0/24"), AllowLoadBalancerSources: true},
			},
		},
		{
			// allowFromNode looks at the node's primary IP only, not at every address
			// its interfaces hold.
			name: "source ranges without the node's IP",
			tweak: func(sp *ServicePort) {
				sp.LoadBalancerIPs, sp.LoadBalancerSourceRanges = []netip.Addr{lbIP}, ranges("198.18.0.0/16")
			},
			endpoints: []Endpoint{ep},
			want: []EntryPoint{
				{Kind: ClusterIPEntry, Addr: clusterIP, Port: 80},
				{Kind: LoadBalancerIPEntry, Addr: lbIP, Port: 80, SourceRanges: ranges("198.18.0.0/16")},
			},
		},
		{
			// The ranges stay without endpoints: kube-proxy's IPVS mode filters by them
			// then too (its iptables mode rejects everyone first, usesFWChain).
			name: "no endpoints: the source ranges stay",
			tweak: func(sp *ServicePort) {
				sp.LoadBalancerIPs, sp.LoadBalancerSourceRanges = []netip.Addr{lbIP}, ranges("198.18.0.0/16")
			},
			want: []EntryPoint{
				{Kind: ClusterIPEntry, Addr: clusterIP, Port: 80},
				{Kind: LoadBalancerIPEntry, Addr: lbIP, Port: 80, SourceRanges: ranges("198.18.0.0/16")},
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sp := &ServicePort{Name: spn("lb", "http", v1.ProtocolTCP), ClusterIP: clusterIP, Port: 80, Protocol: v1.ProtocolTCP}
			tc.tweak(sp)
			state := &State{NodeName: "node-a", NodeIP: nodeIP, Endpoints: map[ServicePortName][]Endpoint{sp.Name: tc.endpoints}}
			got := Resolve(&ResolveConfig{}, state, sp, []netip.Addr{nodeIP, netip.MustParseAddr("198.18.0.1")}).EntryPoints
			if diff := cmp.Diff(tc.want, got, netipComparers, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("entry points (-want +got):\n%s", diff)
			}
		})
	}
}
