package ipvs

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/switchyard/switchyard/internal/behaviour"
	"github.com/switchyard/switchyard/proxier"
)

// model is what IPVS mode programs for a State, as the kernel would see it: virtual servers
// with their real servers, and the members of the sets that the static rules match.
type model struct {
	servers map[Key]vsPlan
	members map[setEntry]bool
}

func newModel(state *proxier.State) *model {
	b := &Backend{cfg: Config{Scheduler: "rr", ResolveConfig: proxier.ResolveConfig{ClusterCIDR: behaviour.ClusterCIDR}},
		nodeIPs: []netip.Addr{behaviour.NodeIP}, nodePortIPs: []netip.Addr{behaviour.NodeIP}}
	m := &model{servers: map[Key]vsPlan{}, members: map[setEntry]bool{}}
	for _, sp := range state.Services {
		p := b.plan(state, sp)
		for _, s := range p.servers {
			m.servers[s.vs.Key()] = s
		}
		for _, e := range p.sets {
			m.members[e] = true
		}
	}
	return m
}

// trace follows a flow the way the kernel does in IPVS mode: traffic entering the node
// meets SWYD-IPVS-FILTER (filter INPUT) before IPVS; the node's own traffic is taken by
// IPVS on its way out, before any filter rule; masquerading follows the nat rules.
func (m *model) trace(fl behaviour.Flow) behaviour.Outcome {
	dst, port, proto := fl.Dst.Addr(), fl.Dst.Port(), fl.Protocol
	member := func(set string) bool {
		return m.members[setEntry{set: set, ip: dst, protocol: proto, port: port}]
	}
	servicePort := member(clusterIPSet) || member(externalSet) || member(externalLocalSet) || member(externalNoLocalSet)
	serviceIP := m.members[setEntry{set: serviceIPsSet, ip: dst}]
	if !fl.FromNode {
		if member(loadBalancerFirewallSet) && !m.allowedSource(fl) {
			return behaviour.Outcome{Verdict: behaviour.Drop}
		}
		if member(noLocalEndpointsSet) || (member(externalNoLocalSet) && !behaviour.ClusterCIDR.Contains(fl.Src)) {
			return behaviour.Outcome{Verdict: behaviour.Drop}
		}
	}
	s, ok := m.servers[Key{dst, proto, port}]
	switch {
	case !servicePort && serviceIP:
		return behaviour.Outcome{Verdict: behaviour.Reject}
	case !ok:
		return behaviour.Outcome{Verdict: behaviour.Untouched}
	case len(s.reals) == 0:
		// IPVS answers ICMP port unreachable when no real server is available.
		return behaviour.Outcome{Verdict: behaviour.Reject}
	}
	out := behaviour.Outcome{Masq: (member(clusterIPSet) && !behaviour.ClusterCIDR.Contains(fl.Src)) || member(externalSet) ||
		(fl.FromNode && (member(externalLocalSet) || member(externalNoLocalSet)))}
	for _, r := range s.reals {
		out.Endpoints = append(out.Endpoints, r.String())
		if r.Addr() == fl.Src && m.members[setEntry{set: loopbackSet, ip: r.Addr(), protocol: proto, port: r.Port(), ip2: fl.Src}] {
			out.Masq = true // hairpin
		}
	}
	slices.Sort(out.Endpoints)
	return out
}

func (m *model) allowedSource(fl behaviour.Flow) bool {
	for e := range m.members {
		if e.set == loadBalancerSourceSet && e.ip == fl.Dst.Addr() && e.port == fl.Dst.Port() && e.net.Contains(fl.Src) {
			return true
		}
	}
	return false
}

// TestBehaviourSuite runs the shared behaviour suite against what this backend plans.
func TestBehaviourSuite(t *testing.T) {
	m := newModel(behaviour.State())
	for _, fl := range behaviour.Flows() {
		if diff := cmp.Diff(fl.WantFor("ipvs"), m.trace(fl)); diff != "" {
			t.Errorf("%s (%s -> %s/%s): (-want +got)\n%s", fl.Name, fl.Src, fl.Dst, fl.Protocol, diff)
		}
	}
}
