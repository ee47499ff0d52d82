package differential

import (
	"net/netip"
	"slices"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"

	"github.com/switchyard/switchyard/internal/lab"
	"github.com/switchyard/switchyard/proxier"
)

// traits reads the corners a scenario exercises back from its objects, in a fixed order.
func (g *generator) traits(svc *v1.Service, eps []*discovery.EndpointSlice) []string {
	var traits []string
	add := func(ok bool, trait string) {
		if ok {
			traits = append(traits, trait)
		}
	}
	spec := &svc.Spec
	isHeadless := spec.ClusterIP == v1.ClusterIPNone
	_, otherProxy := svc.Labels[proxier.LabelServiceProxyName]
	add(spec.Type == v1.ServiceTypeClusterIP && !isHeadless, TraitClusterIP)
	add(spec.Type == v1.ServiceTypeNodePort, TraitNodePort)
	add(spec.Type == v1.ServiceTypeLoadBalancer, TraitLoadBalancer)
	add(isHeadless, TraitHeadless)
	add(spec.Type == v1.ServiceTypeExternalName, TraitExternalName)
	add(otherProxy, TraitOtherProxy)

	nodeIP := g.o.NodeIP.String()
	add(len(spec.ExternalIPs) > 0, TraitExternalIPs)
	add(slices.Contains(spec.ExternalIPs, nodeIP), TraitExternalIPIsNodeIP)
	ingress := svc.Status.LoadBalancer.Ingress
	add(slices.ContainsFunc(ingress, func(i v1.LoadBalancerIngress) bool { return i.IP == nodeIP }), TraitLBIPIsNodeIP)
	add(slices.ContainsFunc(ingress, func(i v1.LoadBalancerIngress) bool {
		return i.IPMode != nil && *i.IPMode == v1.LoadBalancerIPModeProxy
	}), TraitLBIPModeProxy)
	if len(spec.LoadBalancerSourceRanges) > 0 {
		var ranges []netip.Prefix
		for _, r := range spec.LoadBalancerSourceRanges {
			ranges = append(ranges, netip.MustParsePrefix(r))
		}
		add(slices.ContainsFunc(ranges, func(p netip.Prefix) bool { return p.Bits() == 0 }), TraitSourceRangesAll)
		add(covers(ranges, g.o.ClientIP), TraitSourceRangesIncludeClient)
		add(!covers(ranges, g.o.ClientIP), TraitSourceRangesExcludeClient)
		add(covers(ranges, g.o.NodeIP), TraitSourceRangesIncludeNode)
		add(!covers(ranges, g.o.NodeIP), TraitSourceRangesExcludeNode)
	}

	internalLocal := spec.InternalTrafficPolicy != nil && *spec.InternalTrafficPolicy == v1.ServiceInternalTrafficPolicyLocal
	externalLocal := spec.ExternalTrafficPolicy == v1.ServiceExternalTrafficPolicyLocal
	add(internalLocal, TraitInternalLocal)
	add(externalLocal, TraitExternalLocal)
	add(spec.SessionAffinity == v1.ServiceAffinityClientIP, TraitSessionAffinity)
	add(spec.TrafficDistribution != nil, TraitTrafficDistribution)

	add(len(spec.Ports) > 1, TraitMultiPort)
	add(slices.ContainsFunc(spec.Ports, func(p v1.ServicePort) bool { return p.TargetPort.StrVal != "" }), TraitTargetPortName)
	add(slices.ContainsFunc(spec.Ports, func(p v1.ServicePort) bool {
		return slices.ContainsFunc(spec.Ports, func(q v1.ServicePort) bool { return q.Port == p.Port && q.Protocol != p.Protocol })
	}), TraitPortTwoProtocols)
	add(slices.ContainsFunc(spec.Ports, func(p v1.ServicePort) bool { return p.Protocol == v1.ProtocolUDP }), TraitUDP)
	add(slices.ContainsFunc(spec.Ports, func(p v1.ServicePort) bool { return p.Protocol == v1.ProtocolSCTP }), TraitSCTP)

	if spec.Type == v1.ServiceTypeExternalName || isHeadless || otherProxy {
		// Proxies never look at these Services' endpoints.
		return traits
	}
	var all, local []discovery.Endpoint
	seen := map[string]bool{}
	duplicate, empty, fqdn, ipv4Slices := false, false, false, 0
	for _, s := range eps {
		if s.AddressType != discovery.AddressTypeIPv4 {
			fqdn = true
			continue
		}
		ipv4Slices++
		empty = empty || len(s.Endpoints) == 0
		for _, e := range s.Endpoints {
			duplicate = duplicate || seen[e.Addresses[0]]
			seen[e.Addresses[0]] = true
			all = append(all, e)
			if e.NodeName != nil && *e.NodeName == lab.NodeName {
				local = append(local, e)
			}
		}
	}
	add(len(all) == 0, TraitNoEndpoints)
	add(len(all) > 0 && !slices.ContainsFunc(all, isReady) && slices.ContainsFunc(all, isServingTerminating), TraitTerminatingFallback)
	add(slices.ContainsFunc(all, func(e discovery.Endpoint) bool { return e.Conditions == discovery.EndpointConditions{} }), TraitUnsetConditions)
	noLocal := len(all) > 0 && len(local) == 0
	add(internalLocal && noLocal, TraitInternalLocalNoLocalEndpoints)
	add(externalLocal && noLocal, TraitExternalLocalNoLocalEndpoints)
	add(internalLocal && externalLocal && noLocal, TraitBothLocalNoLocalEndpoints)
	add(externalLocal && len(local) > 0 && !slices.ContainsFunc(local, func(e discovery.Endpoint) bool { return !isServingTerminating(e) }),
		TraitExternalLocalOnlyTerminatingLocal)
	hinted := func(e discovery.Endpoint) bool { return e.Hints != nil }
	add(slices.ContainsFunc(all, func(e discovery.Endpoint) bool { return hinted(e) && len(e.Hints.ForZones) > 0 }), TraitZoneHints)
	add(slices.ContainsFunc(all, func(e discovery.Endpoint) bool { return hinted(e) && len(e.Hints.ForNodes) > 0 }), TraitNodeHints)
	add(slices.ContainsFunc(all, hinted) && slices.ContainsFunc(all, func(e discovery.Endpoint) bool { return !hinted(e) }),
		TraitPartialHints)
	add(ipv4Slices > 1, TraitMultiSlice)
	add(duplicate, TraitDuplicateEndpoint)
	add(empty, TraitEmptySlice)
	add(fqdn, TraitFQDNSlice)
	return traits
}

// isReady reads an endpoint's conditions as the proxies do: an unset ready means ready.
func isReady(e discovery.Endpoint) bool {
	return e.Conditions.Ready == nil || *e.Conditions.Ready
}

// isServingTerminating tells an endpoint the proxies fall back to when none is ready: not
// ready, still serving (unset serving follows ready), and terminating.
func isServingTerminating(e discovery.Endpoint) bool {
	serving := isReady(e)
	if e.Conditions.Serving != nil {
		serving = *e.Conditions.Serving
	}
	return !isReady(e) && serving && e.Conditions.Terminating != nil && *e.Conditions.Terminating
}
