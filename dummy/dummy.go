// Package dummy manages the kube-ipvs0 dummy device: IPVS only intercepts traffic to
// addresses the node considers its own, so every Service address programmed in IPVS mode
// is bound on this device.
package dummy

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// DefaultName is the device name kube-proxy uses; operators' tooling looks for it.
const DefaultName = "kube-ipvs0"

// ownerSuffix marks the IPv4 addresses switchyard bound: an address label must start with
// the device name, and "kube-ipvs0:swyd" is the longest label (15 bytes) that fits. Only
// labelled addresses are ever removed, so an address someone else put on the device stays.
const ownerSuffix = ":swyd"

// Device is the dummy device and the Service addresses bound on it.
type Device struct {
	link  netlink.Link
	label string
}

// Ensure returns the device, creating it when it is missing. Like kube-proxy, it leaves
// the device down: addresses on a down device still count as local for routing, which is
// all IPVS needs, and a down device answers no ARP for them.
//
// Equivalent to: `ip link add kube-ipvs0 type dummy`
func Ensure(name string) (*Device, error) {
	if len(name+ownerSuffix) > unix.IFNAMSIZ-1 {
		return nil, fmt.Errorf("dummy device name %q is too long to label its addresses", name)
	}
	d, err := Lookup(name)
	if err != nil {
		return nil, err
	}
	if d == nil {
		if err := netlink.LinkAdd(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: name}}); err != nil && !errors.Is(err, unix.EEXIST) {
			return nil, fmt.Errorf("creating dummy device %s (is the dummy kernel module available?): %w", name, err)
		}
		if d, err = Lookup(name); err != nil || d == nil {
			return nil, fmt.Errorf("finding dummy device %s after creating it: %w", name, err)
		}
	}
	if d.link.Type() != "dummy" {
		return nil, fmt.Errorf("%s exists but is a %s device, not a dummy", name, d.link.Type())
	}
	return d, nil
}

// Refresh re-creates the device when it is gone (`kube-proxy --cleanup`, or an operator,
// deleted it with every address on it), so that the next bind lands on a live link, as
// kube-proxy ensures the device on every sync.
func (d *Device) Refresh() error {
	fresh, err := Ensure(d.Name())
	if err != nil {
		return err
	}
	d.link = fresh.link
	return nil
}

// Index is the device's interface index.
func (d *Device) Index() int { return d.link.Attrs().Index }

// Name is the device's name.
func (d *Device) Name() string { return d.link.Attrs().Name }

// Addresses lists the addresses switchyard bound on the device. A dump the kernel reports
// as interrupted is an error, so that a partial list is never mistaken for "unbound".
//
// Equivalent to: `ip -4 addr show dev kube-ipvs0 label kube-ipvs0:swyd`
func (d *Device) Addresses() (map[netip.Addr]bool, error) {
	addrs, err := netlink.AddrList(d.link, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("listing addresses on %s: %w", d.Name(), err)
	}
	out := make(map[netip.Addr]bool, len(addrs))
	for _, a := range addrs {
		if a.Label != d.label {
			continue
		}
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			out[ip.Unmap()] = true
		}
	}
	return out, nil
}

// AddressesIPv6 lists the global IPv6 addresses on the device. IPv6 addresses carry no
// label, so the caller decides which of them are ours.
//
// Equivalent to: `ip -6 addr show dev kube-ipvs0 scope global`
func (d *Device) AddressesIPv6() (map[netip.Addr]bool, error) {
	addrs, err := netlink.AddrList(d.link, netlink.FAMILY_V6)
	if err != nil {
		return nil, fmt.Errorf("listing IPv6 addresses on %s: %w", d.Name(), err)
	}
	out := make(map[netip.Addr]bool, len(addrs))
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && !ip.IsLinkLocalUnicast() {
			out[ip] = true
		}
	}
	return out, nil
}

// Bind binds a Service address. Binding one that is already bound is not an error.
//
// Equivalent to: `ip addr add ADDR/32 dev kube-ipvs0 label kube-ipvs0:swyd`
func (d *Device) Bind(a netip.Addr) error {
	if err := netlink.AddrAdd(d.link, d.addr(a)); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("binding %s on %s: %w", a, d.Name(), err)
	}
	return nil
}

// Unbind removes a Service address. Removing one that is not bound is not an error.
//
// Equivalent to: `ip addr del ADDR/32 dev kube-ipvs0`
func (d *Device) Unbind(a netip.Addr) error {
	if err := netlink.AddrDel(d.link, d.addr(a)); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
		return fmt.Errorf("unbinding %s from %s: %w", a, d.Name(), err)
	}
	return nil
}

func (d *Device) addr(a netip.Addr) *netlink.Addr {
	bits := a.BitLen()
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(bits, bits)}}
	if a.Is4() {
		addr.Label = d.label
	} else {
		// No duplicate address detection: the address is the node's own Service
		// address, usable at once rather than after DAD.
		addr.Flags = unix.IFA_F_NODAD
	}
	return addr
}

// Lookup returns the device if it exists, or nil.
func Lookup(name string) (*Device, error) {
	link, err := netlink.LinkByName(name)
	var notFound netlink.LinkNotFoundError
	switch {
	case errors.As(err, &notFound):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("finding %s: %w", name, err)
	}
	return &Device{link: link, label: name + ownerSuffix}, nil
}

// DeleteIfUnused removes the device when no address is left on it, ours or anyone's
// (--cleanup): it is ours, but an address someone else bound there must keep working.
//
// Equivalent to: `ip link del kube-ipvs0`
func (d *Device) DeleteIfUnused() error {
	all, err := netlink.AddrList(d.link, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("listing addresses on %s: %w", d.Name(), err)
	}
	for _, a := range all {
		if !a.IP.IsLinkLocalUnicast() {
			return nil
		}
	}
	if err := netlink.LinkDel(d.link); err != nil {
		return fmt.Errorf("deleting %s: %w", d.Name(), err)
	}
	return nil
}
