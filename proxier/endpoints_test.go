package proxier

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	v1 "k8s.io/api/core/v1"
)

func TestSelectEndpoints(t *testing.T) {
	const (
		thisNode  = "node-a"
		otherNode = "node-b"
		thisZone  = "zone-a"
		otherZone = "zone-b"
	)
	zoneLabels := map[string]string{v1.LabelTopologyZone: thisZone}

	// ep is a ready, serving endpoint on node, modified by tweak.
	ep := func(ip, node string, tweak func(*Endpoint)) Endpoint {
		e := Endpoint{IP: netip.MustParseAddr(ip), Port: 8080, Ready: true, Serving: true, NodeName: node}
		if tweak != nil {
			tweak(&e)
		}
		return e
	}
	notReady := func(e *Endpoint) { e.Ready, e.Serving = false, false }
	terminating := func(e *Endpoint) { e.Ready, e.Serving, e.Terminating = false, true, true }
	terminatingNotServing := func(e *Endpoint) { e.Ready, e.Serving, e.Terminating = false, false, true }
	zones := func(z ...string) func(*Endpoint) { return func(e *Endpoint) { e.ZoneHints = z } }
	nodes := func(n ...string) func(*Endpoint) { return func(e *Endpoint) { e.NodeHints = n } }

	sp := func(tweak func(*ServicePort)) *ServicePort {
		p := &ServicePort{
			Name:      spn("svc", "http", v1.ProtocolTCP),
			ClusterIP: netip.MustParseAddr("10.96.0.1"),
			Port:      80,
			Protocol:  v1.ProtocolTCP,
		}
		if tweak != nil {
			tweak(p)
		}
		return p
	}
	clusterIP := sp(nil)
	internalLocal := sp(func(p *ServicePort) { p.InternalPolicyLocal = true })
	nodePortLocal := sp(func(p *ServicePort) { p.NodePort = 30080; p.ExternalPolicyLocal = true })

	local1 := ep("10.0.0.1", thisNode, nil)
	local2 := ep("10.0.0.2", thisNode, nil)
	remote1 := ep("10.0.1.1", otherNode, nil)
	remote2 := ep("10.0.1.2", otherNode, nil)

	testCases := []struct {
		name       string
		sp         *ServicePort
		endpoints  []Endpoint
		nodeLabels map[string]string
		want       EndpointSelection
	}{
		{
			name:      "only ready endpoints are used",
			sp:        clusterIP,
			endpoints: []Endpoint{local1, ep("10.0.0.9", thisNode, notReady), ep("10.0.1.9", otherNode, terminating), remote1},
			want:      EndpointSelection{Cluster: []Endpoint{local1, remote1}, AllReachable: []Endpoint{local1, remote1}, HasAny: true},
		},
		{
			name: "no ready endpoint anywhere: fall back to serving and terminating ones",
			sp:   clusterIP,
			endpoints: []Endpoint{
				ep("10.0.0.7", thisNode, terminating),
				ep("10.0.0.8", thisNode, notReady),
				ep("10.0.0.9", thisNode, terminatingNotServing),
				ep("10.0.1.7", otherNode, terminating),
			},
			want: EndpointSelection{
				Cluster:      []Endpoint{ep("10.0.0.7", thisNode, terminating), ep("10.0.1.7", otherNode, terminating)},
				AllReachable: []Endpoint{ep("10.0.0.7", thisNode, terminating), ep("10.0.1.7", otherNode, terminating)},
				HasAny:       true,
			},
		},
		{
			name: "serving but not terminating and not ready is not a fallback",
			sp:   clusterIP,
			endpoints: []Endpoint{
				ep("10.0.0.7", thisNode, func(e *Endpoint) { e.Ready = false }),
			},
			want: EndpointSelection{HasAny: false},
		},
		{
			name:      "no endpoints at all: nothing to reach, reject",
			sp:        clusterIP,
			endpoints: nil,
			want:      EndpointSelection{HasAny: false},
		},
		{
			name:      "only unusable endpoints: nothing to reach, reject",
			sp:        clusterIP,
			endpoints: []Endpoint{ep("10.0.0.8", thisNode, notReady), ep("10.0.0.9", thisNode, terminatingNotServing)},
			want:      EndpointSelection{HasAny: false},
		},
		{
			name:      "internalTrafficPolicy Local with local endpoints: local ones only",
			sp:        internalLocal,
			endpoints: []Endpoint{local1, remote1, local2},
			want:      EndpointSelection{Local: []Endpoint{local1, local2}, AllReachable: []Endpoint{local1, local2}, HasAny: true},
		},
		{
			name:      "internalTrafficPolicy Local without local endpoints: Local empty but HasAny (drop, not reject)",
			sp:        internalLocal,
			endpoints: []Endpoint{remote1, remote2},
			want:      EndpointSelection{HasAny: true},
		},
		{
			name:      "internalTrafficPolicy Local without any endpoint: reject",
			sp:        internalLocal,
			endpoints: []Endpoint{ep("10.0.0.9", thisNode, notReady)},
			want:      EndpointSelection{HasAny: false},
		},
		{
			name:      "internalTrafficPolicy Local, only a terminating local endpoint: it is used",
			sp:        internalLocal,
			endpoints: []Endpoint{ep("10.0.0.7", thisNode, terminating), remote1},
			want: EndpointSelection{
				Local:        []Endpoint{ep("10.0.0.7", thisNode, terminating)},
				AllReachable: []Endpoint{ep("10.0.0.7", thisNode, terminating)},
				HasAny:       true,
			},
		},
		{
			name:      "internalTrafficPolicy Local, a ready local endpoint hides terminating local ones",
			sp:        internalLocal,
			endpoints: []Endpoint{ep("10.0.0.7", thisNode, terminating), local1},
			want:      EndpointSelection{Local: []Endpoint{local1}, AllReachable: []Endpoint{local1}, HasAny: true},
		},
		{
			name:      "externalTrafficPolicy Local on a NodePort service: Cluster for internal traffic, Local for external",
			sp:        nodePortLocal,
			endpoints: []Endpoint{local1, remote1, ep("10.0.0.9", thisNode, notReady)},
			want: EndpointSelection{
				Cluster:      []Endpoint{local1, remote1},
				Local:        []Endpoint{local1},
				AllReachable: []Endpoint{local1, remote1}, // local1 once
				HasAny:       true,
			},
		},
		{
			name:      "externalTrafficPolicy Local, no local endpoint: Local empty, cluster traffic still served",
			sp:        nodePortLocal,
			endpoints: []Endpoint{remote1, remote2},
			want: EndpointSelection{
				Cluster:      []Endpoint{remote1, remote2},
				AllReachable: []Endpoint{remote1, remote2},
				HasAny:       true,
			},
		},
		{
			name:      "externalTrafficPolicy Local, local endpoint only terminating: union holds both",
			sp:        nodePortLocal,
			endpoints: []Endpoint{ep("10.0.0.7", thisNode, terminating), remote1},
			want: EndpointSelection{
				Cluster:      []Endpoint{remote1},
				Local:        []Endpoint{ep("10.0.0.7", thisNode, terminating)},
				AllReachable: []Endpoint{remote1, ep("10.0.0.7", thisNode, terminating)},
				HasAny:       true,
			},
		},
		{
			name: "externalTrafficPolicy Local, topology excludes the local endpoint from Cluster: union holds both",
			sp:   nodePortLocal,
			endpoints: []Endpoint{
				ep("10.0.0.1", thisNode, zones(otherZone)),
				ep("10.0.1.1", otherNode, zones(thisZone)),
			},
			nodeLabels: zoneLabels,
			want: EndpointSelection{
				Cluster:      []Endpoint{ep("10.0.1.1", otherNode, zones(thisZone))},
				Local:        []Endpoint{ep("10.0.0.1", thisNode, zones(otherZone))},
				AllReachable: []Endpoint{ep("10.0.1.1", otherNode, zones(thisZone)), ep("10.0.0.1", thisNode, zones(otherZone))},
				HasAny:       true,
			},
		},
		{
			name:      "externalTrafficPolicy Local without any external entry point means Cluster",
			sp:        sp(func(p *ServicePort) { p.ExternalPolicyLocal = true }),
			endpoints: []Endpoint{local1, remote1},
			want:      EndpointSelection{Cluster: []Endpoint{local1, remote1}, AllReachable: []Endpoint{local1, remote1}, HasAny: true},
		},
		{
			name: "internalTrafficPolicy Local on a NodePort service with externalTrafficPolicy Cluster",
			sp: sp(func(p *ServicePort) {
				p.NodePort = 30080
				p.InternalPolicyLocal = true
			}),
			endpoints: []Endpoint{local1, remote1},
			want: EndpointSelection{
				Cluster:      []Endpoint{local1, remote1},
				Local:        []Endpoint{local1},
				AllReachable: []Endpoint{local1, remote1},
				HasAny:       true,
			},
		},
		{
			name: "zone hints: every ready endpoint hinted and some for this zone, use only those",
			sp:   clusterIP,
			endpoints: []Endpoint{
				ep("10.0.0.1", thisNode, zones(thisZone)),
				ep("10.0.1.1", otherNode, zones(otherZone)),
				ep("10.0.1.2", otherNode, zones(otherZone, thisZone)),
				ep("10.0.1.9", otherNode, notReady), // unhinted, but not ready: does not count
			},
			nodeLabels: zoneLabels,
			want: EndpointSelection{
				Cluster:      []Endpoint{ep("10.0.0.1", thisNode, zones(thisZone)), ep("10.0.1.2", otherNode, zones(otherZone, thisZone))},
				AllReachable: []Endpoint{ep("10.0.0.1", thisNode, zones(thisZone)), ep("10.0.1.2", otherNode, zones(otherZone, thisZone))},
				HasAny:       true,
			},
		},
		{
			name: "zone hints ignored when a ready endpoint has none",
			sp:   clusterIP,
			endpoints: []Endpoint{
				ep("10.0.0.1", thisNode, zones(thisZone)),
				ep("10.0.1.1", otherNode, nil),
			},
			nodeLabels: zoneLabels,
			want: EndpointSelection{
				Cluster:      []Endpoint{ep("10.0.0.1", thisNode, zones(thisZone)), ep("10.0.1.1", otherNode, nil)},
				AllReachable: []Endpoint{ep("10.0.0.1", thisNode, zones(thisZone)), ep("10.0.1.1", otherNode, nil)},
				HasAny:       true,
			},
		},
		{
			name: "zone hints ignored when none is for this node's zone",
			sp:   clusterIP,
			endpoints: []Endpoint{
				ep("10.0.1.1", otherNode, zones(otherZone)),
				ep("10.0.1.2", otherNode, zones("zone-c")),
			},
			nodeLabels: zoneLabels,
			want: EndpointSelection{
				Cluster:      []Endpoint{ep("10.0.1.1", otherNode, zones(otherZone)), ep("10.0.1.2", otherNode, zones("zone-c"))},
				AllReachable: []Endpoint{ep("10.0.1.1", otherNode, zones(otherZone)), ep("10.0.1.2", otherNode, zones("zone-c"))},
				HasAny:       true,
			},
		},
		{
			name: "zone hints ignored when the node has no zone label",
			sp:   clusterIP,
			endpoints: []Endpoint{
				ep("10.0.0.1", thisNode, zones(thisZone)),
				ep("10.0.1.1", otherNode, zones(otherZone)),
			},
			nodeLabels: map[string]string{"failure-domain.beta.kubernetes.io/zone": thisZone},
			want: EndpointSelection{
				Cluster:      []Endpoint{ep("10.0.0.1", thisNode, zones(thisZone)), ep("10.0.1.1", otherNode, zones(otherZone))},
				AllReachable: []Endpoint{ep("10.0.0.1", thisNode, zones(thisZone)), ep("10.0.1.1", otherNode, zones(otherZone))},
				HasAny:       true,
			},
		},
		{
			name: "zone hints do not apply to the terminating fallback",
			sp:   clusterIP,
			endpoints: []Endpoint{
				ep("10.0.0.7", thisNode, func(e *Endpoint) { terminating(e); e.ZoneHints = []string{otherZone} }),
				ep("10.0.1.7", otherNode, terminating),
			},
			nodeLabels: zoneLabels,
			want: EndpointSelection{
				Cluster: []Endpoint{
					ep("10.0.0.7", thisNode, func(e *Endpoint) { terminating(e); e.ZoneHints = []string{otherZone} }),
					ep("10.0.1.7", otherNode, terminating),
				},
				AllReachable: []Endpoint{
					ep("10.0.0.7", thisNode, func(e *Endpoint) { terminating(e); e.ZoneHints = []string{otherZone} }),
					ep("10.0.1.7", otherNode, terminating),
				},
				HasAny: true,
			},
		},
		{
			name: "PreferSameNode: node hints complete and some for this node, use only those",
			sp:   clusterIP,
			endpoints: []Endpoint{
				ep("10.0.0.1", thisNode, func(e *Endpoint) { e.NodeHints = []string{thisNode}; e.ZoneHints = []string{thisZone} }),
				ep("10.0.1.1", otherNode, func(e *Endpoint) { e.NodeHints = []string{otherNode}; e.ZoneHints = []string{thisZone} }),
			},
			nodeLabels: zoneLabels,
			want: EndpointSelection{
				Cluster:      []Endpoint{ep("10.0.0.1", thisNode, func(e *Endpoint) { e.NodeHints = []string{thisNode}; e.ZoneHints = []string{thisZone} })},
				AllReachable: []Endpoint{ep("10.0.0.1", thisNode, func(e *Endpoint) { e.NodeHints = []string{thisNode}; e.ZoneHints = []string{thisZone} })},
				HasAny:       true,
			},
		},
		{
			name: "PreferSameNode: node hints incomplete, fall back to zone hints",
			sp:   clusterIP,
			endpoints: []Endpoint{
				ep("10.0.0.1", thisNode, func(e *Endpoint) { e.NodeHints = []string{thisNode}; e.ZoneHints = []string{otherZone} }),
				ep("10.0.1.1", otherNode, zones(thisZone)),
				ep("10.0.1.2", otherNode, zones(otherZone)),
			},
			nodeLabels: zoneLabels,
			want: EndpointSelection{
				Cluster:      []Endpoint{ep("10.0.1.1", otherNode, zones(thisZone))},
				AllReachable: []Endpoint{ep("10.0.1.1", otherNode, zones(thisZone))},
				HasAny:       true,
			},
		},
		{
			name: "PreferSameNode: no node hint for this node, use all",
			sp:   clusterIP,
			endpoints: []Endpoint{
				ep("10.0.1.1", otherNode, nodes(otherNode)),
				ep("10.0.1.2", otherNode, nodes(otherNode)),
			},
			want: EndpointSelection{
				Cluster:      []Endpoint{ep("10.0.1.1", otherNode, nodes(otherNode)), ep("10.0.1.2", otherNode, nodes(otherNode))},
				AllReachable: []Endpoint{ep("10.0.1.1", otherNode, nodes(otherNode)), ep("10.0.1.2", otherNode, nodes(otherNode))},
				HasAny:       true,
			},
		},
		{
			// kube-proxy v1.35 looks at the hints only, not at the Service's
			// trafficDistribution (topology.go topologyModeFromHints; the
			// PreferSameTrafficDistribution gate is locked on).
			name: "node hints are used whatever the Service's trafficDistribution",
			sp:   clusterIP,
			endpoints: []Endpoint{
				ep("10.0.0.1", thisNode, nodes(thisNode)),
				ep("10.0.1.1", otherNode, nodes(otherNode)),
			},
			want: EndpointSelection{
				Cluster:      []Endpoint{ep("10.0.0.1", thisNode, nodes(thisNode))},
				AllReachable: []Endpoint{ep("10.0.0.1", thisNode, nodes(thisNode))},
				HasAny:       true,
			},
		},
		{
			// UsesClusterEndpoints is true for any externally accessible Service
			// (serviceport.go), so pods and the node can be short-circuited to any endpoint.
			name: "both policies Local on a NodePort Service: Cluster is still computed",
			sp: sp(func(p *ServicePort) {
				p.NodePort, p.ExternalPolicyLocal, p.InternalPolicyLocal = 30080, true, true
			}),
			endpoints: []Endpoint{remote1, remote2},
			want: EndpointSelection{
				Cluster:      []Endpoint{remote1, remote2},
				AllReachable: []Endpoint{remote1, remote2},
				HasAny:       true,
			},
		},
	}
	opts := cmp.Options{
		netipComparers,
		cmpopts.EquateEmpty(),
		// The order within each list is not part of the contract.
		cmpopts.SortSlices(func(a, b Endpoint) bool { return a.String() < b.String() }),
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			got := selectEndpoints(tc.sp, tc.endpoints, thisNode, tc.nodeLabels)
			if diff := cmp.Diff(tc.want, got, opts); diff != "" {
				t.Errorf("selectEndpoints() mismatch (-want +got):\n%s", diff)
			}
			// Invariants that hold for every input.
			seen := map[string]bool{}
			for _, e := range got.AllReachable {
				if seen[e.String()] {
					t.Errorf("AllReachable lists %s twice", e)
				}
				seen[e.String()] = true
			}
			for _, e := range append(append([]Endpoint{}, got.Cluster...), got.Local...) {
				if !seen[e.String()] {
					t.Errorf("%s is selected but missing from AllReachable", e)
				}
			}
			for _, e := range got.Local {
				if !e.IsLocal(thisNode) {
					t.Errorf("Local holds %s on node %q", e, e.NodeName)
				}
			}
		})
	}
}

// selectEndpoints must not alter the endpoints it is given: they are the tracker's state,
// shared by every later sync.
func TestSelectEndpointsDoesNotModifyInput(t *testing.T) {
	in := []Endpoint{
		{IP: netip.MustParseAddr("10.0.0.1"), Port: 80, Ready: true, Serving: true, NodeName: "node-a"},
		{IP: netip.MustParseAddr("10.0.1.1"), Port: 80, Ready: true, Serving: true, NodeName: "node-b"},
	}
	before := append([]Endpoint(nil), in...)
	sp := &ServicePort{NodePort: 30080, ExternalPolicyLocal: true}
	sel := selectEndpoints(sp, in, "node-a", nil)
	sel.AllReachable = append(sel.AllReachable, Endpoint{IP: netip.MustParseAddr("10.9.9.9")})
	if len(sel.Cluster) > 0 {
		sel.Cluster[0].NodeName = "mutated"
	}
	if diff := cmp.Diff(before, in, netipComparers); diff != "" {
		t.Errorf("input endpoints changed (-before +after):\n%s", diff)
	}
}
