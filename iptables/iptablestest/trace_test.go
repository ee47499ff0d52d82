package iptablestest

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// traceRules is a Service in the shape the iptables backend writes: cluster IP
// 10.96.0.10:80 and NodePort 30080 over two endpoints, masquerading clients from outside
// the pod network and hairpin traffic; 10.96.0.11:80 has no endpoints. Off-node clients
// in the "blocked" set may not reach the node.
const traceRules = `*nat
:SWYD-SERVICES - [0:0]
:SWYD-NODEPORTS - [0:0]
:SWYD-EXT - [0:0]
:SWYD-SVC - [0:0]
:SWYD-SEP1 - [0:0]
:SWYD-SEP2 - [0:0]
:SWYD-MARK-MASQ - [0:0]
:SWYD-POSTROUTING - [0:0]
-A PREROUTING -m comment --comment "service portals" -j SWYD-SERVICES
-A OUTPUT -m comment --comment "service portals" -j SWYD-SERVICES
-A POSTROUTING -j SWYD-POSTROUTING
-A SWYD-SERVICES -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j SWYD-SVC
-A SWYD-SERVICES -m addrtype --dst-type LOCAL ! -d 127.0.0.0/8 -j SWYD-NODEPORTS
-A SWYD-NODEPORTS -p tcp -m tcp --dport 30080 -j SWYD-EXT
-A SWYD-EXT -j SWYD-MARK-MASQ
-A SWYD-EXT -j SWYD-SVC
-A SWYD-SVC ! -s 10.244.0.0/16 -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j SWYD-MARK-MASQ
-A SWYD-SVC -m recent --name SWYD-SEP2 --mask 255.255.255.255 --rcheck --seconds 10800 --reap -j SWYD-SEP2
-A SWYD-SVC -m statistic --mode random --probability 0.5000000000 -j SWYD-SEP1
-A SWYD-SVC -j SWYD-SEP2
-A SWYD-SEP1 -s 10.244.1.2/32 -j SWYD-MARK-MASQ
-A SWYD-SEP1 -p tcp -m tcp -j DNAT --to-destination 10.244.1.2:8080
-A SWYD-SEP2 -s 10.244.2.2/32 -j SWYD-MARK-MASQ
-A SWYD-SEP2 -m recent --name SWYD-SEP2 --mask 255.255.255.255 --set -p tcp -m tcp -j DNAT --to-destination 10.244.2.2:8080
-A SWYD-MARK-MASQ -j MARK --or-mark 0x4000
-A SWYD-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A SWYD-POSTROUTING -j MARK --xor-mark 0x4000
-A SWYD-POSTROUTING -j MASQUERADE --random-fully
COMMIT
*filter
:SWYD-SERVICES - [0:0]
-A SWYD-SERVICES -d 10.96.0.11/32 -p tcp -m tcp --dport 80 -j REJECT
-A INPUT -m set --match-set blocked src -j DROP
-A FORWARD -m conntrack --ctstate NEW -j SWYD-SERVICES
-A OUTPUT -m conntrack --ctstate NEW -j SWYD-SERVICES
COMMIT
`

// srcSets holds sets of source addresses.
type srcSets map[string][]netip.Addr

func (s srcSets) Match(set, flags string, p Packet) (bool, error) {
	addrs, ok := s[set]
	if !ok || flags != "src" {
		return false, fmt.Errorf("no set %s for %s", set, flags)
	}
	return slices.Contains(addrs, p.Src), nil
}

// The clients, Service and endpoints of the rules traced.
var (
	node, pod, hairpin, outside = netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("10.244.1.9"), netip.MustParseAddr("10.244.1.2"), netip.MustParseAddr("203.0.113.5")
	ep1, ep2                    = netip.MustParseAddrPort("10.244.1.2:8080"), netip.MustParseAddrPort("10.244.2.2:8080")
	clusterIP, nodePort         = netip.MustParseAddrPort("10.96.0.10:80"), netip.AddrPortFrom(node, 30080)
)

func dnat(dst netip.AddrPort, masq bool) Result {
	return Result{Verdict: "ACCEPT", Dst: dst, DNAT: true, Masquerade: masq}
}

// traceTest is one TCP connection traced through a set of rules.
type traceTest struct {
	name    string
	pkt     Packet
	sets    Sets
	ipvs    IPVS   // nil: no IPVS
	extra   string // restored after the rules
	want    []Result
	wantErr string
}

// runTraceTests traces each test's packet through rules (and its extra ones) on a node
// whose own addresses are local.
func runTraceTests(t *testing.T, rules string, local []netip.Addr, tests []traceTest) {
	t.Helper()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := NewFake()
			mustRestore(t, f, rules+tc.extra)
			tc.pkt.Protocol, tc.pkt.Local = "tcp", local
			var opts []TraceOption
			if tc.ipvs != nil {
				opts = append(opts, WithIPVS(tc.ipvs))
			}
			got, err := f.Trace(tc.pkt, tc.sets, opts...)
			if tc.wantErr != "" || err != nil {
				if err == nil || tc.wantErr == "" || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Trace: %v, want an error containing %q", err, tc.wantErr)
				}
				return
			}
			if diff := cmp.Diff(tc.want, got, cmpopts.IgnoreFields(Result{}, "Rules"), cmpopts.EquateComparable(netip.AddrPort{})); diff != "" {
				t.Errorf("(-want +got)\n%s", diff)
			}
			for _, r := range got {
				if len(r.Rules) == 0 {
					t.Errorf("%v lists no rules", r)
				}
			}
		})
	}
}

func TestTrace(t *testing.T) {
	runTraceTests(t, traceRules, []netip.Addr{node}, []traceTest{
		{name: "pod to a cluster IP: either endpoint, client kept", pkt: Packet{Src: pod, Dst: clusterIP},
			want: []Result{dnat(ep2, false), dnat(ep1, false)}},
		{name: "the node to a cluster IP: masqueraded", pkt: Packet{Src: node, FromNode: true, Dst: clusterIP},
			want: []Result{dnat(ep2, true), dnat(ep1, true)}},
		{name: "an endpoint to its own Service: masqueraded on the way to itself only", pkt: Packet{Src: hairpin, Dst: clusterIP},
			want: []Result{dnat(ep2, false), dnat(ep1, true)}},
		{name: "off-node client to a NodePort: masqueraded", pkt: Packet{Src: outside, Dst: nodePort}, sets: srcSets{"blocked": nil},
			want: []Result{dnat(ep2, true), dnat(ep1, true)}},
		{name: "a NodePort on loopback is no NodePort", pkt: Packet{Src: node, FromNode: true, Dst: netip.MustParseAddrPort("127.0.0.1:30080")}, sets: srcSets{"blocked": nil},
			want: []Result{{Verdict: "ACCEPT", Dst: netip.MustParseAddrPort("127.0.0.1:30080")}}},
		{name: "DNAT without a port keeps the packet's", pkt: Packet{Src: pod, Dst: netip.MustParseAddrPort("10.96.0.12:80")}, extra: "*nat\n-I SWYD-SERVICES -d 10.96.0.12 -j DNAT --to-destination 10.244.3.3\nCOMMIT\n",
			want: []Result{dnat(netip.MustParseAddrPort("10.244.3.3:80"), false)}},
		{name: "a Service without endpoints: rejected", pkt: Packet{Src: pod, Dst: netip.MustParseAddrPort("10.96.0.11:80")},
			want: []Result{{Verdict: "REJECT", Dst: netip.MustParseAddrPort("10.96.0.11:80")}}},
		{name: "another port of the node, from a blocked client: dropped in INPUT", pkt: Packet{Src: outside, Dst: netip.AddrPortFrom(node, 22)}, sets: srcSets{"blocked": {outside}},
			want: []Result{{Verdict: "DROP", Dst: netip.AddrPortFrom(node, 22)}}},
		{name: "forwarded traffic meets FORWARD's policy", pkt: Packet{Src: pod, Dst: netip.MustParseAddrPort("198.51.100.1:80")}, extra: "*filter\n:FORWARD DROP [0:0]\nCOMMIT\n",
			want: []Result{{Verdict: "DROP", Dst: netip.MustParseAddrPort("198.51.100.1:80")}}},
		{name: "a node whose INPUT policy drops: what no rule accepts is dropped", pkt: Packet{Src: outside, Dst: netip.AddrPortFrom(node, 22), InputPolicy: "DROP"}, sets: srcSets{"blocked": nil},
			want: []Result{{Verdict: "DROP", Dst: netip.AddrPortFrom(node, 22)}}},
		{name: "a node whose INPUT policy drops: what a rule accepts reaches it", pkt: Packet{Src: outside, Dst: netip.AddrPortFrom(node, 22), InputPolicy: "DROP"}, sets: srcSets{"blocked": nil},
			extra: "*filter\n-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT\nCOMMIT\n",
			want:  []Result{{Verdict: "ACCEPT", Dst: netip.AddrPortFrom(node, 22)}}},
		{name: "INPUT's policy is ACCEPT or DROP", pkt: Packet{Src: outside, Dst: netip.AddrPortFrom(node, 22), InputPolicy: "REJECT"}, sets: srcSets{"blocked": nil}, wantErr: "no policy REJECT"},
		{name: "a set match needs Sets", pkt: Packet{Src: outside, Dst: netip.AddrPortFrom(node, 22)}, wantErr: "no Sets given"},
		{name: "a match the tracer does not know fails", pkt: Packet{Src: pod, Dst: clusterIP}, extra: "*nat\n-I SWYD-SVC -m physdev --physdev-is-in -j RETURN\nCOMMIT\n", wantErr: "does not know -m physdev"},
		{name: "the node sends from one of its addresses", pkt: Packet{Src: pod, FromNode: true, Dst: clusterIP}, wantErr: "not one of its addresses"},
	})
}

// ipvsRules are in the shape the IPVS backend writes: nat marks connections to the
// cluster IP 10.96.0.10:80 from outside the pod network for masquerading and leaves them
// to IPVS; filter INPUT drops the blocked clients before IPVS sees them.
const ipvsRules = `*nat
:SWYD-SERVICES - [0:0]
:SWYD-MARK-MASQ - [0:0]
:SWYD-POSTROUTING - [0:0]
-A PREROUTING -j SWYD-SERVICES
-A OUTPUT -j SWYD-SERVICES
-A POSTROUTING -j SWYD-POSTROUTING
-A SWYD-SERVICES ! -s 10.244.0.0/16 -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j SWYD-MARK-MASQ
-A SWYD-SERVICES -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j ACCEPT
-A SWYD-MARK-MASQ -j MARK --or-mark 0x4000
-A SWYD-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A SWYD-POSTROUTING -j MASQUERADE
COMMIT
*filter
-A INPUT -m set --match-set blocked src -j DROP
COMMIT
`

// virtualServers is an IPVS table of TCP virtual servers and their real servers.
type virtualServers map[netip.AddrPort][]netip.AddrPort

func (v virtualServers) Lookup(protocol string, dst netip.AddrPort) ([]netip.AddrPort, bool) {
	reals, ok := v[dst]
	return reals, ok && protocol == "tcp"
}

func TestTraceIPVS(t *testing.T) {
	empty, forwarded := netip.MustParseAddrPort("10.96.0.11:80"), netip.MustParseAddrPort("10.96.0.12:80")
	ipvs := virtualServers{clusterIP: {ep1, ep2}, empty: nil, forwarded: {ep1}}
	none := srcSets{"blocked": nil}
	runTraceTests(t, ipvsRules, []netip.Addr{node, clusterIP.Addr(), empty.Addr()}, []traceTest{
		{name: "pod to a virtual server: each real server, client kept", pkt: Packet{Src: pod, Dst: clusterIP}, sets: none, ipvs: ipvs,
			want: []Result{dnat(ep1, false), dnat(ep2, false)}},
		{name: "off-node client: the mark set in PREROUTING masquerades it after IPVS", pkt: Packet{Src: outside, Dst: clusterIP}, sets: none, ipvs: ipvs,
			want: []Result{dnat(ep1, true), dnat(ep2, true)}},
		{name: "filter INPUT comes before IPVS", pkt: Packet{Src: outside, Dst: clusterIP}, sets: srcSets{"blocked": {outside}}, ipvs: ipvs,
			want: []Result{{Verdict: "DROP", Dst: clusterIP}}},
		{name: "the node: taken after nat OUTPUT, and filter OUTPUT sees the real server", pkt: Packet{Src: node, FromNode: true, Dst: clusterIP}, sets: none, ipvs: ipvs,
			extra: "*filter\n-A OUTPUT -d 10.96.0.10/32 -j DROP\n-A OUTPUT -d 10.244.2.2/32 -j REJECT\nCOMMIT\n",
			want:  []Result{dnat(ep1, true), {Verdict: "REJECT", Dst: ep2, DNAT: true}}},
		{name: "a virtual server without real servers: refused", pkt: Packet{Src: pod, Dst: empty}, sets: none, ipvs: ipvs,
			want: []Result{{Verdict: "REJECT", Dst: empty}}},
		{name: "no virtual server: delivered to the node", pkt: Packet{Src: pod, Dst: netip.AddrPortFrom(clusterIP.Addr(), 81)}, sets: none, ipvs: ipvs,
			want: []Result{{Verdict: "ACCEPT", Dst: netip.AddrPortFrom(clusterIP.Addr(), 81)}}},
		{name: "forwarded traffic never meets IPVS", pkt: Packet{Src: pod, Dst: forwarded}, sets: none, ipvs: ipvs,
			want: []Result{{Verdict: "ACCEPT", Dst: forwarded}}},
		{name: "without IPVS, nothing takes the connection", pkt: Packet{Src: pod, Dst: clusterIP}, sets: none,
			want: []Result{{Verdict: "ACCEPT", Dst: clusterIP}}},
		{name: "-m ipvs: filter OUTPUT knows the virtual server the node's connection was sent on from", pkt: Packet{Src: node, FromNode: true, Dst: clusterIP}, sets: none, ipvs: ipvs,
			extra: "*filter\n-A OUTPUT -s 192.0.2.1 -m ipvs --vaddr 10.96.0.10/32 --vproto tcp --vport 80 -j DROP\nCOMMIT\n",
			want:  []Result{{Verdict: "DROP", Dst: ep1, DNAT: true}, {Verdict: "DROP", Dst: ep2, DNAT: true}}},
		{name: "-m ipvs: a protocol by number", pkt: Packet{Src: node, FromNode: true, Dst: clusterIP}, sets: none, ipvs: ipvs,
			extra: "*filter\n-A OUTPUT -m ipvs --vaddr 10.96.0.10 --vproto 6 --vport 80 -j DROP\nCOMMIT\n",
			want:  []Result{{Verdict: "DROP", Dst: ep1, DNAT: true}, {Verdict: "DROP", Dst: ep2, DNAT: true}}},
		{name: "-m ipvs: another virtual port, address or protocol does not match", pkt: Packet{Src: node, FromNode: true, Dst: clusterIP}, sets: none, ipvs: ipvs,
			extra: "*filter\n-A OUTPUT -m ipvs --vaddr 10.96.0.10 --vproto tcp --vport 81 -j DROP\n-A OUTPUT -m ipvs --vaddr 10.96.0.11 -j DROP\n-A OUTPUT -m ipvs --vproto udp -j DROP\nCOMMIT\n",
			want:  []Result{dnat(ep1, true), dnat(ep2, true)}},
		{name: "-m ipvs: a negated option matches what IPVS sent on from elsewhere", pkt: Packet{Src: node, FromNode: true, Dst: clusterIP}, sets: none, ipvs: ipvs,
			extra: "*filter\n-A OUTPUT -m ipvs ! --vaddr 10.96.0.11 -j DROP\nCOMMIT\n",
			want:  []Result{{Verdict: "DROP", Dst: ep1, DNAT: true}, {Verdict: "DROP", Dst: ep2, DNAT: true}}},
		{name: "-m ipvs: nothing IPVS did not send matches, negated or not", pkt: Packet{Src: node, FromNode: true, Dst: netip.MustParseAddrPort("198.51.100.1:80")}, sets: none, ipvs: ipvs,
			extra: "*filter\n-A OUTPUT -m ipvs --vaddr 198.51.100.1 -j DROP\n-A OUTPUT -m ipvs ! --vaddr 10.96.0.11 -j DROP\nCOMMIT\n",
			want:  []Result{{Verdict: "ACCEPT", Dst: netip.MustParseAddrPort("198.51.100.1:80")}}},
		{name: "-m ipvs: an option the tracer does not know fails", pkt: Packet{Src: node, FromNode: true, Dst: clusterIP}, sets: none, ipvs: ipvs,
			extra: "*filter\n-A OUTPUT -m ipvs --vdir ORIGINAL -j DROP\nCOMMIT\n", wantErr: "does not know --vdir"},
		{name: "a real server on the node is not followed", pkt: Packet{Src: pod, Dst: clusterIP}, sets: none, ipvs: virtualServers{clusterIP: {netip.AddrPortFrom(node, 8080)}},
			wantErr: "does not follow a real server on the node"},
	})
}
