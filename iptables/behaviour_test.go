package iptables_test

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
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
	cfg := iptables.RenderConfig{ResolveConfig: proxier.ResolveConfig{ClusterCIDR: behaviour.ClusterCIDR}, MasqueradeMark: "0x4000", NodeName: behaviour.NodeName}
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
			for _, fl := range behaviour.Flows() {
				pkt := iptablestest.Packet{Protocol: strings.ToLower(string(fl.Protocol)), Src: fl.Src, Dst: fl.Dst, FromNode: fl.FromNode, Local: []netip.Addr{behaviour.NodeIP}}
				results, err := ipt.Trace(pkt, nil)
				if err != nil {
					t.Fatalf("%s: %v", fl.Name, err)
				}
				if diff := cmp.Diff(fl.WantFor("iptables"), outcome(results)); diff != "" {
					t.Errorf("%s (%s -> %s/%s): (-want +got)\n%s%s", fl.Name, fl.Src, fl.Dst, fl.Protocol, diff, matchedRules(results))
				}
			}
		})
	}
}

// outcome says what the ways a connection can go come to, in the suite's terms: the
// endpoints it is DNATed to, or a verdict, UNTOUCHED when it is accepted without DNAT (no
// rule of ours decided anything). Ways that differ in more than their endpoint make a
// verdict no flow expects.
func outcome(results []iptablestest.Result) behaviour.Outcome {
	var out behaviour.Outcome
	for i, r := range results {
		o := behaviour.Outcome{Verdict: r.Verdict, Masq: r.Masquerade}
		switch {
		case r.Verdict != "ACCEPT":
		case r.DNAT:
			o.Verdict, o.Endpoints = "", []string{r.Dst.String()}
		default:
			o.Verdict = behaviour.Untouched
		}
		if i > 0 && (o.Verdict != out.Verdict || o.Masq != out.Masq) {
			return behaviour.Outcome{Verdict: "the ways differ (see below)"}
		}
		out.Verdict, out.Masq = o.Verdict, o.Masq
		out.Endpoints = append(out.Endpoints, o.Endpoints...)
	}
	slices.Sort(out.Endpoints)
	out.Endpoints = slices.Compact(out.Endpoints)
	return out
}

// matchedRules lists the rules each way matched, for a failure message.
func matchedRules(results []iptablestest.Result) string {
	var b strings.Builder
	for _, r := range results {
		fmt.Fprintf(&b, "%s to %s (DNAT %v, masqueraded %v) through:\n\t%s\n", r.Verdict, r.Dst, r.DNAT, r.Masquerade, strings.Join(r.Rules, "\n\t"))
	}
	return b.String()
}
