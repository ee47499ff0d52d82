package iptables

import (
	"fmt"
	"os"
	"slices"
	"strings"
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
// With dropInvalid (iptables mode, unless nf_conntrack_tcp_be_liberal is set), packets
// conntrack finds INVALID are dropped first: left alone, an out-of-window packet reaches
// the pod un-DNATed and the pod resets the connection (kubernetes#74839), as kube-proxy's
// iptables mode guards against.
func ForwardChainRules(mark string, dropInvalid bool) Chain {
	var rules []string
	if dropInvalid {
		rules = append(rules, "-m conntrack --ctstate INVALID -j DROP")
	}
	return Chain{Name: ForwardChain, Rules: append(rules,
		fmt.Sprintf(`-m comment --comment "switchyard forwarding rules" -m mark --mark %s/%s -j ACCEPT`, mark, mark),
		`-m comment --comment "switchyard forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT`,
	)}
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

// filterHooks send traffic through iptables mode's filter chains, hooked where
// kube-proxy hooks its own: the cluster IP refusals on forwarded and locally sent
// traffic; the refusals at external entry points on traffic arriving for this node or
// passing through (not on what the node sends, which goes on to wherever an external IP
// really is); the load-balancer source filter everywhere; the health-check ports on
// traffic for the node.
//
// Each hook is inserted first in its chain, in this order (kube-proxy's
// iptablesJumpChains), so the firewall comes first.
var filterHooks = []Hook{
	newConnectionHook("INPUT", ExternalServicesChain, "switchyard externally-visible service portals"),
	newConnectionHook("FORWARD", ExternalServicesChain, "switchyard externally-visible service portals"),
	{TableFilter, "INPUT", []string{"-m", "comment", "--comment", "switchyard health check service ports", "-j", NodePortsChain}},
	newConnectionHook("FORWARD", ServicesChain, "switchyard service portals"),
	newConnectionHook("OUTPUT", ServicesChain, "switchyard service portals"),
	newConnectionHook("INPUT", FirewallChain, "switchyard load balancer firewall"),
	newConnectionHook("OUTPUT", FirewallChain, "switchyard load balancer firewall"),
	newConnectionHook("FORWARD", FirewallChain, "switchyard load balancer firewall"),
}

// localnetHooks send every packet to or from the node through LocalnetFirewallChain,
// while NodePorts are served on 127.0.0.1; they come after filterHooks, so they are
// inserted first in INPUT and OUTPUT, where kube-proxy's jumps to KUBE-FIREWALL are.
var localnetHooks = []Hook{
	{TableFilter, "INPUT", []string{"-m", "comment", "--comment", "switchyard localnet firewall", "-j", LocalnetFirewallChain}},
	{TableFilter, "OUTPUT", []string{"-m", "comment", "--comment", "switchyard localnet firewall", "-j", LocalnetFirewallChain}},
}

func newConnectionHook(chain, target, comment string) Hook {
	return Hook{TableFilter, chain, []string{"-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment", comment, "-j", target}}
}

// ConntrackTCPLiberal reports whether the kernel's nf_conntrack_tcp_be_liberal is on, as
// kube-proxy reads it at startup (false when it cannot be read).
//
// Equivalent to: `sysctl net.netfilter.nf_conntrack_tcp_be_liberal`
func ConntrackTCPLiberal() bool {
	v, err := os.ReadFile("/proc/sys/net/netfilter/nf_conntrack_tcp_be_liberal")
	return err == nil && strings.TrimSpace(string(v)) != "0"
}
