package ipvs

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/switchyard/switchyard/proxier"
)

// TestPlan checks how one Service port becomes virtual servers, real servers and set
// members under each traffic policy. It is pure: the kernel side is kernel_test.go's.
func TestPlan(t *testing.T) {
	name := proxier.ServicePortName{NamespacedName: types.NamespacedName{Namespace: "default", Name: "lb"}, Port: "http", Protocol: v1.ProtocolTCP}
	local := proxier.Endpoint{IP: netip.MustParseAddr("10.244.1.2"), Port: 8080, Ready: true, Serving: true, NodeName: "node-a"}
	remote := proxier.Endpoint{IP: netip.MustParseAddr("10.244.2.2"), Port: 8080, Ready: true, Serving: true, NodeName: "node-b"}
	tests := []struct {
		name          string
		internalLocal bool
		externalLocal bool
		sourceRange   string
		endpoints     []proxier.Endpoint
		// wantServers maps "address:port" to its real servers.
		wantServers map[string][]string
		// wantSets lists the members of the sets that depend on the policies.
		wantSets []string
	}{
		{
			name:      "Cluster policies",
			endpoints: []proxier.Endpoint{local, remote},
			wantServers: map[string][]string{
				"10.96.0.10:80": {"10.244.1.2:8080", "10.244.2.2:8080"}, "203.0.113.7:80": {"10.244.1.2:8080", "10.244.2.2:8080"},
				"192.0.2.1:30080": {"10.244.1.2:8080", "10.244.2.2:8080"}, "192.0.2.2:30080": {"10.244.1.2:8080", "10.244.2.2:8080"},
			},
			wantSets: []string{"SWYD-EXTERNAL 192.0.2.1 30080", "SWYD-EXTERNAL 192.0.2.2 30080", "SWYD-EXTERNAL 203.0.113.7 80"},
		},
		{
			name:          "externalTrafficPolicy Local: external servers get local endpoints only, unmasqueraded",
			externalLocal: true,
			endpoints:     []proxier.Endpoint{local, remote},
			wantServers: map[string][]string{
				"10.96.0.10:80": {"10.244.1.2:8080", "10.244.2.2:8080"}, "203.0.113.7:80": {"10.244.1.2:8080"},
				"192.0.2.1:30080": {"10.244.1.2:8080"}, "192.0.2.2:30080": {"10.244.1.2:8080"},
			},
			wantSets: []string{"SWYD-EXTERNAL-LOCAL 192.0.2.1 30080", "SWYD-EXTERNAL-LOCAL 192.0.2.2 30080", "SWYD-EXTERNAL-LOCAL 203.0.113.7 80"},
		},
		{
			// Off-node clients are dropped by the set's rule; pods and the node reach the
			// cluster's endpoints (kube-proxy's short-circuit, and its IPVS mode's #97081).
			name:          "externalTrafficPolicy Local without a local endpoint: the cluster's endpoints, off-node clients dropped",
			externalLocal: true,
			endpoints:     []proxier.Endpoint{remote},
			wantServers: map[string][]string{
				"10.96.0.10:80": {"10.244.2.2:8080"}, "203.0.113.7:80": {"10.244.2.2:8080"}, "192.0.2.1:30080": {"10.244.2.2:8080"}, "192.0.2.2:30080": {"10.244.2.2:8080"},
			},
			wantSets: []string{"SWYD-EXTERNAL-NO-LOCAL 192.0.2.1 30080", "SWYD-EXTERNAL-NO-LOCAL 192.0.2.2 30080", "SWYD-EXTERNAL-NO-LOCAL 203.0.113.7 80"},
		},
		{
			name:          "internalTrafficPolicy Local without a local endpoint: cluster IP traffic is dropped",
			internalLocal: true,
			endpoints:     []proxier.Endpoint{remote},
			wantServers: map[string][]string{
				"10.96.0.10:80": nil, "203.0.113.7:80": {"10.244.2.2:8080"}, "192.0.2.1:30080": {"10.244.2.2:8080"}, "192.0.2.2:30080": {"10.244.2.2:8080"},
			},
			wantSets: []string{"SWYD-EXTERNAL 192.0.2.1 30080", "SWYD-EXTERNAL 192.0.2.2 30080", "SWYD-EXTERNAL 203.0.113.7 80", "SWYD-NO-LOCAL-ENDPOINTS 10.96.0.10 80"},
		},
		{
			name:        "loadBalancerSourceRanges",
			sourceRange: "198.51.100.0/24",
			endpoints:   []proxier.Endpoint{local},
			wantServers: map[string][]string{
				"10.96.0.10:80": {"10.244.1.2:8080"}, "203.0.113.7:80": {"10.244.1.2:8080"}, "203.0.113.8:80": {"10.244.1.2:8080"},
				"192.0.2.1:30080": {"10.244.1.2:8080"}, "192.0.2.2:30080": {"10.244.1.2:8080"},
			},
			wantSets: []string{"SWYD-EXTERNAL 192.0.2.1 30080", "SWYD-EXTERNAL 192.0.2.2 30080", "SWYD-EXTERNAL 203.0.113.7 80", "SWYD-EXTERNAL 203.0.113.8 80",
				"SWYD-LB-FW 203.0.113.8 80", "SWYD-LB-SOURCE 203.0.113.8 80 198.51.100.0/24"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sp := &proxier.ServicePort{Name: name, ClusterIP: netip.MustParseAddr("10.96.0.10"), Port: 80, Protocol: v1.ProtocolTCP, NodePort: 30080,
				ExternalIPs: []netip.Addr{netip.MustParseAddr("203.0.113.7")}, InternalPolicyLocal: tc.internalLocal, ExternalPolicyLocal: tc.externalLocal}
			if tc.sourceRange != "" {
				sp.LoadBalancerIPs = []netip.Addr{netip.MustParseAddr("203.0.113.8")}
				sp.LoadBalancerSourceRanges = []netip.Prefix{netip.MustParsePrefix(tc.sourceRange)}
			}
			nodeIPs := []netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")}
			b := &Backend{cfg: Config{Scheduler: "rr"}, nodeIPs: nodeIPs, nodePortIPs: nodeIPs}
			state := &proxier.State{NodeName: "node-a", Endpoints: map[proxier.ServicePortName][]proxier.Endpoint{name: tc.endpoints}}
			p := b.plan(state, sp)

			servers := map[string][]string{}
			for _, s := range p.servers {
				var reals []string
				for _, r := range s.reals {
					reals = append(reals, r.String())
				}
				servers[netip.AddrPortFrom(s.vs.Address, s.vs.Port).String()] = reals
			}
			if diff := cmp.Diff(tc.wantServers, servers); diff != "" {
				t.Errorf("virtual servers (-want +got):\n%s", diff)
			}
			var sets []string
			for _, e := range p.sets {
				switch e.Set {
				case clusterIPSet, serviceIPsSet, loopbackSet:
					continue // the same under every policy
				}
				s := fmt.Sprintf("%s %s %d", e.Set, e.IP, e.Port)
				if e.Net.IsValid() {
					s += " " + e.Net.String()
				}
				sets = append(sets, s)
			}
			slices.Sort(sets)
			if diff := cmp.Diff(tc.wantSets, sets); diff != "" {
				t.Errorf("set members (-want +got):\n%s", diff)
			}
		})
	}
}

// TestPlanLoopbackHoldsLocalEndpointsOnly: only a pod on this node can reach itself
// through a Service here, so only local endpoints need the hairpin set, as in kube-proxy.
func TestPlanLoopbackHoldsLocalEndpointsOnly(t *testing.T) {
	name := proxier.ServicePortName{NamespacedName: types.NamespacedName{Namespace: "ns", Name: "web"}, Protocol: v1.ProtocolTCP}
	sp := &proxier.ServicePort{Name: name, ClusterIP: netip.MustParseAddr("10.96.0.10"), Port: 80, Protocol: v1.ProtocolTCP}
	endpoints := []proxier.Endpoint{
		{IP: netip.MustParseAddr("10.244.1.2"), Port: 8080, Ready: true, Serving: true, NodeName: "node-a"},
		{IP: netip.MustParseAddr("10.244.2.2"), Port: 8080, Ready: true, Serving: true, NodeName: "node-b"},
	}
	b := &Backend{cfg: Config{Scheduler: "rr"}}
	p := b.plan(&proxier.State{NodeName: "node-a", Endpoints: map[proxier.ServicePortName][]proxier.Endpoint{name: endpoints}}, sp)
	var loopback []string
	for _, e := range p.sets {
		if e.Set == loopbackSet {
			loopback = append(loopback, fmt.Sprintf("%s,%d,%s", e.IP, e.Port, e.IP2))
		}
	}
	if diff := cmp.Diff([]string{"10.244.1.2,8080,10.244.1.2"}, loopback); diff != "" {
		t.Errorf("loopback set members (-want +got):\n%s", diff)
	}
}

// TestToServiceFlags: the flags a virtual server is written with, as kube-proxy sets them
// (pkg/proxy/ipvs/proxier.go: persistence for session affinity, source-port hashing for mh).
func TestToServiceFlags(t *testing.T) {
	addr := netip.MustParseAddr("10.96.0.10")
	tests := []struct {
		name        string
		vs          VirtualServer
		wantFlags   uint32
		wantTimeout uint32
	}{
		{name: "rr", vs: VirtualServer{Address: addr, Port: 80, Protocol: v1.ProtocolTCP, Scheduler: "rr"}},
		{name: "session affinity", vs: VirtualServer{Address: addr, Port: 80, Protocol: v1.ProtocolTCP, Scheduler: "rr", AffinityTimeout: 10800},
			wantFlags: flagPersistent, wantTimeout: 10800},
		{name: "mh hashes the source port", vs: VirtualServer{Address: addr, Port: 80, Protocol: v1.ProtocolTCP, Scheduler: "mh"},
			wantFlags: flagSourcePortHash},
		{name: "mh with session affinity", vs: VirtualServer{Address: addr, Port: 80, Protocol: v1.ProtocolTCP, Scheduler: "mh", AffinityTimeout: 60},
			wantFlags: flagPersistent | flagSourcePortHash, wantTimeout: 60},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := toService(&tc.vs)
			if s.Flags != tc.wantFlags || s.Timeout != tc.wantTimeout {
				t.Errorf("flags %#x timeout %d, want %#x and %d", s.Flags, s.Timeout, tc.wantFlags, tc.wantTimeout)
			}
			back, ok := fromService(s)
			if !ok || *back != tc.vs {
				t.Errorf("read back as %+v, want %+v", back, tc.vs)
			}
		})
	}
}
