package ipvstest

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"

	"github.com/switchyard/switchyard/iptables/iptablestest"
	"github.com/switchyard/switchyard/ipvs"
)

// TestSetsMatch checks the fake's `-m set` answers for each set type the rules use,
// and that what it cannot answer is an error rather than a miss.
func TestSetsMatch(t *testing.T) {
	vip, pod := netip.MustParseAddr("10.96.0.10"), netip.MustParseAddr("10.244.1.2")
	nodeIP, outside := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("203.0.113.50")
	sets := NewSets()
	for _, e := range []ipvs.SetEntry{
		{Set: "SWYD-IPVS-IPS", IP: vip},
		{Set: "SWYD-CLUSTER-IP", IP: vip, Protocol: v1.ProtocolTCP, Port: 80},
		{Set: "SWYD-LOOP-BACK", IP: pod, Protocol: v1.ProtocolTCP, Port: 8080, IP2: pod},
		{Set: "SWYD-LB-SOURCE", IP: vip, Protocol: v1.ProtocolTCP, Port: 80, Net: netip.MustParsePrefix("10.244.0.0/16")},
		{Set: "SWYD-HEALTH-CHECK-NODE-PORT", Port: 32000},
	} {
		if err := sets.Add(e); err != nil {
			t.Fatal(err)
		}
	}
	toHealthCheck := func(protocol string, port uint16) iptablestest.Packet {
		return iptablestest.Packet{Protocol: protocol, Src: outside, Dst: netip.AddrPortFrom(nodeIP, port)}
	}
	toVIP := iptablestest.Packet{Protocol: "tcp", Src: pod, Dst: netip.AddrPortFrom(vip, 80)}
	tests := []struct {
		name, set, flags string
		pkt              iptablestest.Packet
		want             bool
		wantErr          string
	}{
		{name: "hash:ip", set: "SWYD-IPVS-IPS", flags: "dst", pkt: toVIP, want: true},
		{name: "hash:ip, by source", set: "SWYD-IPVS-IPS", flags: "src", pkt: toVIP, want: false},
		{name: "hash:ip,port", set: "SWYD-CLUSTER-IP", flags: "dst,dst", pkt: toVIP, want: true},
		{name: "hash:ip,port, other protocol", set: "SWYD-CLUSTER-IP", flags: "dst,dst", pkt: iptablestest.Packet{Protocol: "udp", Src: pod, Dst: toVIP.Dst}, want: false},
		{name: "hash:ip,port, by its IPv6 name", set: "SWYD-CLUSTER-IP-6", flags: "dst,dst", pkt: toVIP, want: true},
		{name: "hash:ip,port,ip", set: "SWYD-LOOP-BACK", flags: "dst,dst,src", pkt: iptablestest.Packet{Protocol: "tcp", Src: pod, Dst: netip.AddrPortFrom(pod, 8080)}, want: true},
		{name: "hash:ip,port,net, inside the net", set: "SWYD-LB-SOURCE", flags: "dst,dst,src", pkt: toVIP, want: true},
		{name: "hash:ip,port,net, outside the net", set: "SWYD-LB-SOURCE", flags: "dst,dst,src", pkt: iptablestest.Packet{Protocol: "tcp", Src: outside, Dst: toVIP.Dst}, want: false},
		{name: "bitmap:port, on any address", set: "SWYD-HEALTH-CHECK-NODE-PORT", flags: "dst", pkt: toHealthCheck("tcp", 32000), want: true},
		{name: "bitmap:port, another port", set: "SWYD-HEALTH-CHECK-NODE-PORT", flags: "dst", pkt: toHealthCheck("tcp", 32001), want: false},
		{name: "bitmap:port, UDP", set: "SWYD-HEALTH-CHECK-NODE-PORT", flags: "dst", pkt: toHealthCheck("udp", 32000), want: true},
		{name: "bitmap:port, SCTP has no port for it", set: "SWYD-HEALTH-CHECK-NODE-PORT", flags: "dst", pkt: toHealthCheck("sctp", 32000), want: false},
		{name: "bitmap:port, by source port", set: "SWYD-HEALTH-CHECK-NODE-PORT", flags: "src", pkt: toHealthCheck("tcp", 32000), wantErr: "no source port"},
		{name: "bitmap:port, flags for another type", set: "SWYD-HEALTH-CHECK-NODE-PORT", flags: "dst,dst", pkt: toHealthCheck("tcp", 32000), wantErr: "matched with the flags"},
		{name: "an unknown set", set: "KUBE-CLUSTER-IP", flags: "dst,dst", pkt: toVIP, wantErr: "no ipset"},
		{name: "flags for another type", set: "SWYD-CLUSTER-IP", flags: "dst", pkt: toVIP, wantErr: "matched with the flags"},
		{name: "a source port", set: "SWYD-CLUSTER-IP", flags: "dst,src", pkt: toVIP, wantErr: "no source port"},
		{name: "an unknown flag", set: "SWYD-IPVS-IPS", flags: "both", pkt: toVIP, wantErr: "unknown flag"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := sets.Match(tc.set, tc.flags, tc.pkt)
			if tc.wantErr != "" || err != nil {
				if err == nil || tc.wantErr == "" || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Match: %v, want an error containing %q", err, tc.wantErr)
				}
				return
			}
			if got != tc.want {
				t.Errorf("Match(%s, %s) = %v, want %v", tc.set, tc.flags, got, tc.want)
			}
		})
	}
}

// TestSetsMembers: List returns what was added and not deleted, as a copy; adding twice
// and deleting what is not there are no errors, as with `ipset -exist`.
func TestSetsMembers(t *testing.T) {
	s := NewSets()
	kept := ipvs.SetEntry{Set: "SWYD-IPVS-IPS", IP: netip.MustParseAddr("10.96.0.10")}
	gone := ipvs.SetEntry{Set: "SWYD-HEALTH-CHECK-NODE-PORT", Port: 32000}
	for _, e := range []ipvs.SetEntry{kept, gone, kept, gone} {
		if err := s.Add(e); err != nil {
			t.Fatal(err)
		}
	}
	for range 2 {
		if err := s.Del(gone); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Ensure(); err != nil {
		t.Fatal(err)
	}
	members, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[ipvs.SetEntry]bool{kept: true}, members, cmp.Comparer(func(a, b ipvs.SetEntry) bool { return a == b })); diff != "" {
		t.Errorf("members (-want +got):\n%s", diff)
	}
	delete(members, kept)
	if again, _ := s.List(); !again[kept] {
		t.Errorf("changing List's map changed the sets")
	}
}
