package proxier

import (
	"net/netip"
	"slices"
)

// This file is where Service semantics are decided, once for every backend: for each
// ServicePort, what each kind of traffic gets at each entry point. A backend translates a
// Resolution into its kernel objects (chains, or virtual servers, set members and a fixed
// rule set) and decides nothing about policies itself. The decisions follow kube-proxy
// v1.35's iptables mode (pkg/proxy/iptables/proxier.go syncProxyRules), the reference for
// what a Service means on a node; each field says which part of it.

// Verdict is what happens to a new connection.
type Verdict int

const (
	// Forward sends it to one endpoint of the decision's set (DNAT, or a real server).
	Forward Verdict = iota
	// Reject refuses it at once (TCP reset or ICMP unreachable): the Service has no
	// usable endpoint anywhere, and a client must not wait for a timeout.
	Reject
	// Drop discards it: endpoints exist, but none that this traffic may use (a Local
	// traffic policy without a local endpoint), so a load balancer's health check, not
	// the client, learns of it.
	Drop
)

func (v Verdict) String() string {
	switch v {
	case Forward:
		return "forward"
	case Reject:
		return "REJECT"
	default:
		return "DROP"
	}
}

// Policy names the endpoint set a decision forwards to.
type Policy int

const (
	// ClusterPolicy is every usable endpoint in the cluster (EndpointSelection.Cluster).
	ClusterPolicy Policy = iota
	// LocalPolicy is this node's usable endpoints only (EndpointSelection.Local).
	LocalPolicy
)

// Masquerade says which of a decision's connections are SNATed to the node, so that
// replies come back through it.
type Masquerade int

const (
	// MasqueradeNone keeps every client's address.
	MasqueradeNone Masquerade = iota
	// MasqueradeAlways SNATs every connection.
	MasqueradeAlways
	// MasqueradeOffCluster SNATs connections whose source is not a pod of this cluster
	// (outside ResolveConfig.ClusterCIDR, kube-proxy's local traffic detector).
	MasqueradeOffCluster
)

// Decision is what one class of traffic gets at an entry point.
type Decision struct {
	Verdict Verdict
	// Policy and Endpoints are the set a Forward goes to (Endpoints is never empty then).
	Policy    Policy
	Endpoints []Endpoint
	// Masquerade applies to forwarded connections.
	Masquerade Masquerade
}

func forward(policy Policy, endpoints []Endpoint, masq Masquerade) Decision {
	return Decision{Verdict: Forward, Policy: policy, Endpoints: endpoints, Masquerade: masq}
}

// EntryKind is how traffic enters a Service port.
type EntryKind int

const (
	ClusterIPEntry EntryKind = iota
	ExternalIPEntry
	LoadBalancerIPEntry
	// NodePortEntry is the NodePort on every node-port address of the node.
	NodePortEntry
)

func (k EntryKind) String() string {
	return [...]string{"cluster IP", "external IP", "loadbalancer IP", "nodePort"}[k]
}

// EntryPoint is one destination of a Service port.
type EntryPoint struct {
	Kind EntryKind
	// Addr is the destination address; invalid for a NodePort.
	Addr netip.Addr
	Port int32
	// SourceRanges, on a load-balancer IP, admit only these clients; the others are
	// dropped. Empty when the Service has no loadBalancerSourceRanges. Where the Service
	// has no endpoint at all (External's verdict is Reject), kube-proxy's modes part:
	// its iptables mode rejects everyone without a firewall (usesFWChain needs an
	// endpoint), its IPVS mode still drops who is outside the ranges (its
	// KUBE-LOAD-BALANCER-FW members do not depend on endpoints).
	SourceRanges []netip.Prefix
	// AllowLoadBalancerSources admits connections whose source is one of the Service's
	// load-balancer IPs, which is how the node's own connections to a load-balancer IP
	// bound locally arrive. kube-proxy does this when a source range holds the node's
	// primary IP (State.NodeIP; allowFromNode).
	AllowLoadBalancerSources bool
	// NodeAddress is set when Addr is one of the node's own addresses: the node already
	// owns it, so a backend must neither bind it nor close its other ports (kube-proxy's
	// IPVS mode never binds a node address to kube-ipvs0).
	NodeAddress bool
}

// External reports whether the entry point is an external one (everything but the
// cluster IP), whose traffic follows externalTrafficPolicy.
func (e EntryPoint) External() bool { return e.Kind != ClusterIPEntry }

// Resolution is the complete decision for one ServicePort on this node.
type Resolution struct {
	Port      *ServicePort
	Endpoints EndpointSelection

	// Internal is what traffic to the cluster IP gets, from anywhere (internal
	// traffic policy): REJECT without any endpoint, DROP under internalTrafficPolicy
	// Local without a local endpoint, else the policy's endpoints, masqueraded as
	// --masquerade-all or the local traffic detector say (kube-proxy's internal chain).
	Internal Decision

	// External is what off-node clients get at the external entry points (NodePort,
	// external IPs, load-balancer IPs that their source ranges admit). Under
	// externalTrafficPolicy Cluster it is masqueraded, since the endpoint may be on
	// another node; under Local it keeps the client's address and uses only this node's
	// endpoints, and drops what no local endpoint can take (kube-proxy's EXT chain).
	External Decision
	// ExternalFromPods is what pods on this node get at the external entry points, and
	// ExternalFromNode what the node's own processes get. Under externalTrafficPolicy
	// Local they are short-circuited to any endpoint, as if they had gone out to the load
	// balancer and back; the node's connections are masqueraded, since their source is
	// a node address that a remote endpoint cannot answer through this node otherwise.
	// Pods are recognised by ClusterCIDR only: without it they are treated as off-node
	// clients. Under Cluster both equal External.
	ExternalFromPods Decision
	ExternalFromNode Decision

	// EntryPoints lists every destination of the port: the cluster IP first, then the
	// external IPs, the load-balancer IPs and the NodePort (if any). External decisions
	// apply to all but the cluster IP.
	EntryPoints []EntryPoint
}

// HasExternal reports whether the port has external entry points.
func (r *Resolution) HasExternal() bool { return r.Port.ExternallyAccessible() }

// ResolveConfig is the proxy configuration that Service semantics depend on.
type ResolveConfig struct {
	// MasqueradeAll masquerades all traffic to cluster IPs (--masquerade-all).
	MasqueradeAll bool
	// ClusterCIDR, when valid, is the pod network (--cluster-cidr): kube-proxy's local
	// traffic detector, which tells pods from other clients.
	ClusterCIDR netip.Prefix
}

// Resolve decides what every class of traffic gets at every entry point of sp, given its
// endpoints, the node (name, labels and primary IP from state; nodeIPs, the addresses
// the node's interfaces hold in sp's family, when the backend binds addresses) and the
// proxy configuration.
func Resolve(cfg *ResolveConfig, state *State, sp *ServicePort, nodeIPs []netip.Addr) *Resolution {
	sel := selectEndpoints(sp, state.Endpoints[sp.Name], state.NodeName, state.NodeLabels)
	r := &Resolution{Port: sp, Endpoints: sel}

	// kube-proxy's hasEndpoints, hasInternalEndpoints and hasExternalEndpoints.
	internalPolicy, internalEndpoints := ClusterPolicy, sel.Cluster
	if sp.InternalPolicyLocal {
		internalPolicy, internalEndpoints = LocalPolicy, sel.Local
	}
	externalPolicy, externalEndpoints := ClusterPolicy, sel.Cluster
	if sp.ExternalPolicyLocal {
		externalPolicy, externalEndpoints = LocalPolicy, sel.Local
	}

	clusterMasq := MasqueradeNone
	switch {
	case cfg.MasqueradeAll:
		clusterMasq = MasqueradeAlways
	case cfg.ClusterCIDR.IsValid():
		clusterMasq = MasqueradeOffCluster
	}
	switch {
	case !sel.HasAny:
		r.Internal = Decision{Verdict: Reject}
	case len(internalEndpoints) == 0:
		r.Internal = Decision{Verdict: Drop}
	default:
		r.Internal = forward(internalPolicy, internalEndpoints, clusterMasq)
	}

	switch {
	case !sel.HasAny:
		r.External = Decision{Verdict: Reject}
	case len(externalEndpoints) == 0:
		r.External = Decision{Verdict: Drop}
	case sp.ExternalPolicyLocal:
		r.External = forward(externalPolicy, externalEndpoints, MasqueradeNone)
	default:
		r.External = forward(externalPolicy, externalEndpoints, MasqueradeAlways)
	}
	r.ExternalFromPods, r.ExternalFromNode = r.External, r.External
	if sp.ExternalPolicyLocal && sel.HasAny {
		// sel.Cluster is never empty here: an externally accessible port always uses
		// Cluster endpoints, and HasAny means one is usable.
		if cfg.ClusterCIDR.IsValid() {
			r.ExternalFromPods = forward(ClusterPolicy, sel.Cluster, MasqueradeNone)
		}
		r.ExternalFromNode = forward(ClusterPolicy, sel.Cluster, MasqueradeAlways)
	}

	r.EntryPoints = append(r.EntryPoints, EntryPoint{Kind: ClusterIPEntry, Addr: sp.ClusterIP, Port: sp.Port})
	isNodeIP := func(a netip.Addr) bool { return slices.Contains(nodeIPs, a) }
	for _, ip := range sp.ExternalIPs {
		r.EntryPoints = append(r.EntryPoints, EntryPoint{Kind: ExternalIPEntry, Addr: ip, Port: sp.Port, NodeAddress: isNodeIP(ip)})
	}
	ranges := sp.LoadBalancerSourceRanges
	allowFromNode := state.NodeIP.IsValid() && slices.ContainsFunc(ranges, func(p netip.Prefix) bool { return p.Contains(state.NodeIP) })
	for _, ip := range sp.LoadBalancerIPs {
		r.EntryPoints = append(r.EntryPoints, EntryPoint{Kind: LoadBalancerIPEntry, Addr: ip, Port: sp.Port, NodeAddress: isNodeIP(ip),
			SourceRanges: ranges, AllowLoadBalancerSources: allowFromNode})
	}
	if sp.NodePort != 0 {
		r.EntryPoints = append(r.EntryPoints, EntryPoint{Kind: NodePortEntry, Port: sp.NodePort})
	}
	return r
}
