// Package conntrack is switchyard's part in connection tracking. At startup, Configure
// sizes the table and sets its timeouts as kube-proxy does (settings.go). While the proxy
// runs, Interface deletes the entries that would keep sending a connectionless flow
// (UDP) to where the rules no longer send it: the kernel applies NAT only to a flow's
// first packet, so a datagram flow keeps its old DNAT (or its lack of one) for as long as
// its conntrack entry lives, whatever the rules say now.
package conntrack

import (
	"fmt"
	"net/netip"
	"slices"
	"syscall"

	"github.com/vishvananda/netlink"
	v1 "k8s.io/api/core/v1"
)

// Filter selects the entries of one Service destination that are not answered by one of
// its serving endpoints, as kube-proxy's CleanStaleEntries (pkg/proxy/conntrack/cleanup.go)
// does: those DNATed to an endpoint that is gone, or to an old port of it, and those
// created while the destination rejected traffic (their replies come from the Service
// address itself).
type Filter struct {
	Protocol v1.Protocol
	// OrigDst and OrigDstPort match the destination the client used: a Service address
	// and port, or, with OrigDst unset, any address with a NodePort.
	OrigDst     netip.Addr
	OrigDstPort uint16
	// Serving are the endpoints whose replies keep an entry.
	Serving []netip.AddrPort
}

// Entry is what a Filter looks at in a conntrack entry.
type Entry struct {
	Protocol v1.Protocol
	// OrigDst is the destination of the original direction; ReplySrc the source of the
	// replies (the endpoint a DNATed flow goes to).
	OrigDst, ReplySrc netip.AddrPort
}

// Matches reports whether the filter selects the entry.
func (f Filter) Matches(e Entry) bool {
	return e.Protocol == f.Protocol && e.OrigDst.Port() == f.OrigDstPort &&
		(!f.OrigDst.IsValid() || e.OrigDst.Addr() == f.OrigDst) && !slices.Contains(f.Serving, e.ReplySrc)
}

// Interface is the boundary to the kernel's connection tracking table.
type Interface interface {
	// Clear deletes the entries that any of the filters selects and returns how many.
	//
	// Equivalent to: `conntrack -L -p udp`, then `conntrack -D` of each selected entry
	Clear(ipv6 bool, filters ...Filter) (uint, error)
}

type kernel struct{}

// New returns the Interface for the current network namespace.
func New() Interface { return kernel{} }

var protocols = map[uint8]v1.Protocol{syscall.IPPROTO_TCP: v1.ProtocolTCP, syscall.IPPROTO_UDP: v1.ProtocolUDP, syscall.IPPROTO_SCTP: v1.ProtocolSCTP}

// netlinkFilter lets the netlink library's delete-by-filter apply our filters.
type netlinkFilter []Filter

func (fs netlinkFilter) MatchConntrackFlow(flow *netlink.ConntrackFlow) bool {
	dst, _ := netip.AddrFromSlice(flow.Forward.DstIP)
	src, _ := netip.AddrFromSlice(flow.Reverse.SrcIP)
	e := Entry{Protocol: protocols[flow.Forward.Protocol],
		OrigDst: netip.AddrPortFrom(dst.Unmap(), flow.Forward.DstPort), ReplySrc: netip.AddrPortFrom(src.Unmap(), flow.Reverse.SrcPort)}
	return slices.ContainsFunc(fs, func(f Filter) bool { return f.Matches(e) })
}

func (kernel) Clear(ipv6 bool, filters ...Filter) (uint, error) {
	if len(filters) == 0 {
		return 0, nil
	}
	family := netlink.InetFamily(netlink.FAMILY_V4)
	if ipv6 {
		family = netlink.FAMILY_V6
	}
	n, err := netlink.ConntrackDeleteFilters(netlink.ConntrackTable, family, netlinkFilter(filters))
	if err != nil {
		return n, fmt.Errorf("deleting conntrack entries: %w", err)
	}
	return n, nil
}
