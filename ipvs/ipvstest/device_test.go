package ipvstest

import (
	"maps"
	"net/netip"
	"slices"
	"testing"
)

// TestDevice: addresses bound and unbound are listed by family, as the kernel lists them,
// binding twice and unbinding what is not bound are no errors, and the node's own
// addresses are listed by family apart from them.
func TestDevice(t *testing.T) {
	node4, node6 := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1")
	vip4, vip6, gone := netip.MustParseAddr("10.96.0.10"), netip.MustParseAddr("fd00:10:96::10"), netip.MustParseAddr("10.96.0.11")
	d := NewDevice(node4, node6)
	for _, a := range []netip.Addr{vip4, vip6, vip4, gone} {
		if err := d.Bind(a); err != nil {
			t.Fatalf("Bind(%s): %v", a, err)
		}
	}
	for range 2 {
		if err := d.Unbind(gone); err != nil {
			t.Fatalf("Unbind(%s): %v", gone, err)
		}
	}
	v4, err := d.Addresses()
	if err != nil {
		t.Fatal(err)
	}
	v6, err := d.AddressesIPv6()
	if err != nil {
		t.Fatal(err)
	}
	if got := keys(v4); !slices.Equal(got, []netip.Addr{vip4}) {
		t.Errorf("Addresses() = %v, want %v", got, vip4)
	}
	if got := keys(v6); !slices.Equal(got, []netip.Addr{vip6}) {
		t.Errorf("AddressesIPv6() = %v, want %v", got, vip6)
	}
	for _, ipv6 := range []bool{false, true} {
		got, err := d.NodeAddresses(ipv6)
		if err != nil {
			t.Fatal(err)
		}
		want := []netip.Addr{node4}
		if ipv6 {
			want = []netip.Addr{node6}
		}
		if !slices.Equal(got, want) {
			t.Errorf("NodeAddresses(ipv6 %v) = %v, want %v", ipv6, got, want)
		}
	}
	if got, want := d.Local(), []netip.Addr{node4, node6, vip4, vip6}; !slices.Equal(got, want) {
		t.Errorf("Local() = %v, want %v", got, want)
	}
}

func keys(m map[netip.Addr]bool) []netip.Addr {
	return slices.SortedFunc(maps.Keys(m), netip.Addr.Compare)
}
