package iptables

import (
	"fmt"
	"slices"
)

// MasqueradeChains are the chains that mark and masquerade Service traffic, shared by
// both proxy modes: whatever jumps to MarkMasqChain is masqueraded in POSTROUTING.
// postroutingFirst are rules a mode puts before the mark check (IPVS mode's hairpin).
func MasqueradeChains(mark string, postroutingFirst ...string) []Chain {
	return []Chain{
		{Name: MarkMasqChain, Rules: []string{"-j MARK --or-mark " + mark}},
		{Name: PostroutingChain, Rules: append(slices.Clone(postroutingFirst),
			fmt.Sprintf("-m mark ! --mark %s/%s -j RETURN", mark, mark),
			// Clear the mark so a packet that loops through the stack again (e.g. via
			// a bridge or IPsec) is not masqueraded twice.
			"-j MARK --xor-mark "+mark,
			`-m comment --comment "switchyard service traffic requiring SNAT" -j MASQUERADE --random-fully`,
		)},
	}
}

// ForwardChainRules accept forwarded Service traffic even where FORWARD's policy is DROP.
func ForwardChainRules(mark string) Chain {
	return Chain{Name: ForwardChain, Rules: []string{
		fmt.Sprintf(`-m comment --comment "switchyard forwarding rules" -m mark --mark %s/%s -j ACCEPT`, mark, mark),
		`-m comment --comment "switchyard forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT`,
	}}
}

// Hooks shared by both modes: Service dispatch from nat PREROUTING/OUTPUT,
// masquerading from POSTROUTING, and the forwarding accept rules.
var commonHooks = []Hook{
	{TableNAT, "PREROUTING", []string{"-m", "comment", "--comment", "switchyard service portals", "-j", ServicesChain}},
	{TableNAT, "OUTPUT", []string{"-m", "comment", "--comment", "switchyard service portals", "-j", ServicesChain}},
	{TableNAT, "POSTROUTING", []string{"-m", "comment", "--comment", "switchyard postrouting rules", "-j", PostroutingChain}},
	{TableFilter, "FORWARD", []string{"-m", "comment", "--comment", "switchyard forwarding rules", "-j", ForwardChain}},
}

// CommonHooks returns the hooks both modes install.
func CommonHooks() []Hook { return slices.Clone(commonHooks) }

// filterServicesHooks send new connections through the filter SWYD-SERVICES chain, which
// rejects or drops traffic to Services that have no endpoint to take it (iptables mode):
// forwarded and locally sent traffic, and traffic to the node's own addresses (NodePorts,
// external IPs bound on the node).
var filterServicesHooks = []Hook{
	{TableFilter, "INPUT", []string{"-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment", "switchyard service portals", "-j", ServicesChain}},
	{TableFilter, "FORWARD", []string{"-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment", "switchyard service portals", "-j", ServicesChain}},
	{TableFilter, "OUTPUT", []string{"-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment", "switchyard service portals", "-j", ServicesChain}},
}
