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
	// NodePortsChain holds one rule per NodePort; SWYD-SERVICES jumps to it last, for
	// traffic to the node's own addresses.
	NodePortsChain = ChainPrefix + "NODEPORTS"
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

// externalTrafficChain is the chain for traffic to a Service port's external destinations
// (NodePort, externalIPs, load-balancer IPs).
func externalTrafficChain(name proxier.ServicePortName) string {
	return ChainPrefix + "EXT-" + hash(name.String()+string(name.Protocol))
}

// firewallChain admits traffic to a load-balancer IP from loadBalancerSourceRanges only.
func firewallChain(name proxier.ServicePortName) string {
	return ChainPrefix + "FW-" + hash(name.String()+string(name.Protocol))
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
	// NodePortAddresses limits NodePorts to local addresses in these ranges; empty means
	// every local address but loopback.
	NodePortAddresses []netip.Prefix
	// IPv6 is set for the ip6tables backend.
	IPv6 bool
}

// nodePortJumps are the last rules of nat SWYD-SERVICES: traffic to the node's own
// addresses goes on to the NodePorts. Loopback is never included: a NodePort on 127.0.0.1
// needs route_localnet, which opens the node's loopback services to its neighbours.
func nodePortJumps(cfg *RenderConfig) []string {
	const comment = `-m comment --comment "switchyard service nodeports; NOTE: this must be the last rule in this chain"`
	if len(cfg.NodePortAddresses) == 0 {
		loopback := "127.0.0.0/8"
		if cfg.IPv6 {
			loopback = "::1/128"
		}
		return []string{fmt.Sprintf("%s -m addrtype --dst-type LOCAL ! -d %s -j %s", comment, loopback, NodePortsChain)}
	}
	var rules []string
	for _, p := range cfg.NodePortAddresses {
		rules = append(rules, fmt.Sprintf("%s -d %s -m addrtype --dst-type LOCAL -j %s", comment, p, NodePortsChain))
	}
	return rules
}

// chainRef names a chain in a table.
type chainRef struct {
	table Table
	chain string
}

// The shared chains that hold one or more rules per ServicePort ("dispatch" rules). Their
// rules are edited one by one on partial syncs, never rewritten whole.
var (
	natServices    = chainRef{TableNAT, ServicesChain}
	natNodePorts   = chainRef{TableNAT, NodePortsChain}
	filterServices = chainRef{TableFilter, ServicesChain}
)

// servicePortRules is everything one ServicePort contributes to the kernel.
type servicePortRules struct {
	// dispatch holds this port's rules in the shared chains.
	dispatch map[chainRef][]string
	// chains are the per-service and per-endpoint nat chains, in writing order.
	chains []Chain
}

func (r *servicePortRules) add(c chainRef, format string, args ...any) {
	if r.dispatch == nil {
		r.dispatch = map[chainRef][]string{}
	}
	r.dispatch[c] = append(r.dispatch[c], fmt.Sprintf(format, args...))
}

// renderServicePort renders one ServicePort from its endpoint selection. The chains and
// their meaning follow kube-proxy's iptables mode: a cluster IP jumps to the internal
// traffic chain (SVC, or SVL for internalTrafficPolicy Local); external entry points
// (NodePort, externalIPs, load-balancer IPs) jump to the EXT chain, which masquerades and
// picks the cluster or local policy chain; the filter table rejects traffic to a Service
// without endpoints and drops what no policy lets through.
func renderServicePort(cfg *RenderConfig, sp *proxier.ServicePort, sel proxier.EndpointSelection) *servicePortRules {
	r := &servicePortRules{}
	name := sp.Name.String()
	proto := fmt.Sprintf("-p %s -m %s", sp.ProtocolLower(), sp.ProtocolLower())
	dst := fmt.Sprintf("-d %s %s --dport %d", hostPrefix(sp.ClusterIP), proto, sp.Port)
	// Every external destination of the port, as a match, and the shared chain its
	// dispatch rule lives in.
	type destination struct {
		chain chainRef
		match string
		kind  string
	}
	var external []destination
	for _, ip := range sp.ExternalIPs {
		external = append(external, destination{natServices, fmt.Sprintf("-d %s %s --dport %d", hostPrefix(ip), proto, sp.Port), "external IP"})
	}
	for _, ip := range sp.LoadBalancerIPs {
		external = append(external, destination{natServices, fmt.Sprintf("-d %s %s --dport %d", hostPrefix(ip), proto, sp.Port), "loadbalancer IP"})
	}
	if sp.NodePort != 0 {
		external = append(external, destination{natNodePorts, fmt.Sprintf("%s --dport %d", proto, sp.NodePort), "nodePort"})
	}
	// filterMatch is how the filter table recognises an external destination that nat
	// did not DNAT: a nodePort is any local address (the nat rule's own condition).
	filterMatch := func(d destination) string {
		if d.chain == natNodePorts {
			return "-m addrtype --dst-type LOCAL " + d.match
		}
		return d.match
	}

	if !sel.HasAny {
		r.add(filterServices, `-m comment --comment "%s has no endpoints" %s -j REJECT`, name, dst)
		for _, d := range external {
			r.add(filterServices, `-m comment --comment "%s has no endpoints" %s -j REJECT`, name, filterMatch(d))
		}
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
		r.add(natServices, `-m comment --comment "%s cluster IP" %s -j %s`, name, dst, internalChain)
	} else {
		// Endpoints exist elsewhere but none may take this traffic (internalTrafficPolicy
		// Local with no endpoint on this node): drop, as kube-proxy does, rather than
		// reject, because the Service itself is healthy.
		r.add(filterServices, `-m comment --comment "%s has no local endpoints" %s -j DROP`, name, dst)
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
	if len(external) > 0 {
		ext, externalHasEndpoints := externalChain(cfg, sp, useCluster, useLocal)
		if len(ext.Rules) > 0 {
			r.chains = append(r.chains, ext)
		}
		firewall := len(sp.LoadBalancerSourceRanges) > 0
		for _, d := range external {
			target := ext.Name
			if firewall && d.kind == "loadbalancer IP" {
				target = firewallChain(sp.Name)
				// Traffic from outside the allowed ranges is not DNATed; the filter table
				// then sees it still addressed to the load balancer, and drops it.
				r.add(filterServices, `-m comment --comment "%s traffic not accepted by %s" %s -j DROP`, name, target, filterMatch(d))
			}
			if len(ext.Rules) > 0 {
				r.add(d.chain, `-m comment --comment "%s %s" %s -j %s`, name, d.kind, d.match, target)
			}
			if !externalHasEndpoints {
				// externalTrafficPolicy Local with no endpoint here: the load balancer's
				// health check steers away; whatever still arrives is dropped, not
				// rejected, as kube-proxy does.
				r.add(filterServices, `-m comment --comment "%s has no local endpoints" %s -j DROP`, name, filterMatch(d))
			}
		}
		if firewall {
			fw := Chain{Name: firewallChain(sp.Name)}
			for _, src := range sp.LoadBalancerSourceRanges {
				fw.Rules = append(fw.Rules, fmt.Sprintf(`-m comment --comment "%s loadbalancer IP" -s %s -j %s`, name, src, ext.Name))
			}
			r.chains = append(r.chains, fw)
		}
	}
	for _, ep := range sel.AllReachable {
		r.chains = append(r.chains, endpointRules(sp, ep))
	}
	return r
}

// externalChain renders the EXT chain that traffic to the port's external destinations
// goes through, and reports whether external clients have an endpoint to reach.
func externalChain(cfg *RenderConfig, sp *proxier.ServicePort, useCluster, useLocal bool) (Chain, bool) {
	name := sp.Name.String()
	c := Chain{Name: externalTrafficChain(sp.Name)}
	svcChain, svlChain := servicePortChain(sp.Name), localPolicyChain(sp.Name)
	if !sp.ExternalPolicyLocal {
		if !useCluster {
			return c, false
		}
		c.Rules = []string{
			fmt.Sprintf(`-m comment --comment "masquerade traffic for %s external destinations" -j %s`, name, MarkMasqChain),
			"-j " + svcChain,
		}
		return c, true
	}
	// externalTrafficPolicy Local keeps the client's address and only uses endpoints on
	// this node. Pods and the node itself are not external clients: they are sent to any
	// endpoint ("short-circuit"), so in-cluster clients work even without a local one.
	shortCircuit := ""
	switch {
	case useCluster:
		shortCircuit = svcChain
	case useLocal:
		shortCircuit = svlChain
	}
	if shortCircuit != "" {
		if cfg.ClusterCIDR.IsValid() {
			c.Rules = append(c.Rules, fmt.Sprintf(`-m comment --comment "pod traffic for %s external destinations" -s %s -j %s`, name, cfg.ClusterCIDR, shortCircuit))
		}
		c.Rules = append(c.Rules,
			fmt.Sprintf(`-m comment --comment "masquerade LOCAL traffic for %s external destinations" -m addrtype --src-type LOCAL -j %s`, name, MarkMasqChain),
			fmt.Sprintf(`-m comment --comment "route LOCAL traffic for %s external destinations" -m addrtype --src-type LOCAL -j %s`, name, shortCircuit))
	}
	if useLocal {
		c.Rules = append(c.Rules, "-j "+svlChain)
	}
	return c, useLocal
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
