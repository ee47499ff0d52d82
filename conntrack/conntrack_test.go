package conntrack

import (
	"net/netip"
	"testing"

	v1 "k8s.io/api/core/v1"
)

// TestFilterMatches follows kube-proxy's CleanStaleEntries: an entry to a Service
// destination goes unless a serving endpoint (address and port) answers it.
func TestFilterMatches(t *testing.T) {
	vip := netip.MustParseAddrPort("10.96.0.10:53")
	ep := netip.MustParseAddrPort("10.244.1.2:5353")
	clusterIP := Filter{Protocol: v1.ProtocolUDP, OrigDst: vip.Addr(), OrigDstPort: 53, Serving: []netip.AddrPort{ep}}
	nodePort := Filter{Protocol: v1.ProtocolUDP, OrigDstPort: 30053, Serving: []netip.AddrPort{ep}}
	tests := []struct {
		name   string
		filter Filter
		entry  Entry
		want   bool
	}{
		{name: "answered by a serving endpoint: kept", filter: clusterIP, entry: Entry{v1.ProtocolUDP, vip, ep}},
		{name: "answered by a removed endpoint: deleted", filter: clusterIP, entry: Entry{v1.ProtocolUDP, vip, netip.MustParseAddrPort("10.244.2.2:5353")}, want: true},
		{name: "answered by an old port of a serving address: deleted", filter: clusterIP, entry: Entry{v1.ProtocolUDP, vip, netip.MustParseAddrPort("10.244.1.2:53")}, want: true},
		{name: "never DNATed (the Service rejected it): deleted", filter: clusterIP, entry: Entry{v1.ProtocolUDP, vip, vip}, want: true},
		{name: "another Service port: kept", filter: clusterIP, entry: Entry{v1.ProtocolUDP, netip.MustParseAddrPort("10.96.0.10:54"), vip}},
		{name: "another address: kept", filter: clusterIP, entry: Entry{v1.ProtocolUDP, netip.MustParseAddrPort("10.96.0.11:53"), vip}},
		{name: "another protocol: kept", filter: clusterIP, entry: Entry{v1.ProtocolTCP, vip, vip}},
		{name: "a NodePort on any address, stale: deleted", filter: nodePort, entry: Entry{v1.ProtocolUDP, netip.MustParseAddrPort("192.0.2.1:30053"), netip.MustParseAddrPort("10.244.9.9:5353")}, want: true},
		{name: "a NodePort answered by a serving endpoint: kept", filter: nodePort, entry: Entry{v1.ProtocolUDP, netip.MustParseAddrPort("192.0.2.1:30053"), ep}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.filter.Matches(tc.entry); got != tc.want {
				t.Errorf("Matches(%+v) = %v, want %v", tc.entry, got, tc.want)
			}
		})
	}
}
