package proxier

import (
	"slices"

	v1 "k8s.io/api/core/v1"
)

// ExternallyAccessible reports whether traffic can enter the Service from outside the
// cluster network (NodePort, load-balancer ingress IPs or externalIPs).
func (p *ServicePort) ExternallyAccessible() bool {
	return p.NodePort != 0 || len(p.LoadBalancerIPs) > 0 || len(p.ExternalIPs) > 0
}

// UsesClusterEndpoints reports whether some traffic to the Service may go to endpoints on
// any node: internal traffic with the Cluster policy, or any external entry point at all,
// because even under externalTrafficPolicy Local, pods and the node itself reach external
// entry points through the Cluster endpoints (the short-circuit). As kube-proxy's
// BaseServicePortInfo.UsesClusterEndpoints (pkg/proxy/serviceport.go).
func (p *ServicePort) UsesClusterEndpoints() bool {
	return !p.InternalPolicyLocal || p.ExternallyAccessible()
}

// UsesLocalEndpoints reports whether some traffic to the Service must stay on this node
// (kube-proxy's BaseServicePortInfo.UsesLocalEndpoints).
func (p *ServicePort) UsesLocalEndpoints() bool {
	return p.InternalPolicyLocal || (p.ExternallyAccessible() && p.ExternalPolicyLocal)
}

// EndpointSelection is which endpoints each traffic policy may use: kube-proxy's
// CategorizeEndpoints (pkg/proxy/topology.go). Resolve builds its decisions on it;
// backends never filter endpoints themselves.
type EndpointSelection struct {
	// Cluster receives traffic under the Cluster policy: ready endpoints (narrowed by
	// topology hints when they apply), or serving-and-terminating ones when none is ready.
	Cluster []Endpoint
	// Local receives traffic under the Local policy: this node's ready endpoints, or its
	// serving-and-terminating ones when none is ready.
	Local []Endpoint
	// AllReachable is the union of the endpoints any traffic can reach, for state that is
	// kept per endpoint (chains, real servers, conntrack cleanup).
	AllReachable []Endpoint
	// HasAny is false when no endpoint anywhere can serve, which means connections must
	// be rejected rather than black-holed.
	HasAny bool
}

// selectEndpoints applies the semantics of ready/serving/terminating conditions, traffic
// policies and topology hints to the endpoints of one ServicePort, as kube-proxy's
// CategorizeEndpoints does.
func selectEndpoints(sp *ServicePort, endpoints []Endpoint, nodeName string, nodeLabels map[string]string) EndpointSelection {
	var sel EndpointSelection
	if sp.UsesClusterEndpoints() {
		usable := topologyFilter(endpoints, nodeName, nodeLabels[v1.LabelTopologyZone])
		sel.Cluster = filter(endpoints, func(e Endpoint) bool { return e.Ready && usable(e) })
		// Topology never empties the set when ready endpoints exist (topologyFilter
		// falls back to all), so an empty set here means nothing is ready anywhere.
		if len(sel.Cluster) == 0 {
			sel.Cluster = filter(endpoints, func(e Endpoint) bool { return e.Serving && e.Terminating && usable(e) })
		}
		sel.HasAny = len(sel.Cluster) > 0
	}
	if !sp.UsesLocalEndpoints() {
		sel.AllReachable = sel.Cluster
		return sel
	}

	for _, e := range endpoints {
		if e.Ready || (e.Serving && e.Terminating) {
			sel.HasAny = true
		}
	}
	sel.Local = filter(endpoints, func(e Endpoint) bool { return e.IsLocal(nodeName) && e.Ready })
	if len(sel.Local) == 0 {
		sel.Local = filter(endpoints, func(e Endpoint) bool { return e.IsLocal(nodeName) && e.Serving && e.Terminating })
	}
	if !sp.UsesClusterEndpoints() || len(sel.Local) == 0 {
		if sp.UsesClusterEndpoints() {
			sel.AllReachable = sel.Cluster
		} else {
			sel.AllReachable = sel.Local
		}
		return sel
	}
	// Cluster may hold remote endpoints that Local lacks, and Local may hold terminating or
	// topology-excluded local endpoints that Cluster lacks: keep both, once each.
	sel.AllReachable = slices.Clone(sel.Cluster)
	for _, e := range sel.Local {
		if !slices.ContainsFunc(sel.AllReachable, func(o Endpoint) bool { return o.IP == e.IP && o.Port == e.Port }) {
			sel.AllReachable = append(sel.AllReachable, e)
		}
	}
	return sel
}

// topologyFilter returns the predicate topology-aware routing imposes. Hints are only
// trusted when every usable endpoint carries them and some are meant for this node or
// zone; otherwise every endpoint is acceptable, so that traffic is never black-holed by
// incomplete hints. Node hints come first, whatever the Service's trafficDistribution
// says: kube-proxy v1.35 looks only at the hints (topologyModeFromHints, with the
// PreferSameTrafficDistribution gate locked on), and the EndpointSlice controller writes
// node hints only for PreferSameNode.
func topologyFilter(endpoints []Endpoint, nodeName, zone string) func(Endpoint) bool {
	all := func(Endpoint) bool { return true }
	candidates := filter(endpoints, func(e Endpoint) bool { return e.Ready })
	if len(candidates) == 0 {
		return all
	}
	if nodeName != "" {
		complete, forUs := hintCoverage(candidates, func(e Endpoint) []string { return e.NodeHints }, nodeName)
		if complete && forUs {
			return func(e Endpoint) bool { return slices.Contains(e.NodeHints, nodeName) }
		}
	}
	if zone == "" {
		return all
	}
	complete, forUs := hintCoverage(candidates, func(e Endpoint) []string { return e.ZoneHints }, zone)
	if !complete || !forUs {
		return all
	}
	return func(e Endpoint) bool { return slices.Contains(e.ZoneHints, zone) }
}

func hintCoverage(endpoints []Endpoint, hints func(Endpoint) []string, want string) (complete, forUs bool) {
	complete = true
	for _, e := range endpoints {
		h := hints(e)
		if len(h) == 0 {
			complete = false
		}
		if slices.Contains(h, want) {
			forUs = true
		}
	}
	return complete, forUs
}

func filter(endpoints []Endpoint, keep func(Endpoint) bool) []Endpoint {
	var out []Endpoint
	for _, e := range endpoints {
		if keep(e) {
			out = append(out, e)
		}
	}
	return out
}
