package ipvstest

import (
	"errors"
	"net/netip"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"

	"github.com/switchyard/switchyard/ipvs"
)

// TestIPVSRefusesWhatTheKernelRefuses: each operation on what exists, or does not, fails
// with the errno the kernel's ip_vs_ctl.c returns, and changes nothing.
func TestIPVSRefusesWhatTheKernelRefuses(t *testing.T) {
	vs := &ipvs.VirtualServer{Address: netip.MustParseAddr("10.96.0.10"), Protocol: v1.ProtocolTCP, Port: 80, Scheduler: "rr"}
	missing := &ipvs.VirtualServer{Address: netip.MustParseAddr("10.96.0.11"), Protocol: v1.ProtocolTCP, Port: 80, Scheduler: "rr"}
	rs := &ipvs.RealServer{Address: netip.MustParseAddr("10.244.1.2"), Port: 8080, Weight: 1}
	other := &ipvs.RealServer{Address: netip.MustParseAddr("10.244.2.2"), Port: 8080, Weight: 1}
	f := NewIPVS()
	if err := f.AddVirtualServer(vs); err != nil {
		t.Fatal(err)
	}
	if err := f.AddRealServer(vs, rs); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		op   func() error
		want syscall.Errno
	}{
		{"adding a virtual server that exists", func() error { return f.AddVirtualServer(vs) }, syscall.EEXIST},
		{"updating a missing virtual server", func() error { return f.UpdateVirtualServer(missing) }, syscall.ESRCH},
		{"deleting a missing virtual server", func() error { return f.DeleteVirtualServer(missing) }, syscall.ESRCH},
		{"adding a real server to a missing virtual server", func() error { return f.AddRealServer(missing, rs) }, syscall.ESRCH},
		{"adding a real server that exists", func() error { return f.AddRealServer(vs, rs) }, syscall.EEXIST},
		{"updating a missing real server", func() error { return f.UpdateRealServer(vs, other) }, syscall.ENOENT},
		{"deleting a missing real server", func() error { return f.DeleteRealServer(vs, other) }, syscall.ENOENT},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.op(); !errors.Is(err, tc.want) {
				t.Errorf("got %v, want %v", err, tc.want)
			}
			if reals, ok := f.Lookup("tcp", netip.AddrPortFrom(vs.Address, vs.Port)); !ok || !slices.Equal(reals, []netip.AddrPort{rs.Endpoint()}) {
				t.Errorf("the table changed: %v %v", reals, ok)
			}
		})
	}
	if _, err := f.RealServers(missing); err == nil {
		t.Errorf("listing the real servers of a missing virtual server: no error")
	}
}

// TestIPVSState: the table holds what was written, hands out copies, and a virtual
// server takes its real servers with it when it goes.
func TestIPVSState(t *testing.T) {
	f := NewIPVS()
	vs := &ipvs.VirtualServer{Address: netip.MustParseAddr("10.96.0.10"), Protocol: v1.ProtocolTCP, Port: 80, Scheduler: "rr"}
	if err := f.AddVirtualServer(vs); err != nil {
		t.Fatal(err)
	}
	vs.Scheduler = "wrr" // the caller's copy: the table keeps rr
	if err := f.AddRealServer(vs, &ipvs.RealServer{Address: netip.MustParseAddr("10.244.1.2"), Port: 8080, Weight: 1}); err != nil {
		t.Fatal(err)
	}
	listed, err := f.VirtualServers()
	if err != nil {
		t.Fatal(err)
	}
	if len(listed) != 1 || listed[0].Scheduler != "rr" {
		t.Fatalf("VirtualServers() = %v, want the one added, with rr", listed)
	}
	listed[0].Scheduler = "sh"
	if err := f.UpdateVirtualServer(&ipvs.VirtualServer{Address: vs.Address, Protocol: vs.Protocol, Port: vs.Port, Scheduler: "mh", AffinityTimeout: 60}); err != nil {
		t.Fatal(err)
	}
	again, err := f.VirtualServers()
	if err != nil {
		t.Fatal(err)
	}
	if want := (ipvs.VirtualServer{Address: vs.Address, Protocol: vs.Protocol, Port: vs.Port, Scheduler: "mh", AffinityTimeout: 60}); len(again) != 1 || *again[0] != want {
		t.Errorf("after the update: %v, want %+v", again, want)
	}
	// Only the key counts in finding a virtual server.
	key := &ipvs.VirtualServer{Address: vs.Address, Protocol: vs.Protocol, Port: vs.Port}
	reals, err := f.RealServers(key)
	if err != nil || len(reals) != 1 || reals[0].Weight != 1 {
		t.Fatalf("RealServers() = %v, %v; want the one added", reals, err)
	}
	reals[0].Weight = 0
	if err := f.UpdateRealServer(key, reals[0]); err != nil {
		t.Fatal(err)
	}
	if reals, err := f.RealServers(key); err != nil || reals[0].Weight != 0 {
		t.Errorf("after the update: %v, %v; want weight 0", reals, err)
	}
	if err := f.DeleteVirtualServer(key); err != nil {
		t.Fatal(err)
	}
	if listed, _ := f.VirtualServers(); len(listed) != 0 {
		t.Errorf("after the delete: %v", listed)
	}
	// Added again, it starts without the real servers it had.
	if err := f.AddVirtualServer(vs); err != nil {
		t.Fatal(err)
	}
	if reals, err := f.RealServers(key); err != nil || len(reals) != 0 {
		t.Errorf("a virtual server added again: real servers %v, %v; want none", reals, err)
	}
}

// TestIPVSLookup: a new connection goes to the real servers of weight above 0, in a
// stable order, of the virtual server on its protocol, address and port.
func TestIPVSLookup(t *testing.T) {
	f := NewIPVS()
	vip := netip.MustParseAddrPort("10.96.0.10:80")
	vs := &ipvs.VirtualServer{Address: vip.Addr(), Protocol: v1.ProtocolTCP, Port: vip.Port(), Scheduler: "rr"}
	empty := &ipvs.VirtualServer{Address: vip.Addr(), Protocol: v1.ProtocolUDP, Port: vip.Port(), Scheduler: "rr"}
	for _, v := range []*ipvs.VirtualServer{vs, empty} {
		if err := f.AddVirtualServer(v); err != nil {
			t.Fatal(err)
		}
	}
	for _, r := range []ipvs.RealServer{
		{Address: netip.MustParseAddr("10.244.2.2"), Port: 8080, Weight: 1},
		{Address: netip.MustParseAddr("10.244.1.2"), Port: 8080, Weight: 1},
		{Address: netip.MustParseAddr("10.244.3.2"), Port: 8080, Weight: 0}, // draining
	} {
		if err := f.AddRealServer(vs, &r); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name      string
		protocol  string
		dst       netip.AddrPort
		wantReals []netip.AddrPort
		wantOK    bool
	}{
		{name: "the serving real servers, sorted", protocol: "tcp", dst: vip,
			wantReals: []netip.AddrPort{netip.MustParseAddrPort("10.244.1.2:8080"), netip.MustParseAddrPort("10.244.2.2:8080")}, wantOK: true},
		{name: "a virtual server without real servers", protocol: "udp", dst: vip, wantOK: true},
		{name: "another protocol", protocol: "sctp", dst: vip},
		{name: "another port", protocol: "tcp", dst: netip.AddrPortFrom(vip.Addr(), 81)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			reals, ok := f.Lookup(tc.protocol, tc.dst)
			if ok != tc.wantOK {
				t.Errorf("found %v, want %v", ok, tc.wantOK)
			}
			if diff := cmp.Diff(tc.wantReals, reals, cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); diff != "" {
				t.Errorf("real servers (-want +got):\n%s", diff)
			}
		})
	}
}

// TestIPVSTimeouts: the table starts with the kernel's timeouts, keeps given ones in
// whole seconds, and leaves one given as 0 (or under a second, which is 0 seconds) as it
// is, as the kernel's ip_vs_set_timeout does.
func TestIPVSTimeouts(t *testing.T) {
	f := NewIPVS()
	if got := f.Timeouts(); got != DefaultTimeouts {
		t.Fatalf("a new table's timeouts are %+v, want the kernel's %+v", got, DefaultTimeouts)
	}
	if err := f.ConfigureTimeouts(ipvs.Timeouts{TCP: 2*time.Hour + 500*time.Millisecond, TCPFin: 0, UDP: 500 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	want := ipvs.Timeouts{TCP: 2 * time.Hour, TCPFin: DefaultTimeouts.TCPFin, UDP: DefaultTimeouts.UDP}
	if got := f.Timeouts(); got != want {
		t.Errorf("timeouts %+v, want %+v", got, want)
	}
}
