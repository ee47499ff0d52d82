package ipvstest

import (
	"context"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"

	"github.com/switchyard/switchyard/iptables/iptablestest"
	"github.com/switchyard/switchyard/ipvs"
)

// TestNodeTrace: a traced connection meets the node's rules, whose `-m set` matches the
// sets answer, and then IPVS, on the virtual servers the table holds.
func TestNodeTrace(t *testing.T) {
	n := NewNode(netip.MustParseAddr("192.0.2.1"))
	vip, pod := netip.MustParseAddr("10.96.0.10"), netip.MustParseAddr("10.244.1.9")
	endpoint := netip.MustParseAddrPort("10.244.2.2:8080")
	vs := &ipvs.VirtualServer{Address: vip, Protocol: v1.ProtocolTCP, Port: 80, Scheduler: "rr"}
	for _, err := range []error{
		n.IPTables.Restore(context.Background(), []byte(`*filter
:SWYD-IPVS-FILTER - [0:0]
-A INPUT -j SWYD-IPVS-FILTER
-A SWYD-IPVS-FILTER -m set --match-set SWYD-CLUSTER-IP dst,dst -j RETURN
-A SWYD-IPVS-FILTER -m conntrack --ctstate NEW -m set --match-set SWYD-IPVS-IPS dst -j REJECT
COMMIT
`)),
		n.Device.Bind(vip),
		n.Sets.Add(ipvs.SetEntry{Set: "SWYD-IPVS-IPS", IP: vip}),
		n.Sets.Add(ipvs.SetEntry{Set: "SWYD-CLUSTER-IP", IP: vip, Protocol: v1.ProtocolTCP, Port: 80}),
		n.IPVS.AddVirtualServer(vs),
		n.IPVS.AddRealServer(vs, &ipvs.RealServer{Address: endpoint.Addr(), Port: endpoint.Port(), Weight: 1}),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name string
		dst  netip.AddrPort
		want []iptablestest.Result
	}{
		{name: "a Service port: IPVS sends it on", dst: netip.AddrPortFrom(vip, 80),
			want: []iptablestest.Result{{Verdict: "ACCEPT", Dst: endpoint, DNAT: true}}},
		{name: "another port of the Service address: refused", dst: netip.AddrPortFrom(vip, 81),
			want: []iptablestest.Result{{Verdict: "REJECT", Dst: netip.AddrPortFrom(vip, 81)}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := n.Trace(iptablestest.Packet{Protocol: "tcp", Src: pod, Dst: tc.dst, Local: n.Device.Local()})
			if err != nil {
				t.Fatal(err)
			}
			for i := range got {
				got[i].Rules = nil // which rules matched is the tracer's business
			}
			if diff := cmp.Diff(tc.want, got, cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); diff != "" {
				t.Errorf("trace (-want +got):\n%s", diff)
			}
		})
	}
}
