package iptables_test

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"

	"github.com/switchyard/switchyard/internal/behaviour"
	"github.com/switchyard/switchyard/iptables"
	"github.com/switchyard/switchyard/iptables/iptablestest"
	"github.com/switchyard/switchyard/proxier"
)

// TestLocalnetFirewall: while NodePorts are served on 127.0.0.1 (and route_localnet lets
// the kernel route loopback addresses off lo), SWYD-LOCALNET-FIREWALL drops what
// kube-proxy's KUBE-FIREWALL drops, connections to 127.0.0.0/8 from a source that is not
// loopback and that no NodePort took, and nothing else. Without localhost NodePorts, or
// over IPv6, the chain and its hooks are not written, and a full sync removes them.
func TestLocalnetFirewall(t *testing.T) {
	ctx := context.Background()
	cfg := iptables.RenderConfig{ResolveConfig: proxier.ResolveConfig{ClusterCIDR: behaviour.ClusterCIDR}, MasqueradeMark: "0x4000", NodeName: behaviour.NodeName, LocalhostNodePorts: true}
	ipt := iptablestest.NewFake()
	b := iptables.NewBackend(ipt, cfg, prometheus.NewRegistry(), klog.Background())
	if err := b.Sync(ctx, behaviour.State(), proxier.Changes{Full: true}); err != nil {
		t.Fatal(err)
	}
	loopback := netip.MustParseAddr("127.0.0.1")
	both := []string{"10.244.1.2:8080", "10.244.2.2:8080"}
	for _, tc := range []struct {
		name string
		pkt  iptablestest.Packet
		// want is the verdict, or the endpoints the connection is DNATed to.
		want []string
	}{
		{name: "a neighbour to a loopback service", pkt: iptablestest.Packet{Src: behaviour.Outside, Dst: netip.AddrPortFrom(loopback, 22)}, want: []string{"DROP"}},
		{name: "a process bound to the node's address to a loopback service", pkt: iptablestest.Packet{FromNode: true, Src: behaviour.NodeIP, Dst: netip.AddrPortFrom(loopback, 22)}, want: []string{"DROP"}},
		{name: "the node over loopback", pkt: iptablestest.Packet{FromNode: true, Src: loopback, Dst: netip.AddrPortFrom(loopback, 22)}, want: []string{"ACCEPT"}},
		{name: "the node to its own address", pkt: iptablestest.Packet{FromNode: true, Src: behaviour.NodeIP, Dst: netip.AddrPortFrom(behaviour.NodeIP, 22)}, want: []string{"ACCEPT"}},
		// As in kube-proxy: the NodePort rule takes it before the firewall sees it.
		{name: "a neighbour to 127.0.0.1 at a NodePort", pkt: iptablestest.Packet{Src: behaviour.Outside, Dst: netip.AddrPortFrom(loopback, 30080)}, want: both},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.pkt.Protocol, tc.pkt.Local = "tcp", []netip.Addr{behaviour.NodeIP}
			results, err := ipt.Trace(tc.pkt, nil)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, r := range results {
				if r.DNAT {
					got = append(got, r.Dst.String())
				} else {
					got = append(got, r.Verdict)
				}
			}
			slices.Sort(got)
			if !slices.Equal(got, tc.want) {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}

	for _, off := range []iptables.RenderConfig{
		{MasqueradeMark: "0x4000", NodeName: behaviour.NodeName},
		{MasqueradeMark: "0x4000", NodeName: behaviour.NodeName, LocalhostNodePorts: true, IPv6: true},
	} {
		b := iptables.NewBackend(ipt, off, prometheus.NewRegistry(), klog.Background())
		if err := b.Sync(ctx, &proxier.State{NodeName: behaviour.NodeName}, proxier.Changes{Full: true}); err != nil {
			t.Fatal(err)
		}
		dump, err := ipt.Save(ctx, iptables.TableFilter)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(dump), iptables.LocalnetFirewallChain) {
			t.Errorf("localhost NodePorts %t, IPv6 %t: the filter table still has %s:\n%s", off.LocalhostNodePorts, off.IPv6, iptables.LocalnetFirewallChain, dump)
		}
	}
}
