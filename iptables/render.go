package iptables

import (
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	"net/netip"
	"slices"

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
	// traffic to the node's own addresses. In filter, it accepts the health-check node
	// ports.
	NodePortsChain = ChainPrefix + "NODEPORTS"
	// ExternalServicesChain (filter) rejects or drops traffic to external entry points
	// that no endpoint may take.
	ExternalServicesChain = ChainPrefix + "EXTERNAL-SERVICES"
	// FirewallChain (filter) drops traffic to load-balancer IPs from outside their
	// source ranges.
	FirewallChain = ChainPrefix + "PROXY-FIREWALL"
	// LocalnetFirewallChain (filter) exists while NodePorts are served on 127.0.0.1:
	// it drops connections to 127.0.0.0/8 from other sources that no NodePort took, as
	// kube-proxy's (and kubelet's) KUBE-FIREWALL does. route_localnet, which localhost
	// NodePorts need, would otherwise let a neighbour reach the node's loopback-only
	// services (https://issues.k8s.io/90259).
	LocalnetFirewallChain = ChainPrefix + "LOCALNET-FIREWALL"
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
	// ResolveConfig is what the Service semantics depend on (masquerading, and the pod
	// network that tells pods from other clients).
	proxier.ResolveConfig
	// MasqueradeMark is the fwmark bit that asks SWYD-POSTROUTING to masquerade, e.g. "0x4000".
	MasqueradeMark string
	NodeName       string
	// NodePortAddresses limits NodePorts to local addresses in these ranges (of the
	// family); empty, or a /0 among them, means every local address. Loopback addresses
	// are left out unless LocalhostNodePorts.
	NodePortAddresses []netip.Prefix
	// LocalhostNodePorts serves NodePorts on 127.0.0.1 too, as kube-proxy's iptables mode
	// does by default (config.Config.LocalhostNodePorts decides it as kube-proxy does).
	// IPv4 only: it is ignored with IPv6. It needs the sysctl route_localnet=1, which
	// the mode sets, and brings LocalnetFirewallChain.
	LocalhostNodePorts bool
	// IPv6 is set for the ip6tables backend.
	IPv6 bool
	// ConntrackTCPLiberal is set when the kernel's nf_conntrack_tcp_be_liberal is on:
	// conntrack then marks only out-of-window resets INVALID, and forwarded INVALID
	// packets need not be dropped.
	ConntrackTCPLiberal bool
}

// nodePortJumps are the last rules of nat SWYD-SERVICES: traffic to the node's own
// addresses goes on to the NodePorts, as in kube-proxy's iptables mode: with every
// address, one rule for all local ones, loopback excluded unless localhost NodePorts are
// served; with ranges, one rule per range, where the loopback addresses of a range are
// left out in the same case (kube-proxy skips each node IP that is loopback, and logs).
func nodePortJumps(cfg *RenderConfig) []string {
	const comment = `-m comment --comment "switchyard service nodeports; NOTE: this must be the last rule in this chain"`
	loopback := cfg.loopback()
	if cfg.nodePortsEverywhere() {
		rule := comment + " -m addrtype --dst-type LOCAL"
		if !cfg.servesLoopback() {
			rule += " ! -d " + loopback.String()
		}
		return []string{rule + " -j " + NodePortsChain}
	}
	var rules []string
	for _, p := range cfg.NodePortAddresses {
		ranges := []netip.Prefix{p}
		if !cfg.servesLoopback() && p.Overlaps(loopback) {
			ranges = withoutPrefix(p, loopback)
		}
		for _, r := range ranges {
			rules = append(rules, fmt.Sprintf("%s -d %s -m addrtype --dst-type LOCAL -j %s", comment, r, NodePortsChain))
		}
	}
	return rules
}

// nodePortsEverywhere reports whether NodePorts are served on every local address, as
// kube-proxy's NodePortAddresses.MatchAll: no range, or a /0 among them.
func (cfg *RenderConfig) nodePortsEverywhere() bool {
	return len(cfg.NodePortAddresses) == 0 || slices.ContainsFunc(cfg.NodePortAddresses, func(p netip.Prefix) bool { return p.Bits() == 0 })
}

// servesLoopback reports whether NodePorts are served on 127.0.0.1 (never over IPv6).
func (cfg *RenderConfig) servesLoopback() bool {
	return cfg.LocalhostNodePorts && !cfg.IPv6
}

// skipsLoopbackRange reports whether NodePorts are not served on the loopback part of
// an explicitly given range that has one, which kube-proxy logs as an error.
func (cfg *RenderConfig) skipsLoopbackRange() bool {
	return !cfg.nodePortsEverywhere() && !cfg.servesLoopback() && slices.ContainsFunc(cfg.NodePortAddresses, cfg.loopback().Overlaps)
}

func (cfg *RenderConfig) loopback() netip.Prefix {
	if cfg.IPv6 {
		return netip.MustParsePrefix("::1/128")
	}
	return netip.MustParsePrefix("127.0.0.0/8")
}

// withoutPrefix is p without hole, which it overlaps, as the fewest prefixes: none when
// hole holds p; else, for each bit between their lengths, the half of p's subdivision at
// that length that does not hold hole. iptables takes one -d per rule, so the rules that
// stand for p become one per prefix.
func withoutPrefix(p, hole netip.Prefix) []netip.Prefix {
	if hole.Bits() <= p.Bits() {
		return nil
	}
	var out []netip.Prefix
	for bit := p.Bits(); bit < hole.Bits(); bit++ {
		a := hole.Addr().AsSlice()
		a[bit/8] ^= 0x80 >> (bit % 8)
		sibling, _ := netip.AddrFromSlice(a)
		out = append(out, netip.PrefixFrom(sibling, bit+1).Masked())
	}
	return out
}

// localnetFirewall is the content of LocalnetFirewallChain: kube-proxy's rule, which
// kubelet also writes in its KUBE-FIREWALL. A connection DNATed to a NodePort's endpoint
// passes; one to a loopback address that no NodePort took, from a source that is not
// loopback, is dropped.
func localnetFirewall() Chain {
	return Chain{Name: LocalnetFirewallChain, Rules: []string{
		`-m comment --comment "block incoming localnet connections" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP`,
	}}
}

// chainRef names a chain in a table.
type chainRef struct {
	table Table
	chain string
}

// The shared chains that hold one or more rules per ServicePort ("dispatch" rules). Their
// rules are edited one by one on partial syncs, never rewritten whole.
var (
	natServices            = chainRef{TableNAT, ServicesChain}
	natNodePorts           = chainRef{TableNAT, NodePortsChain}
	filterServices         = chainRef{TableFilter, ServicesChain}
	filterExternalServices = chainRef{TableFilter, ExternalServicesChain}
	filterFirewall         = chainRef{TableFilter, FirewallChain}
	filterNodePorts        = chainRef{TableFilter, NodePortsChain}
	sharedChains           = []chainRef{natServices, natNodePorts, filterServices, filterExternalServices, filterFirewall, filterNodePorts}
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

// renderServicePort translates one ServicePort's resolution into rules, in the shape of
// kube-proxy's iptables mode: a cluster IP jumps to the chain of its internal policy (SVC
// for Cluster, SVL for Local); external entry points (NodePort, externalIPs,
// load-balancer IPs, the latter through the FW chain when source ranges apply) jump to
// the EXT chain, which sends each class of client where the resolution says; the filter
// table rejects or drops what the resolution refuses. Nothing here decides semantics.
func renderServicePort(cfg *RenderConfig, res *proxier.Resolution) *servicePortRules {
	r := &servicePortRules{}
	sp := res.Port
	name := sp.Name.String()
	proto := fmt.Sprintf("-p %s -m %s", sp.ProtocolLower(), sp.ProtocolLower())
	chainOf := func(p proxier.Policy) string {
		if p == proxier.LocalPolicy {
			return localPolicyChain(sp.Name)
		}
		return servicePortChain(sp.Name)
	}
	// used collects the policy chains that some decision forwards to, so that exactly
	// those are written.
	used := map[proxier.Policy]bool{}
	refuse := func(c chainRef, d proxier.Decision, match string) {
		comment := "has no endpoints"
		if d.Verdict == proxier.Drop {
			comment = "has no local endpoints"
		}
		r.add(c, `-m comment --comment "%s %s" %s -j %s`, name, comment, match, d.Verdict)
	}

	clusterIP := fmt.Sprintf("-d %s %s --dport %d", hostPrefix(sp.ClusterIP), proto, sp.Port)
	var clusterMasq string
	if d := res.Internal; d.Verdict == proxier.Forward {
		used[d.Policy] = true
		r.add(natServices, `-m comment --comment "%s cluster IP" %s -j %s`, name, clusterIP, chainOf(d.Policy))
		switch d.Masquerade {
		case proxier.MasqueradeAlways:
			clusterMasq = fmt.Sprintf(`-m comment --comment "%s cluster IP" %s -j %s`, name, clusterIP, MarkMasqChain)
		case proxier.MasqueradeOffCluster:
			clusterMasq = fmt.Sprintf(`-m comment --comment "%s cluster IP" ! -s %s %s -j %s`, name, cfg.ClusterCIDR, clusterIP, MarkMasqChain)
		}
	} else {
		refuse(filterServices, d, clusterIP)
	}

	if res.HasExternal() {
		ext := externalTrafficChain(sp.Name)
		// The EXT chain exists whenever some client can be served, even when off-node
		// clients are dropped: pods and the node may still be short-circuited.
		serving := res.Endpoints.HasAny
		if serving {
			c := Chain{Name: ext}
			if d := res.ExternalFromPods; d.Verdict == proxier.Forward && !sameRoute(d, res.External) {
				used[d.Policy] = true
				c.Rules = append(c.Rules, fmt.Sprintf(`-m comment --comment "pod traffic for %s external destinations" -s %s -j %s`, name, cfg.ClusterCIDR, chainOf(d.Policy)))
			}
			if d := res.ExternalFromNode; d.Verdict == proxier.Forward && !sameRoute(d, res.External) {
				used[d.Policy] = true
				if d.Masquerade == proxier.MasqueradeAlways {
					c.Rules = append(c.Rules, fmt.Sprintf(`-m comment --comment "masquerade LOCAL traffic for %s external destinations" -m addrtype --src-type LOCAL -j %s`, name, MarkMasqChain))
				}
				c.Rules = append(c.Rules, fmt.Sprintf(`-m comment --comment "route LOCAL traffic for %s external destinations" -m addrtype --src-type LOCAL -j %s`, name, chainOf(d.Policy)))
			}
			if d := res.External; d.Verdict == proxier.Forward {
				used[d.Policy] = true
				if d.Masquerade == proxier.MasqueradeAlways {
					c.Rules = append(c.Rules, fmt.Sprintf(`-m comment --comment "masquerade traffic for %s external destinations" -j %s`, name, MarkMasqChain))
				}
				c.Rules = append(c.Rules, "-j "+chainOf(d.Policy))
			}
			r.chains = append(r.chains, c)
		}
		var fw *Chain
		for _, e := range res.EntryPoints {
			if !e.External() {
				continue
			}
			shared, match := natServices, fmt.Sprintf("-d %s %s --dport %d", hostPrefix(e.Addr), proto, e.Port)
			// The filter table recognises a NodePort that nat did not DNAT by its
			// destination being any local address (the nat rule's own condition).
			filterMatch := match
			if e.Kind == proxier.NodePortEntry {
				shared, match = natNodePorts, fmt.Sprintf("%s --dport %d", proto, e.Port)
				filterMatch = "-m addrtype --dst-type LOCAL " + match
			}
			target := ext
			// Without any endpoint everyone is rejected below, before a firewall could
			// matter: kube-proxy's usesFWChain.
			if len(e.SourceRanges) > 0 && res.External.Verdict != proxier.Reject {
				if fw == nil {
					fw = firewallRules(sp, e, ext)
				}
				target = fw.Name
				// Traffic from outside the ranges is not DNATed; the filter table then
				// sees it still addressed to the load balancer, and drops it.
				r.add(filterFirewall, `-m comment --comment "%s traffic not accepted by %s" %s -j DROP`, name, target, filterMatch)
			}
			if serving {
				r.add(shared, `-m comment --comment "%s %s" %s -j %s`, name, e.Kind, match, target)
			}
			if d := res.External; d.Verdict != proxier.Forward {
				// What the EXT chain did not send anywhere (off-node clients without an
				// endpoint to take them) is still addressed to the entry point here.
				refuse(filterExternalServices, d, filterMatch)
			}
		}
		if fw != nil {
			r.chains = append(r.chains, *fw)
		}
	}
	if sp.HealthCheckNodePort != 0 {
		// Whatever the endpoints, so that a load balancer's health check gets its answer
		// (503 without a local endpoint) even where INPUT's policy drops.
		r.add(filterNodePorts, `-m comment --comment "%s health check node port" -p tcp -m tcp --dport %d -j ACCEPT`, name, sp.HealthCheckNodePort)
	}

	if used[proxier.ClusterPolicy] {
		masq := ""
		if res.Internal.Verdict == proxier.Forward && res.Internal.Policy == proxier.ClusterPolicy {
			masq = clusterMasq
		}
		r.chains = append(r.chains, balanceChain(servicePortChain(sp.Name), sp, res.Endpoints.Cluster, masq))
	}
	if used[proxier.LocalPolicy] {
		masq := ""
		if res.Internal.Verdict == proxier.Forward && res.Internal.Policy == proxier.LocalPolicy {
			masq = clusterMasq
		}
		r.chains = append(r.chains, balanceChain(localPolicyChain(sp.Name), sp, res.Endpoints.Local, masq))
	}
	for _, ep := range res.Endpoints.AllReachable {
		r.chains = append(r.chains, endpointRules(sp, ep))
	}
	return r
}

// sameRoute reports whether two decisions send traffic the same way, so that one rule
// serves both.
func sameRoute(a, b proxier.Decision) bool {
	return a.Verdict == b.Verdict && a.Policy == b.Policy && a.Masquerade == b.Masquerade
}

// firewallRules renders the FW chain that admits traffic to the load-balancer IPs from
// the entry point's source ranges only, on to the EXT chain.
func firewallRules(sp *proxier.ServicePort, e proxier.EntryPoint, ext string) *Chain {
	fw := &Chain{Name: firewallChain(sp.Name)}
	for _, src := range e.SourceRanges {
		fw.Rules = append(fw.Rules, fmt.Sprintf(`-m comment --comment "%s loadbalancer IP" -s %s -j %s`, sp.Name, src, ext))
	}
	if e.AllowLoadBalancerSources {
		for _, ip := range sp.LoadBalancerIPs {
			fw.Rules = append(fw.Rules, fmt.Sprintf(`-m comment --comment "%s loadbalancer IP" -s %s -j %s`, sp.Name, hostPrefix(ip), ext))
		}
	}
	return fw
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
