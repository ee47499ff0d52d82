// Package conntrack deletes connection-tracking entries that would keep sending a
// connectionless flow (UDP) to where the rules no longer send it: the kernel applies NAT
// only to a flow's first packet, so a datagram flow keeps its old DNAT (or its lack of one)
// for as long as its conntrack entry lives, whatever the rules say now.
package conntrack

import (
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"github.com/vishvananda/netlink"
	v1 "k8s.io/api/core/v1"
)

// Filter selects conntrack entries; unset fields match anything.
type Filter struct {
	Protocol v1.Protocol
	// OrigDst and OrigDstPort match the destination the client used (a Service address).
	OrigDst     netip.Addr
	OrigDstPort uint16
	// ReplySrc matches the address replies come from: the endpoint the flow was DNATed to.
	ReplySrc netip.Addr
}

// Interface is the boundary to the kernel's connection tracking table.
type Interface interface {
	// Clear deletes the entries matching any of the filters and returns how many.
	//
	// Equivalent to: `conntrack -D -p udp --orig-dst IP --dport PORT [--reply-src EP]`
	Clear(ipv6 bool, filters ...Filter) (uint, error)
}

type kernel struct{}

// New returns the Interface for the current network namespace.
func New() Interface { return kernel{} }

var protocols = map[v1.Protocol]uint8{v1.ProtocolTCP: syscall.IPPROTO_TCP, v1.ProtocolUDP: syscall.IPPROTO_UDP, v1.ProtocolSCTP: syscall.IPPROTO_SCTP}

func (kernel) Clear(ipv6 bool, filters ...Filter) (uint, error) {
	if len(filters) == 0 {
		return 0, nil
	}
	family := netlink.InetFamily(netlink.FAMILY_V4)
	if ipv6 {
		family = netlink.FAMILY_V6
	}
	nf := make([]netlink.CustomConntrackFilter, 0, len(filters))
	for _, f := range filters {
		c := &netlink.ConntrackFilter{}
		var errs [4]error
		if p, ok := protocols[f.Protocol]; ok {
			errs[0] = c.AddProtocol(p)
		}
		if f.OrigDst.IsValid() {
			errs[1] = c.AddIP(netlink.ConntrackOrigDstIP, net.IP(f.OrigDst.AsSlice()))
		}
		if f.OrigDstPort != 0 {
			errs[2] = c.AddPort(netlink.ConntrackOrigDstPort, f.OrigDstPort)
		}
		if f.ReplySrc.IsValid() {
			errs[3] = c.AddIP(netlink.ConntrackReplySrcIP, net.IP(f.ReplySrc.AsSlice()))
		}
		for _, err := range errs {
			if err != nil {
				return 0, fmt.Errorf("conntrack filter %+v: %w", f, err)
			}
		}
		nf = append(nf, c)
	}
	n, err := netlink.ConntrackDeleteFilters(netlink.ConntrackTable, family, nf...)
	if err != nil {
		return n, fmt.Errorf("deleting conntrack entries: %w", err)
	}
	return n, nil
}
