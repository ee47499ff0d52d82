package ipvs

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	v1 "k8s.io/api/core/v1"
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

// Lookup is part of iptablestest.IPVS. IPVS schedules new connections to the real servers
// of weight above 0 only: those of weight 0 are draining.
func (f *fakeIPVS) Lookup(protocol string, dst netip.AddrPort) ([]netip.AddrPort, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	key := Key{dst.Addr(), kubeProtocol(protocol), dst.Port()}
	if _, ok := f.servers[key]; !ok {
		return nil, false
	}
	var reals []netip.AddrPort
	for ep, r := range f.reals[key] {
		if r.Weight > 0 {
			reals = append(reals, ep)
		}
	}
	slices.SortFunc(reals, netip.AddrPort.Compare)
	return reals, true
}

// kubeProtocol is the protocol iptables spells "tcp" as Kubernetes spells it.
func kubeProtocol(protocol string) v1.Protocol { return v1.Protocol(strings.ToUpper(protocol)) }

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

// Match is part of iptablestest.Sets: whether the set named holds the member that flags
// select from p, one flag (src or dst) for each dimension of the set's type, as
// `-m set --match-set NAME FLAGS` takes them. A hash:ip,port,net set holds the member
// when one of its nets contains the address. A bitmap:port set holds ports alone, which
// the kernel finds in TCP and UDP packets only (ip_set_get_ip_port).
func (s *fakeSets) Match(name, flags string, p iptablestest.Packet) (bool, error) {
	var set, typ string
	for ours, t := range setTypes {
		if s.name(ours) == name {
			set, typ = ours, t
		}
	}
	if typ == "" {
		return false, fmt.Errorf("no ipset %s", name)
	}
	kind, dimensions, _ := strings.Cut(typ, ":")
	if kind != "hash" && typ != "bitmap:port" {
		return false, fmt.Errorf("ipset %s: the fake does not know the type %s", name, typ)
	}
	dims, dirs := strings.Split(dimensions, ","), strings.Split(flags, ",")
	if len(dirs) != len(dims) {
		return false, fmt.Errorf("ipset %s of type %s matched with the flags %s", name, typ, flags)
	}
	want := setEntry{set: set}
	var inNet netip.Addr
	for i, dim := range dims {
		addr := p.Dst.Addr()
		switch dirs[i] {
		case "dst":
		case "src":
			addr = p.Src
		default:
			return false, fmt.Errorf("ipset %s: unknown flag %q in %s", name, dirs[i], flags)
		}
		switch {
		case dim == "port" && dirs[i] == "src":
			return false, fmt.Errorf("ipset %s: the tracer's packets have no source port (flags %s)", name, flags)
		case dim == "port" && kind == "bitmap":
			if p.Protocol != "tcp" && p.Protocol != "udp" {
				return false, nil
			}
			want.port = p.Dst.Port()
		case dim == "port":
			want.protocol, want.port = kubeProtocol(p.Protocol), p.Dst.Port()
		case dim == "ip" && i == 0:
			want.ip = addr
		case dim == "ip":
			want.ip2 = addr
		case dim == "net":
			inNet = addr
		default:
			return false, fmt.Errorf("ipset %s: the fake does not know the type %s", name, typ)
		}
	}
	if !inNet.IsValid() {
		return s.members[want], nil
	}
	for e := range s.members {
		net := e.net
		e.net = netip.Prefix{}
		if e == want && net.Contains(inNet) {
			return true, nil
		}
	}
	return false, nil
}

// fakeNode is every kernel boundary of a Backend as a stateful fake.
type fakeNode struct {
	ipvs *fakeIPVS
	dev  *fakeDevice
	sets *fakeSets
	ipt  *iptablestest.Fake
}

// fakeBackend is a Backend whose every kernel boundary is a stateful fake.
func fakeBackend() (*Backend, *fakeNode) {
	node := &fakeNode{ipvs: newFakeIPVS(), dev: &fakeDevice{bound: map[netip.Addr]bool{}, node: []netip.Addr{behaviour.NodeIP}},
		sets: &fakeSets{members: map[setEntry]bool{}}, ipt: iptablestest.NewFake()}
	b := NewBackend(node.ipvs, node.ipt, nil, Config{Scheduler: "rr", ResolveConfig: proxier.ResolveConfig{ClusterCIDR: behaviour.ClusterCIDR}, MasqueradeMark: "0x4000"},
		prometheus.NewRegistry(), klog.Background())
	b.dev, b.sets = node.dev, node.sets
	return b, node
}

// local lists the node's own addresses, with the Service addresses bound on kube-ipvs0.
func (n *fakeNode) local() []netip.Addr {
	return append(slices.Clone(n.dev.node), slices.Collect(maps.Keys(n.dev.bound))...)
}

// trace follows a new connection through the node's iptables rules, with its ipsets, and
// through IPVS where the kernel's IPVS hooks take it.
func (n *fakeNode) trace(p iptablestest.Packet) ([]iptablestest.Result, error) {
	return n.ipt.Trace(p, n.sets, iptablestest.WithIPVS(n.ipvs))
}

// TestSyncAgainstFakes runs the whole Sync, full then partial, and checks that a full sync
// restores what was deleted behind the backend's back.
func TestSyncAgainstFakes(t *testing.T) {
	ctx := context.Background()
	state := behaviour.State()
	b, node := fakeBackend()
	fipvs, dev, sets := node.ipvs, node.dev, node.sets
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

// TestFakeSetsMatch checks the fake's `-m set` answers for each set type the rules use,
// and that what it cannot answer is an error rather than a miss.
func TestFakeSetsMatch(t *testing.T) {
	vip, pod := netip.MustParseAddr("10.96.0.10"), netip.MustParseAddr("10.244.1.2")
	sets := &fakeSets{members: map[setEntry]bool{
		{set: serviceIPsSet, ip: vip}:                                                                         true,
		{set: clusterIPSet, ip: vip, protocol: v1.ProtocolTCP, port: 80}:                                      true,
		{set: loopbackSet, ip: pod, protocol: v1.ProtocolTCP, port: 8080, ip2: pod}:                           true,
		{set: loadBalancerSourceSet, ip: vip, protocol: v1.ProtocolTCP, port: 80, net: behaviour.ClusterCIDR}: true,
		{set: healthCheckNodePortSet, port: 32000}:                                                            true,
	}}
	toHealthCheck := func(protocol string, port uint16) iptablestest.Packet {
		return iptablestest.Packet{Protocol: protocol, Src: behaviour.Outside, Dst: netip.AddrPortFrom(behaviour.NodeIP, port)}
	}
	toVIP := iptablestest.Packet{Protocol: "tcp", Src: pod, Dst: netip.AddrPortFrom(vip, 80)}
	tests := []struct {
		name, set, flags string
		pkt              iptablestest.Packet
		want             bool
		wantErr          string
	}{
		{name: "hash:ip", set: serviceIPsSet, flags: "dst", pkt: toVIP, want: true},
		{name: "hash:ip, by source", set: serviceIPsSet, flags: "src", pkt: toVIP, want: false},
		{name: "hash:ip,port", set: clusterIPSet, flags: "dst,dst", pkt: toVIP, want: true},
		{name: "hash:ip,port, other protocol", set: clusterIPSet, flags: "dst,dst", pkt: iptablestest.Packet{Protocol: "udp", Src: pod, Dst: toVIP.Dst}, want: false},
		{name: "hash:ip,port,ip", set: loopbackSet, flags: "dst,dst,src", pkt: iptablestest.Packet{Protocol: "tcp", Src: pod, Dst: netip.AddrPortFrom(pod, 8080)}, want: true},
		{name: "hash:ip,port,net, inside the net", set: loadBalancerSourceSet, flags: "dst,dst,src", pkt: toVIP, want: true},
		{name: "hash:ip,port,net, outside the net", set: loadBalancerSourceSet, flags: "dst,dst,src", pkt: iptablestest.Packet{Protocol: "tcp", Src: behaviour.Outside, Dst: toVIP.Dst}, want: false},
		{name: "bitmap:port, on any address", set: healthCheckNodePortSet, flags: "dst", pkt: toHealthCheck("tcp", 32000), want: true},
		{name: "bitmap:port, another port", set: healthCheckNodePortSet, flags: "dst", pkt: toHealthCheck("tcp", 32001), want: false},
		{name: "bitmap:port, UDP", set: healthCheckNodePortSet, flags: "dst", pkt: toHealthCheck("udp", 32000), want: true},
		{name: "bitmap:port, SCTP has no port for it", set: healthCheckNodePortSet, flags: "dst", pkt: toHealthCheck("sctp", 32000), want: false},
		{name: "bitmap:port, by source port", set: healthCheckNodePortSet, flags: "src", pkt: toHealthCheck("tcp", 32000), wantErr: "no source port"},
		{name: "bitmap:port, flags for another type", set: healthCheckNodePortSet, flags: "dst,dst", pkt: toHealthCheck("tcp", 32000), wantErr: "matched with the flags"},
		{name: "an unknown set", set: "KUBE-CLUSTER-IP", flags: "dst,dst", pkt: toVIP, wantErr: "no ipset"},
		{name: "flags for another type", set: clusterIPSet, flags: "dst", pkt: toVIP, wantErr: "matched with the flags"},
		{name: "a source port", set: clusterIPSet, flags: "dst,src", pkt: toVIP, wantErr: "no source port"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := sets.Match(tc.set, tc.flags, tc.pkt)
			if tc.wantErr != "" || err != nil {
				if err == nil || tc.wantErr == "" || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Match: %v, want an error containing %q", err, tc.wantErr)
				}
				return
			}
			if got != tc.want {
				t.Errorf("Match(%s, %s) = %v, want %v", tc.set, tc.flags, got, tc.want)
			}
		})
	}
}
