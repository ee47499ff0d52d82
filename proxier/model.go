// Package proxier is switchyard's semantic core: it turns Services and EndpointSlices into
// a backend-neutral model, tracks what changed between syncs, decides which endpoints are
// eligible for each kind of traffic, and drives a Backend through a rate-bounded runner.
// Nothing in this package touches the kernel.
package proxier

import (
	"cmp"
	"net/netip"
	"slices"
	"strconv"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
)

// ServicePortName names one port of one Service: the unit that backends program.
type ServicePortName struct {
	types.NamespacedName
	// Port is the port's name in the Service spec ("" for a single unnamed port).
	Port     string
	Protocol v1.Protocol
}

// String renders "namespace/name:port" ("namespace/name" for an unnamed port), the form
// kube-proxy uses in rule comments and logs.
func (n ServicePortName) String() string {
	if n.Port == "" {
		return n.NamespacedName.String()
	}
	return n.NamespacedName.String() + ":" + n.Port
}

// Compare orders names by namespace, Service, port name and protocol, for output that
// must not depend on map order.
func (n ServicePortName) Compare(o ServicePortName) int {
	return cmp.Or(cmp.Compare(n.Namespace, o.Namespace), cmp.Compare(n.Name, o.Name),
		cmp.Compare(n.Port, o.Port), cmp.Compare(n.Protocol, o.Protocol))
}

// ServicePort is everything a backend needs to know about one port of a Service, for one
// IP family. Addresses of the other family are not present.
type ServicePort struct {
	Name      ServicePortName
	ClusterIP netip.Addr
	Port      int32
	Protocol  v1.Protocol
	// NodePort is 0 when the Service has none.
	NodePort                 int32
	ExternalIPs              []netip.Addr
	LoadBalancerIPs          []netip.Addr
	LoadBalancerSourceRanges []netip.Prefix
	// SessionAffinityTimeout is zero when session affinity is off.
	SessionAffinityTimeout time.Duration
	ExternalPolicyLocal    bool
	InternalPolicyLocal    bool
	HealthCheckNodePort    int32
}

// Endpoint is one address:port that backs a ServicePort.
type Endpoint struct {
	IP          netip.Addr
	Port        int32
	Ready       bool
	Serving     bool
	Terminating bool
	NodeName    string
	Zone        string
	// ZoneHints holds the zones this endpoint is hinted for (topology-aware routing);
	// empty when the slice carries no hints for it.
	ZoneHints []string
	// NodeHints holds the nodes this endpoint is hinted for (PreferSameNode).
	NodeHints []string
}

// String renders "ip:port" (with brackets for IPv6).
func (e Endpoint) String() string {
	return netip.AddrPortFrom(e.IP, uint16(e.Port)).String()
}

// IsLocal reports whether the endpoint runs on the given node.
func (e Endpoint) IsLocal(nodeName string) bool {
	return nodeName != "" && e.NodeName == nodeName
}

func (e Endpoint) equal(o Endpoint) bool {
	return e.IP == o.IP && e.Port == o.Port && e.Ready == o.Ready && e.Serving == o.Serving &&
		e.Terminating == o.Terminating && e.NodeName == o.NodeName && e.Zone == o.Zone &&
		slices.Equal(e.ZoneHints, o.ZoneHints) && slices.Equal(e.NodeHints, o.NodeHints)
}

func (p *ServicePort) equal(o *ServicePort) bool {
	return p.Name == o.Name && p.ClusterIP == o.ClusterIP && p.Port == o.Port &&
		p.Protocol == o.Protocol && p.NodePort == o.NodePort &&
		slices.Equal(p.ExternalIPs, o.ExternalIPs) && slices.Equal(p.LoadBalancerIPs, o.LoadBalancerIPs) &&
		slices.Equal(p.LoadBalancerSourceRanges, o.LoadBalancerSourceRanges) &&
		p.SessionAffinityTimeout == o.SessionAffinityTimeout &&
		p.ExternalPolicyLocal == o.ExternalPolicyLocal && p.InternalPolicyLocal == o.InternalPolicyLocal &&
		p.HealthCheckNodePort == o.HealthCheckNodePort
}

// ClusterAddress renders "clusterIP:port" (with brackets for IPv6).
func (p *ServicePort) ClusterAddress() string {
	return netip.AddrPortFrom(p.ClusterIP, uint16(p.Port)).String()
}

// ProtocolLower is the protocol as iptables and ipvsadm spell it ("tcp", "udp", "sctp").
func (p *ServicePort) ProtocolLower() string {
	switch p.Protocol {
	case v1.ProtocolUDP:
		return "udp"
	case v1.ProtocolSCTP:
		return "sctp"
	default:
		return "tcp"
	}
}

// PortString is the service port as a decimal string, for rule rendering.
func (p *ServicePort) PortString() string { return strconv.Itoa(int(p.Port)) }

// State is the complete desired state handed to a backend: every ServicePort this proxy
// serves and the endpoints of each (before eligibility filtering, which backends apply
// through SelectEndpoints so that it is decided in one place).
type State struct {
	NodeName string
	// NodeLabels are the labels of this node (its zone for topology-aware routing).
	NodeLabels map[string]string
	// NodeIP is the node's primary address of this family (from its Node object), the
	// one kube-proxy checks against loadBalancerSourceRanges; invalid when unknown.
	NodeIP    netip.Addr
	Services  map[ServicePortName]*ServicePort
	Endpoints map[ServicePortName][]Endpoint
}

// Changes tells a backend what changed since its last successful sync.
type Changes struct {
	// Full asks the backend to rewrite everything it owns from State (first sync, periodic
	// resync, or after a failure), rather than only the changed ServicePorts.
	Full bool
	// ServicePorts lists the ServicePorts whose service or endpoints changed, including
	// ones that were deleted (absent from State).
	ServicePorts map[ServicePortName]struct{}
}
