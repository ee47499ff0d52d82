package iptables_test

import (
	"context"
	"net/netip"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"

	"github.com/switchyard/switchyard/internal/behaviour"
	"github.com/switchyard/switchyard/iptables"
	"github.com/switchyard/switchyard/iptables/iptablestest"
	"github.com/switchyard/switchyard/proxier"
)

// TestBehaviourSuite runs the shared behaviour suite against the rules this backend
// writes, each flow traced from the built-in hooks as the kernel would: once after one
// full sync, and once after building the same state with partial syncs only, which must
// behave the same.
func TestBehaviourSuite(t *testing.T) {
	// NodePorts on 127.0.0.1 are served, as kube-proxy's default.
	cfg := iptables.RenderConfig{ResolveConfig: proxier.ResolveConfig{ClusterCIDR: behaviour.ClusterCIDR}, MasqueradeMark: "0x4000", NodeName: behaviour.NodeName, LocalhostNodePorts: true}
	want := behaviour.State()
	builds := map[string]func(b *iptables.Backend) error{
		"full sync": func(b *iptables.Backend) error {
			return b.Sync(context.Background(), want, proxier.Changes{Full: true})
		},
		"partial syncs": func(b *iptables.Backend) error {
			growing := &proxier.State{NodeName: want.NodeName, NodeLabels: want.NodeLabels, Services: map[proxier.ServicePortName]*proxier.ServicePort{}, Endpoints: map[proxier.ServicePortName][]proxier.Endpoint{}}
			if err := b.Sync(context.Background(), growing, proxier.Changes{Full: true}); err != nil {
				return err
			}
			for name, sp := range want.Services {
				growing.Services[name] = sp
				growing.Endpoints[name] = want.Endpoints[name]
				if err := b.Sync(context.Background(), growing, proxier.Changes{ServicePorts: map[proxier.ServicePortName]struct{}{name: {}}}); err != nil {
					return err
				}
			}
			return nil
		},
	}
	for build, sync := range builds {
		t.Run(build, func(t *testing.T) {
			ipt := iptablestest.NewFake()
			b := iptables.NewBackend(ipt, cfg, prometheus.NewRegistry(), klog.Background())
			if err := sync(b); err != nil {
				t.Fatal(err)
			}
			behaviour.CheckTraces(t, "iptables", []netip.Addr{behaviour.NodeIP}, func(pkt iptablestest.Packet) ([]iptablestest.Result, error) {
				return ipt.Trace(pkt, nil)
			})
		})
	}
}
