package ipvs

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"

	"github.com/switchyard/switchyard/dummy"
	"github.com/switchyard/switchyard/internal/behaviour"
	"github.com/switchyard/switchyard/iptables/iptablestest"
	"github.com/switchyard/switchyard/proxier"
)

// fakeIPVS is a stateful IPVS table: virtual servers by key, each with its real servers.
type fakeIPVS struct {
	mu      sync.Mutex
	servers map[Key]*VirtualServer
	reals   map[Key]map[netip.AddrPort]*RealServer
}

func newFakeIPVS() *fakeIPVS {
	return &fakeIPVS{servers: map[Key]*VirtualServer{}, reals: map[Key]map[netip.AddrPort]*RealServer{}}
}

func (f *fakeIPVS) VirtualServers() ([]*VirtualServer, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*VirtualServer
	for _, v := range f.servers {
		c := *v
		out = append(out, &c)
	}
	return out, nil
}

// setServer adds (add) or replaces (!add) a virtual server, as the kernel refuses a
// duplicate add or an update of a missing one.
func (f *fakeIPVS) setServer(v *VirtualServer, add bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, exists := f.servers[v.Key()]; exists == add {
		return fmt.Errorf("virtual server %s: exists=%v", v.Key(), exists)
	}
	if add {
		f.reals[v.Key()] = map[netip.AddrPort]*RealServer{}
	}
	c := *v
	f.servers[v.Key()] = &c
	return nil
}

func (f *fakeIPVS) AddVirtualServer(v *VirtualServer) error    { return f.setServer(v, true) }
func (f *fakeIPVS) UpdateVirtualServer(v *VirtualServer) error { return f.setServer(v, false) }

func (f *fakeIPVS) DeleteVirtualServer(v *VirtualServer) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.servers[v.Key()]; !ok {
		return fmt.Errorf("no virtual server %s", v.Key())
	}
	delete(f.servers, v.Key())
	delete(f.reals, v.Key())
	return nil
}

func (f *fakeIPVS) RealServers(v *VirtualServer) ([]*RealServer, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	rs, ok := f.reals[v.Key()]
	if !ok {
		return nil, fmt.Errorf("no virtual server %s", v.Key())
	}
	var out []*RealServer
	for _, r := range rs {
		c := *r
		out = append(out, &c)
	}
	return out, nil
}

// setReal adds (add) or replaces (!add) a real server, as the kernel refuses a duplicate
// add or an update of a missing one.
func (f *fakeIPVS) setReal(v *VirtualServer, r *RealServer, add bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	rs, ok := f.reals[v.Key()]
	if !ok {
		return fmt.Errorf("no virtual server %s", v.Key())
	}
	if _, exists := rs[r.Endpoint()]; exists == add {
		return fmt.Errorf("real server %s of %s: exists=%v", r.Endpoint(), v.Key(), exists)
	}
	c := *r
	rs[r.Endpoint()] = &c
	return nil
}

func (f *fakeIPVS) AddRealServer(v *VirtualServer, r *RealServer) error {
	return f.setReal(v, r, true)
}

func (f *fakeIPVS) UpdateRealServer(v *VirtualServer, r *RealServer) error {
	return f.setReal(v, r, false)
}

func (f *fakeIPVS) DeleteRealServer(v *VirtualServer, r *RealServer) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.reals[v.Key()][r.Endpoint()]; !ok {
		return fmt.Errorf("no real server %s of %s", r.Endpoint(), v.Key())
	}
	delete(f.reals[v.Key()], r.Endpoint())
	return nil
}

// fakeDevice is kube-ipvs0 with its bound addresses, and the node's own addresses.
type fakeDevice struct {
	bound map[netip.Addr]bool
	node  []netip.Addr
}

func (d *fakeDevice) Refresh() error { return nil }
func (d *fakeDevice) Name() string   { return dummy.DefaultName }

func (d *fakeDevice) addresses(ipv6 bool) (map[netip.Addr]bool, error) {
	out := map[netip.Addr]bool{}
	for a := range d.bound {
		if a.Is6() == ipv6 {
			out[a] = true
		}
	}
	return out, nil
}

func (d *fakeDevice) Addresses() (map[netip.Addr]bool, error)     { return d.addresses(false) }
func (d *fakeDevice) AddressesIPv6() (map[netip.Addr]bool, error) { return d.addresses(true) }
func (d *fakeDevice) Bind(a netip.Addr) error                     { d.bound[a] = true; return nil }
func (d *fakeDevice) Unbind(a netip.Addr) error                   { delete(d.bound, a); return nil }

func (d *fakeDevice) NodeAddresses(ipv6 bool) ([]netip.Addr, error) {
	return slices.DeleteFunc(slices.Clone(d.node), func(a netip.Addr) bool { return a.Is6() != ipv6 }), nil
}

// fakeSets keeps the members of the real sets' names, so the static rules' names match.
type fakeSets struct {
	ipsets
	members map[setEntry]bool
}

func (s *fakeSets) ensure() error                    { return nil }
func (s *fakeSets) list() (map[setEntry]bool, error) { return maps.Clone(s.members), nil }
func (s *fakeSets) add(e setEntry) error             { s.members[e] = true; return nil }
func (s *fakeSets) del(e setEntry) error             { delete(s.members, e); return nil }

// fakeBackend is a Backend whose every kernel boundary is a stateful fake.
func fakeBackend() (*Backend, *fakeIPVS, *fakeDevice, *fakeSets) {
	fipvs, dev := newFakeIPVS(), &fakeDevice{bound: map[netip.Addr]bool{}, node: []netip.Addr{behaviour.NodeIP}}
	sets := &fakeSets{members: map[setEntry]bool{}}
	b := NewBackend(fipvs, iptablestest.NewFake(), nil, Config{Scheduler: "rr", ResolveConfig: proxier.ResolveConfig{ClusterCIDR: behaviour.ClusterCIDR}},
		prometheus.NewRegistry(), klog.Background())
	b.dev, b.sets = dev, sets
	return b, fipvs, dev, sets
}

// TestSyncAgainstFakes runs the whole Sync, full then partial, and checks that a full sync
// restores what was deleted behind the backend's back.
func TestSyncAgainstFakes(t *testing.T) {
	ctx := context.Background()
	state := behaviour.State()
	b, fipvs, dev, sets := fakeBackend()
	if err := b.Sync(ctx, state, proxier.Changes{Full: true}); err != nil {
		t.Fatalf("full sync: %v", err)
	}
	servers, bound, members := len(fipvs.servers), len(dev.bound), len(sets.members)
	if servers == 0 || bound == 0 || members == 0 {
		t.Fatalf("full sync programmed %d virtual servers, %d addresses, %d set members", servers, bound, members)
	}
	all := map[proxier.ServicePortName]struct{}{}
	for name := range state.Services {
		all[name] = struct{}{}
	}
	if err := b.Sync(ctx, state, proxier.Changes{ServicePorts: all}); err != nil {
		t.Fatalf("partial sync of every ServicePort: %v", err)
	}
	if len(fipvs.servers) != servers || len(dev.bound) != bound || len(sets.members) != members {
		t.Errorf("partial sync of an unchanged state changed the kernel: %d/%d/%d, want %d/%d/%d",
			len(fipvs.servers), len(dev.bound), len(sets.members), servers, bound, members)
	}
	for k := range fipvs.servers {
		delete(fipvs.servers, k)
		delete(fipvs.reals, k)
		break
	}
	for a := range dev.bound {
		delete(dev.bound, a)
		break
	}
	if err := b.Sync(ctx, state, proxier.Changes{Full: true}); err != nil {
		t.Fatalf("second full sync: %v", err)
	}
	if len(fipvs.servers) != servers || len(dev.bound) != bound || len(sets.members) != members {
		t.Errorf("full sync did not restore what was deleted: %d/%d/%d, want %d/%d/%d",
			len(fipvs.servers), len(dev.bound), len(sets.members), servers, bound, members)
	}
}
