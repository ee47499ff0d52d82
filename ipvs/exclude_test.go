package ipvs_test

import (
	"context"
	"net/netip"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"

	"github.com/switchyard/switchyard/internal/behaviour"
	"github.com/switchyard/switchyard/ipvs"
	"github.com/switchyard/switchyard/ipvs/ipvstest"
	"github.com/switchyard/switchyard/proxier"
)

// excluded is the --ipvs-exclude-cidrs of TestExcludeCIDRs.
var excluded = []netip.Prefix{netip.MustParsePrefix("10.96.0.0/28"), netip.MustParsePrefix("fd00:10:96::/124")}

// excludingBackend is a backend over node's fakes with --ipvs-exclude-cidrs excluded.
func excludingBackend(node *ipvstest.Node) *ipvs.Backend {
	return ipvs.NewBackendWithKernel(node.IPVS, node.IPTables, node.Device, node.Sets,
		ipvs.Config{Scheduler: "rr", ResolveConfig: proxier.ResolveConfig{ClusterCIDR: behaviour.ClusterCIDR}, MasqueradeMark: "0x4000", ExcludeCIDRs: excluded},
		prometheus.NewRegistry(), klog.Background())
}

// table lists the fake's virtual servers, each with its real servers.
func table(t *testing.T, f *ipvstest.IPVS) map[string][]string {
	t.Helper()
	servers, err := f.VirtualServers()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	for _, vs := range servers {
		reals, err := f.RealServers(vs)
		if err != nil {
			t.Fatal(err)
		}
		out[vs.Key().String()] = []string{}
		for _, r := range reals {
			out[vs.Key().String()] = append(out[vs.Key().String()], r.Endpoint().String())
		}
		slices.Sort(out[vs.Key().String()])
	}
	return out
}

// TestExcludeCIDRs follows kube-proxy's cleanLegacyService: a virtual server whose address
// is in --ipvs-exclude-cidrs is never deleted, whether its Service goes in a partial sync
// or a full sync finds it stale; it keeps its real servers. Its address on kube-ipvs0 is
// removed all the same, as kube-proxy does. Virtual servers elsewhere go as before.
func TestExcludeCIDRs(t *testing.T) {
	ctx := context.Background()
	name := func(n string) proxier.ServicePortName {
		return proxier.ServicePortName{NamespacedName: types.NamespacedName{Namespace: "default", Name: n}, Protocol: v1.ProtocolTCP}
	}
	kept, gone := name("kept"), name("gone")
	endpoint := proxier.Endpoint{IP: netip.MustParseAddr("10.244.1.2"), Port: 8080, Ready: true, Serving: true, NodeName: behaviour.NodeName}
	state := &proxier.State{NodeName: behaviour.NodeName, NodeIP: behaviour.NodeIP,
		Services: map[proxier.ServicePortName]*proxier.ServicePort{
			kept: {Name: kept, ClusterIP: netip.MustParseAddr("10.96.0.10"), Port: 80, Protocol: v1.ProtocolTCP},
			gone: {Name: gone, ClusterIP: netip.MustParseAddr("10.96.1.10"), Port: 80, Protocol: v1.ProtocolTCP},
		},
		Endpoints: map[proxier.ServicePortName][]proxier.Endpoint{kept: {endpoint}, gone: {endpoint}},
	}
	node := ipvstest.NewNode(behaviour.NodeIP)
	b := excludingBackend(node)
	if err := b.Sync(ctx, state, proxier.Changes{Full: true}); err != nil {
		t.Fatalf("full sync: %v", err)
	}

	// Both Services deleted: a partial sync.
	state.Services, state.Endpoints = map[proxier.ServicePortName]*proxier.ServicePort{}, map[proxier.ServicePortName][]proxier.Endpoint{}
	if err := b.Sync(ctx, state, proxier.Changes{ServicePorts: map[proxier.ServicePortName]struct{}{kept: {}, gone: {}}}); err != nil {
		t.Fatalf("partial sync: %v", err)
	}
	want := map[string][]string{"10.96.0.10:80/TCP": {"10.244.1.2:8080"}}
	if diff := cmp.Diff(want, table(t, node.IPVS)); diff != "" {
		t.Errorf("after the partial sync, virtual servers (-want +got):\n%s", diff)
	}
	if got := boundAddresses(t, node.Device); len(got) != 0 {
		t.Errorf("after the partial sync, bound addresses %v, want none", got)
	}

	// A restarted proxy finds virtual servers of ours (on addresses it bound) that no
	// Service wants, in the excluded ranges and outside them, in either family.
	for _, vip := range []string{"10.96.0.11", "10.96.1.11", "fd00:10:96::b", "fd00:10:96::1:b"} {
		a := netip.MustParseAddr(vip)
		if err := node.Device.Bind(a); err != nil {
			t.Fatal(err)
		}
		if err := node.IPVS.AddVirtualServer(&ipvs.VirtualServer{Address: a, Protocol: v1.ProtocolTCP, Port: 80, Scheduler: "rr"}); err != nil {
			t.Fatal(err)
		}
	}
	for _, restarted := range []*ipvs.Backend{excludingBackend(node), ipvs.NewBackendWithKernel(node.IPVS, node.IPTables, node.Device, node.Sets,
		ipvs.Config{Scheduler: "rr", MasqueradeMark: "0x4000", ExcludeCIDRs: excluded, IPv6: true}, prometheus.NewRegistry(), klog.Background())} {
		if err := restarted.Sync(ctx, state, proxier.Changes{Full: true}); err != nil {
			t.Fatalf("full sync after a restart: %v", err)
		}
	}
	want = map[string][]string{"10.96.0.10:80/TCP": {"10.244.1.2:8080"}, "10.96.0.11:80/TCP": {}, "[fd00:10:96::b]:80/TCP": {}}
	if diff := cmp.Diff(want, table(t, node.IPVS)); diff != "" {
		t.Errorf("after a full sync, virtual servers (-want +got):\n%s", diff)
	}
	if got := boundAddresses(t, node.Device); len(got) != 0 {
		t.Errorf("after a full sync, bound addresses %v, want none", got)
	}

	// After the first backend's periodic full sync, the Service comes back on the address
	// whose virtual server stayed: it takes the virtual server over, and the real server
	// no endpoint wants goes (at once: this backend drains nothing).
	if err := b.Sync(ctx, state, proxier.Changes{Full: true}); err != nil {
		t.Fatalf("periodic full sync: %v", err)
	}
	state.Services[kept] = &proxier.ServicePort{Name: kept, ClusterIP: netip.MustParseAddr("10.96.0.10"), Port: 80, Protocol: v1.ProtocolTCP}
	state.Endpoints[kept] = []proxier.Endpoint{{IP: netip.MustParseAddr("10.244.2.3"), Port: 8080, Ready: true, Serving: true}}
	if err := b.Sync(ctx, state, proxier.Changes{ServicePorts: map[proxier.ServicePortName]struct{}{kept: {}}}); err != nil {
		t.Fatalf("partial sync of the Service back: %v", err)
	}
	if got := table(t, node.IPVS)["10.96.0.10:80/TCP"]; !slices.Equal(got, []string{"10.244.2.3:8080"}) {
		t.Errorf("the Service back: real servers %v, want only its endpoint's", got)
	}
}
