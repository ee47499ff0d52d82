package ipvstest

import (
	"maps"
	"net/netip"
	"slices"
	"sync"

	"github.com/switchyard/switchyard/dummy"
)

// Device is kube-ipvs0 with the Service addresses bound on it, and the node's own
// addresses, implementing ipvs.Device. It is safe for concurrent use.
type Device struct {
	mu    sync.Mutex
	bound map[netip.Addr]bool
	node  []netip.Addr
}

// NewDevice returns a device with nothing bound, on a node whose own addresses are
// nodeIPs (of either family).
func NewDevice(nodeIPs ...netip.Addr) *Device {
	return &Device{bound: map[netip.Addr]bool{}, node: slices.Clone(nodeIPs)}
}

// Refresh is part of ipvs.Device: the fake device never goes away.
func (d *Device) Refresh() error { return nil }

// Name is part of ipvs.Device.
func (d *Device) Name() string { return dummy.DefaultName }

// Addresses is part of ipvs.Device.
func (d *Device) Addresses() (map[netip.Addr]bool, error) { return d.addresses(false), nil }

// AddressesIPv6 is part of ipvs.Device.
func (d *Device) AddressesIPv6() (map[netip.Addr]bool, error) { return d.addresses(true), nil }

func (d *Device) addresses(ipv6 bool) map[netip.Addr]bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := map[netip.Addr]bool{}
	for a := range d.bound {
		if a.Is6() == ipv6 {
			out[a] = true
		}
	}
	return out
}

// Bind is part of ipvs.Device.
func (d *Device) Bind(a netip.Addr) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.bound[a] = true
	return nil
}

// Unbind is part of ipvs.Device.
func (d *Device) Unbind(a netip.Addr) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.bound, a)
	return nil
}

// NodeAddresses is part of ipvs.Device.
func (d *Device) NodeAddresses(ipv6 bool) ([]netip.Addr, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.DeleteFunc(slices.Clone(d.node), func(a netip.Addr) bool { return a.Is6() != ipv6 }), nil
}

// Local lists every address the node takes a packet to as its own: its node addresses,
// then the Service addresses bound on the device (sorted). It is what a traced packet's
// iptablestest.Packet.Local holds in IPVS mode.
func (d *Device) Local() []netip.Addr {
	d.mu.Lock()
	defer d.mu.Unlock()
	bound := slices.SortedFunc(maps.Keys(d.bound), netip.Addr.Compare)
	return append(slices.Clone(d.node), bound...)
}
