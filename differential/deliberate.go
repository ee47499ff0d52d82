package differential

import (
	"slices"
	"strings"

	"github.com/switchyard/switchyard/benchmarks"
	"github.com/switchyard/switchyard/internal/lab"
)

// Deliberate is a difference from kube-proxy that docs/node-contract.md lists as
// deliberate, with its reason: the probes it explains, and what switchyard must do there.
// A divergence it does not explain fails the run.
type Deliberate struct {
	// Contract names the difference as node-contract.md does.
	Contract string
	Mode     string
	// Trait is what the probe's scenario must have (see the Trait constants).
	Trait   string
	Entries []string
	From    []string
	// Switchyard is what switchyard's probe must see there (failsWith, masqueraded);
	// kube-proxy may see anything else.
	Switchyard func(Outcome) bool
}

// failsWith: no endpoint answers, and every failure is of these kinds.
func failsWith(kinds ...string) func(Outcome) bool {
	return func(o Outcome) bool {
		return len(o.Endpoints) == 0 && len(o.Failures) > 0 && !slices.ContainsFunc(o.Failures, func(f string) bool { return !slices.Contains(kinds, f) })
	}
}

// masqueraded: answered every time, and every endpoint saw the node's address on the
// pods' bridge, the source masquerading gives.
func masqueraded(o Outcome) bool {
	return len(o.Endpoints) > 0 && len(o.Failures) == 0 && len(o.Clients) > 0 &&
		!slices.ContainsFunc(o.Clients, func(c string) bool { return !strings.HasSuffix(c, " saw "+lab.PodGatewayIP) })
}

// Deliberates are node-contract.md's deliberate differences that the scenarios can reach.
var Deliberates = []Deliberate{
	{
		Contract: "IPVS mode, externalTrafficPolicy: Local without a local endpoint, off-node clients: dropped before IPVS",
		Mode:     benchmarks.ModeIPVS, Trait: TraitExternalLocalNoLocalEndpoints,
		Entries: []string{EntryExternalIP, EntryLoadBalancer, EntryNodePort}, From: []string{FromClient},
		Switchyard: failsWith("timeout"),
	},
	{
		Contract: "IPVS mode, internalTrafficPolicy: Local without a local endpoint: pods are dropped",
		Mode:     benchmarks.ModeIPVS, Trait: TraitInternalLocalNoLocalEndpoints,
		Entries: []string{EntryClusterIP}, From: []string{FromPod, FromStickyPod},
		Switchyard: failsWith("timeout"),
	},
	{
		// IPVS takes the node's own connection before a filter rule could drop it, and
		// switchyard's virtual server has no real server to give it.
		Contract: "IPVS mode, internalTrafficPolicy: Local without a local endpoint: the node is refused",
		Mode:     benchmarks.ModeIPVS, Trait: TraitInternalLocalNoLocalEndpoints,
		Entries: []string{EntryClusterIP}, From: []string{FromNode},
		Switchyard: failsWith("refused"),
	},
	{
		Contract: "IPVS mode, externalTrafficPolicy: Local without a local endpoint, the node to an external or load-balancer IP: masqueraded",
		Mode:     benchmarks.ModeIPVS, Trait: TraitExternalLocalNoLocalEndpoints,
		Entries: []string{EntryExternalIP, EntryLoadBalancer}, From: []string{FromNode},
		Switchyard: masqueraded,
	},
}

// explains reports whether the deliberate difference accounts for a divergence seen in
// mode, in a scenario with these traits.
func (dd Deliberate) explains(mode string, traits []string, d Divergence) bool {
	if dd.Mode != mode || d.Probe.Phase != "" || !slices.Contains(traits, dd.Trait) || !slices.Contains(dd.Entries, d.Probe.Entry) || !slices.Contains(dd.From, d.Probe.From) {
		return false
	}
	return dd.Switchyard(d.Outcomes[benchmarks.ProxySwitchyard])
}

// explain sets each divergence's Deliberate to the difference that explains it, if any.
func explain(mode string, traits map[string][]string, divergences []Divergence) {
	for i := range divergences {
		for _, dd := range Deliberates {
			if dd.explains(mode, traits[divergences[i].Probe.Scenario], divergences[i]) {
				divergences[i].Deliberate = dd.Contract
				break
			}
		}
	}
}

// Unexplained counts the divergences no deliberate difference explains.
func (m *ModeReport) Unexplained() int {
	n := 0
	for _, d := range m.Divergences {
		if d.Deliberate == "" {
			n++
		}
	}
	return n
}
