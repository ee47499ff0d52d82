package ipvs_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/switchyard/switchyard/internal/behaviour"
	"github.com/switchyard/switchyard/ipvs"
	"github.com/switchyard/switchyard/ipvs/ipvstest"
	"github.com/switchyard/switchyard/proxier"
)

// refusal is what the kernel refuses in one step of TestFailedServicePorts; each
// refusing* fake below consults it.
type refusal struct {
	// virtualServers and realServers refuse adding a virtual server, or a real server,
	// at these addresses.
	virtualServers, realServers []netip.Addr
	// binds refuses binding these addresses on kube-ipvs0.
	binds []netip.Addr
	// members refuses adding set members for these addresses.
	members []netip.Addr
	// deletes refuses deleting virtual servers.
	deletes bool
}

var errRefused = errors.New("operation not permitted")

type refusingIPVS struct {
	*ipvstest.IPVS
	r *refusal
}

func (f refusingIPVS) AddVirtualServer(v *ipvs.VirtualServer) error {
	if slices.Contains(f.r.virtualServers, v.Address) {
		return fmt.Errorf("adding IPVS service %s: %w", v.Key(), errRefused)
	}
	return f.IPVS.AddVirtualServer(v)
}

func (f refusingIPVS) AddRealServer(v *ipvs.VirtualServer, r *ipvs.RealServer) error {
	if slices.Contains(f.r.realServers, r.Address) {
		return fmt.Errorf("adding real server %s to %s: %w", r.Endpoint(), v.Key(), errRefused)
	}
	return f.IPVS.AddRealServer(v, r)
}

func (f refusingIPVS) DeleteVirtualServer(v *ipvs.VirtualServer) error {
	if f.r.deletes {
		return fmt.Errorf("deleting IPVS service %s: %w", v.Key(), errRefused)
	}
	return f.IPVS.DeleteVirtualServer(v)
}

type refusingDevice struct {
	*ipvstest.Device
	r *refusal
}

func (d refusingDevice) Bind(a netip.Addr) error {
	if slices.Contains(d.r.binds, a) {
		return fmt.Errorf("binding %s: %w", a, errRefused)
	}
	return d.Device.Bind(a)
}

type refusingSets struct {
	*ipvstest.Sets
	r *refusal
}

func (s refusingSets) Add(e ipvs.SetEntry) error {
	if slices.Contains(s.r.members, e.IP) {
		return fmt.Errorf("adding %v to ipset %s: %w", e, e.Set, errRefused)
	}
	return s.Sets.Add(e)
}

// failureService is the ClusterIP Service svc-N on 10.96.0.N, port 80+N, with an
// endpoint 10.244.0.N:8080 on another node, and the external IPs given.
func failureService(state *proxier.State, n int, externalIPs ...string) {
	name := failureName(n)
	sp := &proxier.ServicePort{Name: name, ClusterIP: netip.AddrFrom4([4]byte{10, 96, 0, byte(n)}), Port: int32(80 + n), Protocol: v1.ProtocolTCP}
	for _, ip := range externalIPs {
		sp.ExternalIPs = append(sp.ExternalIPs, netip.MustParseAddr(ip))
	}
	state.Services[name] = sp
	state.Endpoints[name] = []proxier.Endpoint{{IP: netip.AddrFrom4([4]byte{10, 244, 0, byte(n)}), Port: 8080, Ready: true, Serving: true, NodeName: "node-b"}}
}

func failureName(n int) proxier.ServicePortName {
	return proxier.ServicePortName{NamespacedName: types.NamespacedName{Namespace: "default", Name: fmt.Sprintf("svc-%d", n)}, Protocol: v1.ProtocolTCP}
}

// TestFailedServicePorts: a netlink operation that fails is blamed on the ports it was
// for (a shared address or set member on each of them), everything else is programmed,
// a Service added meanwhile included, and the retry of a failed port programs what its
// failed sync left out, whatever that was.
func TestFailedServicePorts(t *testing.T) {
	const shared = "203.0.113.5" // an external IP of both svc-4 and svc-5
	ip := netip.MustParseAddr
	type step struct {
		name    string
		mutate  func(state *proxier.State)
		refuse  refusal
		full    bool
		changed []int
		// wantFailed are the Services returned in a PortErrors; wantWhole is set when
		// the sync must fail as a whole.
		wantFailed []int
		wantWhole  bool
		// wantServers are the virtual servers at the cluster IPs of these Services,
		// with their real servers (nil when there is no virtual server).
		wantServers map[int][]string
		wantBound   []string // addresses that must be bound
	}
	everyone := func(state *proxier.State) {
		failureService(state, 1)
		failureService(state, 2)
		failureService(state, 3)
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{
			name: "a virtual server refused fails its port only; the retry adds it",
			steps: []step{
				{
					mutate: everyone, refuse: refusal{virtualServers: []netip.Addr{ip("10.96.0.2")}}, full: true,
					wantFailed:  []int{2},
					wantServers: map[int][]string{1: {"10.244.0.1:8080"}, 2: nil, 3: {"10.244.0.3:8080"}},
				},
				{
					name:        "a Service added while it fails",
					mutate:      func(state *proxier.State) { failureService(state, 6) },
					refuse:      refusal{virtualServers: []netip.Addr{ip("10.96.0.2")}},
					changed:     []int{2, 6},
					wantFailed:  []int{2},
					wantServers: map[int][]string{2: nil, 6: {"10.244.0.6:8080"}},
				},
				{
					name:        "the kernel takes it",
					changed:     []int{2},
					wantServers: map[int][]string{1: {"10.244.0.1:8080"}, 2: {"10.244.0.2:8080"}, 3: {"10.244.0.3:8080"}, 6: {"10.244.0.6:8080"}},
				},
			},
		},
		{
			name: "a real server refused fails its port; the retry adds it",
			steps: []step{
				{
					mutate: everyone, full: true,
					wantServers: map[int][]string{1: {"10.244.0.1:8080"}, 2: {"10.244.0.2:8080"}},
				},
				{
					// The endpoint it replaces stays until the new one is in.
					mutate: func(state *proxier.State) {
						failureService(state, 2)
						state.Endpoints[failureName(2)][0].IP = ip("10.244.9.9")
					},
					refuse:      refusal{realServers: []netip.Addr{ip("10.244.9.9")}},
					changed:     []int{2},
					wantFailed:  []int{2},
					wantServers: map[int][]string{1: {"10.244.0.1:8080"}, 2: {"10.244.0.2:8080"}},
				},
				{
					changed:     []int{2},
					wantServers: map[int][]string{1: {"10.244.0.1:8080"}, 2: {"10.244.9.9:8080"}},
				},
			},
		},
		{
			name: "a shared address that cannot be bound fails every port using it",
			steps: []step{
				{
					mutate: everyone, full: true,
					wantServers: map[int][]string{1: {"10.244.0.1:8080"}},
				},
				{
					mutate: func(state *proxier.State) {
						failureService(state, 4, shared)
						failureService(state, 5, shared)
					},
					refuse:      refusal{binds: []netip.Addr{ip(shared)}},
					changed:     []int{4, 5},
					wantFailed:  []int{4, 5},
					wantServers: map[int][]string{1: {"10.244.0.1:8080"}},
				},
				{
					// Both still count as users of the address: only a retry that binds
					// it again, whatever the count, puts it there.
					name:        "the kernel takes it",
					changed:     []int{4, 5},
					wantServers: map[int][]string{4: {"10.244.0.4:8080"}, 5: {"10.244.0.5:8080"}},
					wantBound:   []string{shared, "10.96.0.4", "10.96.0.5"},
				},
			},
		},
		{
			name: "a shared set member refused in a full sync fails every port using it",
			steps: []step{{
				mutate: func(state *proxier.State) {
					everyone(state)
					failureService(state, 4, shared)
					failureService(state, 5, shared)
				},
				refuse: refusal{members: []netip.Addr{ip(shared)}}, full: true,
				wantFailed:  []int{4, 5},
				wantServers: map[int][]string{1: {"10.244.0.1:8080"}, 2: {"10.244.0.2:8080"}, 3: {"10.244.0.3:8080"}},
			}},
		},
		{
			name: "a stale virtual server that cannot be deleted is no port's: the sync fails",
			steps: []step{
				{mutate: everyone, full: true, wantServers: map[int][]string{3: {"10.244.0.3:8080"}}},
				{
					mutate:    func(state *proxier.State) { delete(state.Services, failureName(3)) },
					refuse:    refusal{deletes: true},
					full:      true,
					wantWhole: true,
				},
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			node := ipvstest.NewNode(behaviour.NodeIP)
			r := &refusal{}
			b := backendOn(refusingIPVS{node.IPVS, r}, node.IPTables, refusingDevice{node.Device, r}, refusingSets{node.Sets, r}, prometheus.NewRegistry())
			state := &proxier.State{NodeName: "node-a", Services: map[proxier.ServicePortName]*proxier.ServicePort{}, Endpoints: map[proxier.ServicePortName][]proxier.Endpoint{}}
			for i, step := range tc.steps {
				if step.mutate != nil {
					step.mutate(state)
				}
				*r = step.refuse
				changes := proxier.Changes{Full: step.full, ServicePorts: map[proxier.ServicePortName]struct{}{}}
				for _, n := range step.changed {
					changes.ServicePorts[failureName(n)] = struct{}{}
				}

				err := b.Sync(ctx, state, changes)

				var failed proxier.PortErrors
				isPortErrors := errors.As(err, &failed)
				switch {
				case step.wantWhole && (err == nil || isPortErrors):
					t.Fatalf("step %d %s: Sync() = %v; want the whole sync to fail", i, step.name, err)
				case !step.wantWhole && err != nil && !isPortErrors:
					t.Fatalf("step %d %s: %v", i, step.name, err)
				}
				var want, got []string
				for _, n := range step.wantFailed {
					want = append(want, failureName(n).String())
				}
				for n, err := range failed {
					got = append(got, n.String())
					if !errors.Is(err, errRefused) {
						t.Errorf("step %d %s: %s failed with %v; want the kernel's error", i, step.name, n, err)
					}
				}
				slices.Sort(got)
				if diff := cmp.Diff(want, got); diff != "" {
					t.Errorf("step %d %s: failed ports (-want +got):\n%s", i, step.name, diff)
				}
				for _, n := range slices.Sorted(maps.Keys(step.wantServers)) {
					key := ipvs.Key{Address: netip.AddrFrom4([4]byte{10, 96, 0, byte(n)}), Protocol: v1.ProtocolTCP, Port: uint16(80 + n)}
					if diff := cmp.Diff(step.wantServers[n], realServers(t, node.IPVS, key)); diff != "" {
						t.Errorf("step %d %s: virtual server of svc-%d (-want +got):\n%s", i, step.name, n, diff)
					}
				}
				bound := boundAddresses(t, node.Device)
				for _, a := range step.wantBound {
					if !slices.Contains(bound, ip(a)) {
						t.Errorf("step %d %s: %s is not bound on kube-ipvs0 (bound: %v)", i, step.name, a, bound)
					}
				}
			}
		})
	}
}

// realServers lists the real servers of the virtual server at key, sorted, or nil when
// there is no such virtual server.
func realServers(t *testing.T, table ipvs.Interface, key ipvs.Key) []string {
	t.Helper()
	servers, err := table.VirtualServers()
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(servers, func(vs *ipvs.VirtualServer) bool { return vs.Key() == key })
	if i < 0 {
		return nil
	}
	reals, err := table.RealServers(servers[i])
	if err != nil {
		t.Fatal(err)
	}
	out := []string{}
	for _, r := range reals {
		out = append(out, r.Endpoint().String())
	}
	slices.Sort(out)
	return out
}
