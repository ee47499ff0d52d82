package ipvstest

import (
	"net/netip"

	"github.com/switchyard/switchyard/iptables/iptablestest"
)

// Node is a node's kernel as IPVS mode programs it, every boundary a stateful fake: give
// its fields to ipvs.NewBackendWithKernel, sync, and trace packets through what the
// backend wrote.
type Node struct {
	IPTables *iptablestest.Fake
	IPVS     *IPVS
	Device   *Device
	Sets     *Sets
}

// NewNode returns an empty node whose own addresses are nodeIPs.
func NewNode(nodeIPs ...netip.Addr) *Node {
	return &Node{IPTables: iptablestest.NewFake(), IPVS: NewIPVS(), Device: NewDevice(nodeIPs...), Sets: NewSets()}
}

// Trace follows a new connection through the node's iptables rules, with its ipsets, and
// through IPVS where the kernel's IPVS hooks take it (iptablestest.Fake.Trace). p.Local
// is the caller's to set, usually to n.Device.Local().
func (n *Node) Trace(p iptablestest.Packet) ([]iptablestest.Result, error) {
	return n.IPTables.Trace(p, n.Sets, iptablestest.WithIPVS(n.IPVS))
}
