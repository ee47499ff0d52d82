package iptables

import (
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	"net/netip"
	"strings"

	"github.com/switchyard/switchyard/proxier"
)

// ChainPrefix starts the name of every chain this backend owns. Nothing without it is
// ever changed, and --cleanup removes exactly the chains that carry it.
const ChainPrefix = "SWYD-"

// Chains with fixed names.
const (
	// servicesChain holds one dispatch rule per Service address: in nat it jumps to the
	// Service's chain, in filter it rejects or drops traffic that has no endpoint to go to.
	servicesChain = ChainPrefix + "SERVICES"
	// postroutingChain masquerades packets marked by markMasqChain.
	postroutingChain = ChainPrefix + "POSTROUTING"
	// markMasqChain marks a packet for masquerading on its way out.
	markMasqChain = ChainPrefix + "MARK-MASQ"
	// forwardChain accepts forwarded Service traffic even where FORWARD's policy is DROP.
	forwardChain = ChainPrefix + "FORWARD"
)

// servicePortChain is the chain that load-balances a Service port's traffic under the
// Cluster traffic policy across all eligible endpoints.
func servicePortChain(name proxier.ServicePortName) string {
	return ChainPrefix + "SVC-" + hash(name.String()+string(name.Protocol))
}

// localPolicyChain is the chain that load-balances a Service port's traffic under the
// Local traffic policy across this node's endpoints only.
func localPolicyChain(name proxier.ServicePortName) string {
	return ChainPrefix + "SVL-" + hash(name.String()+string(name.Protocol))
}

// endpointChain is the chain that DNATs to one endpoint of a Service port.
func endpointChain(name proxier.ServicePortName, ep proxier.Endpoint) string {
	return ChainPrefix + "SEP-" + hash(name.String()+string(name.Protocol)+ep.String())
}

// hash keeps chain names within iptables' 28-character limit while staying stable across
// restarts, so a restarted proxy adopts the chains it wrote before.
func hash(s string) string {
	sum := sha256.Sum256([]byte(s))
	return base32.StdEncoding.EncodeToString(sum[:])[:16]
}

// RenderConfig is what rendering needs besides the Service itself.
type RenderConfig struct {
	// ClusterCIDR, when valid, is the pod network: traffic from outside it to a cluster
	// IP is masqueraded so replies come back through this node.
	ClusterCIDR netip.Prefix
	// MasqueradeAll masquerades all traffic to cluster IPs.
	MasqueradeAll bool
	// MasqueradeMark is the fwmark bit that asks SWYD-POSTROUTING to masquerade, e.g. "0x4000".
	MasqueradeMark string
	NodeName       string
}

// chain is a chain name with its rules, each rule without the "-A CHAIN" prefix.
type chain struct {
	name  string
	rules []string
}

// servicePortRules is everything one ServicePort contributes to the kernel.
type servicePortRules struct {
	// natDispatch and filterDispatch are this port's rules in the two SWYD-SERVICES chains.
	natDispatch    []string
	filterDispatch []string
	// chains are the per-service and per-endpoint nat chains, in writing order.
	chains []chain
}

// renderServicePort renders one ServicePort from its endpoint selection.
func renderServicePort(cfg *RenderConfig, sp *proxier.ServicePort, sel proxier.EndpointSelection) *servicePortRules {
	r := &servicePortRules{}
	name := sp.Name.String()
	dst := fmt.Sprintf("-d %s -p %s -m %s --dport %d", hostPrefix(sp.ClusterIP), sp.ProtocolLower(), sp.ProtocolLower(), sp.Port)

	if !sel.HasAny {
		r.filterDispatch = append(r.filterDispatch, fmt.Sprintf(`-m comment --comment "%s has no endpoints" %s -j REJECT`, name, dst))
		return r
	}

	svcChain, svlChain := servicePortChain(sp.Name), localPolicyChain(sp.Name)
	useCluster := sp.UsesClusterEndpoints() && len(sel.Cluster) > 0
	useLocal := sp.UsesLocalEndpoints() && len(sel.Local) > 0
	internalChain, internalHasEndpoints := svcChain, useCluster
	if sp.InternalPolicyLocal {
		internalChain, internalHasEndpoints = svlChain, useLocal
	}

	if internalHasEndpoints {
		r.natDispatch = append(r.natDispatch, fmt.Sprintf(`-m comment --comment "%s cluster IP" %s -j %s`, name, dst, internalChain))
	} else {
		// Endpoints exist elsewhere but none may take this traffic (internalTrafficPolicy
		// Local with no endpoint on this node): drop, as kube-proxy does, rather than
		// reject, because the Service itself is healthy.
		r.filterDispatch = append(r.filterDispatch, fmt.Sprintf(`-m comment --comment "%s has no local endpoints" %s -j DROP`, name, dst))
	}

	var masq string
	switch {
	case cfg.MasqueradeAll:
		masq = fmt.Sprintf(`-m comment --comment "%s cluster IP" %s -j %s`, name, dst, markMasqChain)
	case cfg.ClusterCIDR.IsValid():
		masq = fmt.Sprintf(`-m comment --comment "%s cluster IP" ! -s %s %s -j %s`, name, cfg.ClusterCIDR, dst, markMasqChain)
	}

	if useCluster {
		r.chains = append(r.chains, balanceChain(svcChain, sp, sel.Cluster, maskIf(internalChain == svcChain, masq)))
	}
	if useLocal {
		r.chains = append(r.chains, balanceChain(svlChain, sp, sel.Local, maskIf(internalChain == svlChain, masq)))
	}
	for _, ep := range sel.AllReachable {
		r.chains = append(r.chains, endpointRules(sp, ep))
	}
	return r
}

func maskIf(keep bool, rule string) string {
	if keep {
		return rule
	}
	return ""
}

// balanceChain spreads new connections evenly over endpoints: the i-th of n rules matches
// with probability 1/(n-i), so each endpoint gets 1/n overall. With session affinity, a
// client seen recently goes back to the endpoint it used before.
func balanceChain(name string, sp *proxier.ServicePort, endpoints []proxier.Endpoint, masq string) chain {
	c := chain{name: name}
	if masq != "" {
		c.rules = append(c.rules, masq)
	}
	comment := sp.Name.String()
	if sp.SessionAffinityTimeout > 0 {
		for _, ep := range endpoints {
			sep := endpointChain(sp.Name, ep)
			c.rules = append(c.rules, fmt.Sprintf(`-m comment --comment "%s -> %s" -m recent --name %s --mask %s --rcheck --seconds %d --reap -j %s`,
				comment, ep, sep, fullMask(ep.IP), int(sp.SessionAffinityTimeout.Seconds()), sep))
		}
	}
	for i, ep := range endpoints {
		rule := fmt.Sprintf(`-m comment --comment "%s -> %s"`, comment, ep)
		if left := len(endpoints) - i; left > 1 {
			rule += fmt.Sprintf(" -m statistic --mode random --probability %0.10f", 1.0/float64(left))
		}
		c.rules = append(c.rules, rule+" -j "+endpointChain(sp.Name, ep))
	}
	return c
}

// endpointRules DNATs to one endpoint, masquerading a pod that reaches itself through the
// Service (hairpin), since it would otherwise answer its own address directly and the
// connection would not match.
func endpointRules(sp *proxier.ServicePort, ep proxier.Endpoint) chain {
	name := endpointChain(sp.Name, ep)
	comment := sp.Name.String()
	affinity := ""
	if sp.SessionAffinityTimeout > 0 {
		affinity = fmt.Sprintf(" -m recent --name %s --mask %s --set", name, fullMask(ep.IP))
	}
	return chain{name: name, rules: []string{
		fmt.Sprintf(`-m comment --comment "%s" -s %s -j %s`, comment, hostPrefix(ep.IP), markMasqChain),
		fmt.Sprintf(`-m comment --comment "%s"%s -p %s -m %s -j DNAT --to-destination %s`, comment, affinity, sp.ProtocolLower(), sp.ProtocolLower(), ep),
	}}
}

func hostPrefix(a netip.Addr) string {
	return netip.PrefixFrom(a, a.BitLen()).String()
}

func fullMask(a netip.Addr) string {
	if a.Is4() {
		return "255.255.255.255"
	}
	return "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
}

// staticRules are the chains with fixed content, per table.
func staticRules(cfg *RenderConfig) map[Table][]chain {
	mark := cfg.MasqueradeMark
	return map[Table][]chain{
		TableNAT: {
			{name: servicesChain},
			{name: markMasqChain, rules: []string{"-j MARK --or-mark " + mark}},
			{name: postroutingChain, rules: []string{
				fmt.Sprintf("-m mark ! --mark %s/%s -j RETURN", mark, mark),
				// Clear the mark so a packet that loops through the stack again (e.g. via
				// a bridge or IPsec) is not masqueraded twice.
				"-j MARK --xor-mark " + mark,
				`-m comment --comment "switchyard service traffic requiring SNAT" -j MASQUERADE --random-fully`,
			}},
		},
		TableFilter: {
			{name: servicesChain},
			{name: forwardChain, rules: []string{
				fmt.Sprintf(`-m comment --comment "switchyard forwarding rules" -m mark --mark %s/%s -j ACCEPT`, mark, mark),
				`-m comment --comment "switchyard forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT`,
			}},
		},
	}
}

// hookRule is a jump from a built-in chain into one of ours.
type hookRule struct {
	table Table
	chain string
	rule  []string
}

// hooks are the only rules this backend puts in chains it does not own.
var hooks = []hookRule{
	{TableNAT, "PREROUTING", []string{"-m", "comment", "--comment", "switchyard service portals", "-j", servicesChain}},
	{TableNAT, "OUTPUT", []string{"-m", "comment", "--comment", "switchyard service portals", "-j", servicesChain}},
	{TableNAT, "POSTROUTING", []string{"-m", "comment", "--comment", "switchyard postrouting rules", "-j", postroutingChain}},
	{TableFilter, "FORWARD", []string{"-m", "comment", "--comment", "switchyard forwarding rules", "-j", forwardChain}},
	{TableFilter, "FORWARD", []string{"-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment", "switchyard service portals", "-j", servicesChain}},
	{TableFilter, "OUTPUT", []string{"-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment", "switchyard service portals", "-j", servicesChain}},
}

// restoreWriter accumulates one table's section of an iptables-restore input. Chain
// declarations must precede the rules that use them, and deletions must follow the rules
// that stopped referencing them, so the three parts are kept apart until written.
type restoreWriter struct {
	declare []string
	rules   []string
	remove  []string
}

func (w *restoreWriter) declareChain(name string) {
	w.declare = append(w.declare, ":"+name+" - [0:0]")
}

func (w *restoreWriter) writeChain(c chain) {
	w.declareChain(c.name)
	for _, r := range c.rules {
		w.rules = append(w.rules, "-A "+c.name+" "+r)
	}
}

// deleteChain flushes (by declaring) and then deletes a chain.
func (w *restoreWriter) deleteChain(name string) {
	w.declareChain(name)
	w.remove = append(w.remove, "-X "+name)
}

func (w *restoreWriter) empty() bool {
	return len(w.declare) == 0 && len(w.rules) == 0 && len(w.remove) == 0
}

func (w *restoreWriter) writeTo(b *strings.Builder, table Table) int {
	if w.empty() {
		return 0
	}
	b.WriteString("*" + string(table) + "\n")
	for _, part := range [][]string{w.declare, w.rules, w.remove} {
		for _, l := range part {
			b.WriteString(l)
			b.WriteByte('\n')
		}
	}
	b.WriteString("COMMIT\n")
	return len(w.declare) + len(w.rules) + len(w.remove) + 2
}
