package ipvs_test

import (
	"context"
	"net/netip"
	"slices"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"

	"github.com/switchyard/switchyard/internal/behaviour"
	"github.com/switchyard/switchyard/iptables"
	"github.com/switchyard/switchyard/ipvs"
	"github.com/switchyard/switchyard/ipvs/ipvstest"
	"github.com/switchyard/switchyard/proxier"
)

// fakeBackend is a Backend on the behaviour suite's node whose every kernel boundary is
// a stateful fake.
func fakeBackend() (*ipvs.Backend, *ipvstest.Node) {
	node := ipvstest.NewNode(behaviour.NodeIP)
	return backendOn(node.IPVS, node.IPTables, node.Device, node.Sets, prometheus.NewRegistry()), node
}

// backendOn is the tests' Backend over the kernel boundaries given, for tests that wrap
// a fake to make it refuse or count, with its metrics in reg.
func backendOn(table ipvs.Interface, ipt iptables.Interface, dev ipvs.Device, sets ipvs.Sets, reg prometheus.Registerer) *ipvs.Backend {
	return ipvs.NewBackendWithKernel(table, ipt, dev, sets,
		ipvs.Config{Scheduler: "rr", ResolveConfig: proxier.ResolveConfig{ClusterCIDR: behaviour.ClusterCIDR}, MasqueradeMark: "0x4000"},
		reg, klog.Background())
}

// boundAddresses lists the addresses bound on the device, of both families, sorted.
func boundAddresses(t *testing.T, dev ipvs.Device) []netip.Addr {
	t.Helper()
	v4, err := dev.Addresses()
	if err != nil {
		t.Fatal(err)
	}
	v6, err := dev.AddressesIPv6()
	if err != nil {
		t.Fatal(err)
	}
	var out []netip.Addr
	for _, family := range []map[netip.Addr]bool{v4, v6} {
		for a := range family {
			out = append(out, a)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

// TestSyncAgainstFakes runs the whole Sync, full then partial, and checks that a full sync
// restores what was deleted behind the backend's back.
func TestSyncAgainstFakes(t *testing.T) {
	ctx := context.Background()
	state := behaviour.State()
	b, node := fakeBackend()
	// kernel counts what the node holds: virtual servers, bound addresses, set members.
	kernel := func() [3]int {
		t.Helper()
		servers, err := node.IPVS.VirtualServers()
		if err != nil {
			t.Fatal(err)
		}
		members, err := node.Sets.List()
		if err != nil {
			t.Fatal(err)
		}
		return [3]int{len(servers), len(boundAddresses(t, node.Device)), len(members)}
	}
	if err := b.Sync(ctx, state, proxier.Changes{Full: true}); err != nil {
		t.Fatalf("full sync: %v", err)
	}
	want := kernel()
	if slices.Contains(want[:], 0) {
		t.Fatalf("full sync programmed %d virtual servers, %d addresses, %d set members", want[0], want[1], want[2])
	}
	all := map[proxier.ServicePortName]struct{}{}
	for name := range state.Services {
		all[name] = struct{}{}
	}
	if err := b.Sync(ctx, state, proxier.Changes{ServicePorts: all}); err != nil {
		t.Fatalf("partial sync of every ServicePort: %v", err)
	}
	if got := kernel(); got != want {
		t.Errorf("partial sync of an unchanged state changed the kernel: %d/%d/%d, want %d/%d/%d",
			got[0], got[1], got[2], want[0], want[1], want[2])
	}
	servers, err := node.IPVS.VirtualServers()
	if err != nil {
		t.Fatal(err)
	}
	if err := node.IPVS.DeleteVirtualServer(servers[0]); err != nil {
		t.Fatal(err)
	}
	if err := node.Device.Unbind(boundAddresses(t, node.Device)[0]); err != nil {
		t.Fatal(err)
	}
	if err := b.Sync(ctx, state, proxier.Changes{Full: true}); err != nil {
		t.Fatalf("second full sync: %v", err)
	}
	if got := kernel(); got != want {
		t.Errorf("full sync did not restore what was deleted: %d/%d/%d, want %d/%d/%d",
			got[0], got[1], got[2], want[0], want[1], want[2])
	}
}
