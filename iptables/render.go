package iptables

import (
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	"net/netip"

	"github.com/switchyard/switchyard/proxier"
)

// ChainPrefix starts the name of every chain this backend owns. Nothing without it is
// ever changed, and --cleanup removes exactly the chains that carry it.
const ChainPrefix = "SWYD-"

// Chains with fixed names.
const (
	// ServicesChain holds one dispatch rule per Service address: in nat it jumps to the
	// Service's chain, in filter it rejects or drops traffic that has no endpoint to go to.
	ServicesChain = ChainPrefix + "SERVICES"
	// PostroutingChain masquerades packets marked by MarkMasqChain.
	PostroutingChain = ChainPrefix + "POSTROUTING"
	// MarkMasqChain marks a packet for masquerading on its way out.
	MarkMasqChain = ChainPrefix + "MARK-MASQ"
	// ForwardChain accepts forwarded Service traffic even where FORWARD's policy is DROP.
	ForwardChain = ChainPrefix + "FORWARD"
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

// servicePortRules is everything one ServicePort contributes to the kernel.
type servicePortRules struct {
	// natDispatch and filterDispatch are this port's rules in the two SWYD-SERVICES chains.
	natDispatch    []string
	filterDispatch []string
	// chains are the per-service and per-endpoint nat chains, in writing order.
	chains []Chain
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
		masq = fmt.Sprintf(`-m comment --comment "%s cluster IP" %s -j %s`, name, dst, MarkMasqChain)
	case cfg.ClusterCIDR.IsValid():
		masq = fmt.Sprintf(`-m comment --comment "%s cluster IP" ! -s %s %s -j %s`, name, cfg.ClusterCIDR, dst, MarkMasqChain)
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
func balanceChain(name string, sp *proxier.ServicePort, endpoints []proxier.Endpoint, masq string) Chain {
	c := Chain{Name: name}
	if masq != "" {
		c.Rules = append(c.Rules, masq)
	}
	comment := sp.Name.String()
	if sp.SessionAffinityTimeout > 0 {
		for _, ep := range endpoints {
			sep := endpointChain(sp.Name, ep)
			c.Rules = append(c.Rules, fmt.Sprintf(`-m comment --comment "%s -> %s" -m recent --name %s --mask %s --rcheck --seconds %d --reap -j %s`,
				comment, ep, sep, fullMask(ep.IP), int(sp.SessionAffinityTimeout.Seconds()), sep))
		}
	}
	for i, ep := range endpoints {
		rule := fmt.Sprintf(`-m comment --comment "%s -> %s"`, comment, ep)
		if left := len(endpoints) - i; left > 1 {
			rule += fmt.Sprintf(" -m statistic --mode random --probability %0.10f", 1.0/float64(left))
		}
		c.Rules = append(c.Rules, rule+" -j "+endpointChain(sp.Name, ep))
	}
	return c
}

// endpointRules DNATs to one endpoint, masquerading a pod that reaches itself through the
// Service (hairpin), since it would otherwise answer its own address directly and the
// connection would not match.
func endpointRules(sp *proxier.ServicePort, ep proxier.Endpoint) Chain {
	name := endpointChain(sp.Name, ep)
	comment := sp.Name.String()
	affinity := ""
	if sp.SessionAffinityTimeout > 0 {
		affinity = fmt.Sprintf(" -m recent --name %s --mask %s --set", name, fullMask(ep.IP))
	}
	return Chain{Name: name, Rules: []string{
		fmt.Sprintf(`-m comment --comment "%s" -s %s -j %s`, comment, hostPrefix(ep.IP), MarkMasqChain),
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
