// Package kubeaddr reads IP addresses and CIDRs the way kube-proxy does, which accepts
// the legacy forms the apiserver still takes with a warning (k8s.io/utils/net's "sloppy"
// parsers), so that an address kube-proxy honours is honoured here too.
package kubeaddr

import (
	"net/netip"

	netutils "k8s.io/utils/net"
)

// ParseIP reads an IP address as kube-proxy does: the legacy forms, leading zeros
// ("010.1.2.3" is 10.1.2.3) and IPv4-mapped IPv6 ("::ffff:10.1.2.3"), are the IPv4
// address they denote.
func ParseIP(s string) (netip.Addr, bool) {
	a, ok := netip.AddrFromSlice(netutils.ParseIPSloppy(s))
	return a.Unmap(), ok
}

// ParsePrefix reads a CIDR as kube-proxy does, with ParseIP's legacy forms: an
// IPv4-mapped IPv6 CIDR is the IPv4 one it holds, as net.IPNet.Contains treats it.
func ParsePrefix(s string) (netip.Prefix, bool) {
	_, ipnet, err := netutils.ParseCIDRSloppy(s)
	if err != nil {
		return netip.Prefix{}, false
	}
	a, _ := netip.AddrFromSlice(ipnet.IP)
	ones, _ := ipnet.Mask.Size()
	if a.Is4In6() {
		ones -= 96
	}
	p := netip.PrefixFrom(a.Unmap(), ones)
	return p, p.IsValid()
}
