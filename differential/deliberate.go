package differential

import (
	"slices"

	"github.com/switchyard/switchyard/benchmarks"
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
	// SwitchyardFails is how switchyard's requests must fail there: no endpoint answers,
	// and every failure is of these kinds. kube-proxy may do anything else.
	SwitchyardFails []string
}

// Deliberates are node-contract.md's deliberate differences that the scenarios can reach.
var Deliberates = []Deliberate{
	{
		Contract: "IPVS mode, externalTrafficPolicy: Local without a local endpoint, off-node clients: dropped before IPVS",
		Mode:     benchmarks.ModeIPVS, Trait: TraitExternalLocalNoLocalEndpoints,
		Entries: []string{EntryExternalIP, EntryLoadBalancer, EntryNodePort}, From: []string{FromClient},
		SwitchyardFails: []string{"timeout"},
	},
	{
		Contract: "IPVS mode, internalTrafficPolicy: Local without a local endpoint: pods are dropped",
		Mode:     benchmarks.ModeIPVS, Trait: TraitInternalLocalNoLocalEndpoints,
		Entries: []string{EntryClusterIP}, From: []string{FromPod, FromStickyPod},
		SwitchyardFails: []string{"timeout"},
	},
	{
		// IPVS takes the node's own connection before a filter rule could drop it, and
		// switchyard's virtual server has no real server to give it.
		Contract: "IPVS mode, internalTrafficPolicy: Local without a local endpoint: the node is refused",
		Mode:     benchmarks.ModeIPVS, Trait: TraitInternalLocalNoLocalEndpoints,
		Entries: []string{EntryClusterIP}, From: []string{FromNode},
		SwitchyardFails: []string{"refused"},
	},
}

// explains reports whether the deliberate difference accounts for a divergence seen in
// mode, in a scenario with these traits.
func (dd Deliberate) explains(mode string, traits []string, d Divergence) bool {
	if dd.Mode != mode || !slices.Contains(traits, dd.Trait) || !slices.Contains(dd.Entries, d.Probe.Entry) || !slices.Contains(dd.From, d.Probe.From) {
		return false
	}
	ours := d.Outcomes[benchmarks.ProxySwitchyard]
	if len(ours.Endpoints) > 0 || len(ours.Failures) == 0 {
		return false
	}
	for _, f := range ours.Failures {
		if !slices.Contains(dd.SwitchyardFails, f) {
			return false
		}
	}
	return true
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
