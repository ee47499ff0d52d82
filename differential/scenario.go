// Package differential holds the differential test against upstream kube-proxy: the same
// apiserver state and the same packets must give the same outcome under switchyard and
// under kube-proxy. This file is its seeded scenario generator: it turns a seed into
// Services and EndpointSlices that cover the matrix of Service features, and makes the
// corners where proxies have disagreed on purpose rather than leaving them to chance.
package differential

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/switchyard/switchyard/internal/lab"
	"github.com/switchyard/switchyard/proxier"
)

// Namespace holds every generated object.
const Namespace = "default"

// Values the generated objects carry.
const (
	// ManagedBy is the EndpointSlices' endpointslice.kubernetes.io/managed-by label: not
	// the EndpointSlice controller's value, so that a controller, if one ever runs in the
	// lab, leaves them alone (the Services have no selector either).
	ManagedBy = "switchyard-differential"
	// OtherProxy is the service-proxy-name of the Services that neither proxy may serve.
	OtherProxy = "other"
	// OtherZone is the zone hint for "somewhere else" (the node's own is Options.Zone).
	OtherZone = "other-zone"
	// ExternalName is the target of the ExternalName Services.
	ExternalName = "example.com"
)

// PodRef is an endpoint the lab provides: a real pod namespace answering on lab.PodPort
// (TCP and UDP).
type PodRef struct {
	Name, IP string
	// Node is lab.NodeName (this node) or lab.OtherNodeName.
	Node string
}

// Options configures Generate.
type Options struct {
	// Seed names the scenarios: the same options give the same scenarios.
	Seed int64
	// Count is the number of scenarios.
	Count int
	// Pods are the endpoints to draw from; there must be at least one on lab.NodeName and
	// one elsewhere, for the traffic-policy corners.
	Pods []PodRef
	// ExternalIPs is the pool for external IPs and load-balancer ingress IPs. Every
	// scenario gets addresses of its own, so a probe of one address only ever meets one
	// Service; Generate fails when the scenarios need more addresses than the pool holds.
	ExternalIPs netip.Prefix
	// NodeIP is the node's address, which some scenarios use as an external or
	// load-balancer IP (never two of them on the same port and protocol).
	NodeIP netip.Addr
	// ClientIP is the off-node client's address, which load-balancer source ranges let
	// in or keep out.
	ClientIP netip.Addr
	// Protocols are the Service port protocols to draw from.
	Protocols []v1.Protocol
	// Zone is the node's topology.kubernetes.io/zone, for zone hints.
	Zone string
	// IPFamilies are the Services' families; nil means IPv4. Only IPv4 is implemented:
	// the pods have no IPv6 addresses in PodRef yet.
	IPFamilies []v1.IPFamily
}

// Scenario is one Service and its EndpointSlices.
type Scenario struct {
	// Name is the Service's name, unique among the scenarios of one Generate.
	Name string
	// Traits name the corners the scenario exercises (see the Trait constants), for the
	// report. They are read back from the objects, so they hold whatever drew them.
	Traits []string
	// Service leaves the cluster IP and node ports to the apiserver; a LoadBalancer's
	// Status.LoadBalancer.Ingress is set, for the runner to write with UpdateStatus.
	Service *v1.Service
	Slices  []*discovery.EndpointSlice
}

// Traits name what a scenario exercises; the hard corners (Corners) are among them.
const (
	TraitClusterIP    = "cluster-ip"
	TraitNodePort     = "node-port"
	TraitLoadBalancer = "load-balancer"
	TraitHeadless     = "headless"
	TraitExternalName = "external-name"
	TraitOtherProxy   = "other-proxy"

	TraitExternalIPs               = "external-ips"
	TraitExternalIPIsNodeIP        = "external-ip-is-node-ip"
	TraitLBIPIsNodeIP              = "lb-ip-is-node-ip"
	TraitLBIPModeProxy             = "lb-ip-mode-proxy"
	TraitSourceRangesAll           = "lb-source-ranges-all"
	TraitSourceRangesIncludeClient = "lb-source-ranges-include-client"
	TraitSourceRangesExcludeClient = "lb-source-ranges-exclude-client"
	TraitSourceRangesIncludeNode   = "lb-source-ranges-include-node"
	TraitSourceRangesExcludeNode   = "lb-source-ranges-exclude-node"
	TraitInternalLocal             = "internal-local"
	TraitExternalLocal             = "external-local"
	TraitSessionAffinity           = "session-affinity"
	TraitMultiPort                 = "multi-port"
	TraitTargetPortName            = "target-port-name"
	TraitPortTwoProtocols          = "port-two-protocols"
	TraitUDP                       = "udp"
	TraitSCTP                      = "sctp"
	TraitTrafficDistribution       = "traffic-distribution"

	TraitNoEndpoints                       = "no-endpoints"
	TraitTerminatingFallback               = "terminating-fallback"
	TraitUnsetConditions                   = "unset-conditions"
	TraitInternalLocalNoLocalEndpoints     = "internal-local-no-local-endpoints"
	TraitExternalLocalNoLocalEndpoints     = "external-local-no-local-endpoints"
	TraitBothLocalNoLocalEndpoints         = "both-local-no-local-endpoints"
	TraitExternalLocalOnlyTerminatingLocal = "external-local-only-terminating-local"
	TraitZoneHints                         = "zone-hints"
	TraitNodeHints                         = "node-hints"
	TraitPartialHints                      = "partial-hints"
	TraitMultiSlice                        = "multi-slice"
	TraitDuplicateEndpoint                 = "duplicate-endpoint"
	TraitEmptySlice                        = "empty-slice"
	TraitFQDNSlice                         = "fqdn-slice"
)

// Corners returns the hard corners in the order Generate produces them first: scenario
// i < len(Corners()) is built to exercise Corners()[i].
func Corners() []string {
	traits := make([]string, len(corners))
	for i, c := range corners {
		traits[i] = c.trait
	}
	return traits
}

// Generate returns o.Count scenarios, the same for the same options. The first ones
// exercise the hard corners in turn; the rest are drawn at random across the matrix.
func Generate(o Options) ([]Scenario, error) {
	g, err := newGenerator(o)
	if err != nil {
		return nil, err
	}
	out := make([]Scenario, 0, o.Count)
	for i := range o.Count {
		var p *plan
		if i < len(corners) {
			p = corners[i].plan(g)
		} else {
			p = g.randomPlan()
		}
		s, err := g.build(fmt.Sprintf("s%d-%03d", o.Seed, i), p)
		if err != nil {
			return nil, fmt.Errorf("scenario %d: %w", i, err)
		}
		out = append(out, s)
	}
	return out, nil
}

type kind int

const (
	clusterIP kind = iota
	nodePort
	loadBalancer
	headless
	externalName
)

// condition is one of the endpoint states that occur in real EndpointSlices.
type condition int

const (
	// ready is a pod that is up.
	ready condition = iota
	// terminatingServing is a terminating pod that still passes its readiness probe.
	terminatingServing
	// terminatingGone is a terminating pod that no longer does.
	terminatingGone
	// unset is a hand-written slice without conditions, which proxies read as ready.
	unset
	// notReady is a pod that has not passed its readiness probe yet.
	notReady
)

func (c condition) conditions() discovery.EndpointConditions {
	switch c {
	case ready:
		return discovery.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true), Terminating: ptr.To(false)}
	case terminatingServing:
		return discovery.EndpointConditions{Ready: ptr.To(false), Serving: ptr.To(true), Terminating: ptr.To(true)}
	case terminatingGone:
		return discovery.EndpointConditions{Ready: ptr.To(false), Serving: ptr.To(false), Terminating: ptr.To(true)}
	case notReady:
		return discovery.EndpointConditions{Ready: ptr.To(false), Serving: ptr.To(false), Terminating: ptr.To(false)}
	}
	return discovery.EndpointConditions{}
}

// hintMode says which endpoints carry topology hints.
type hintMode int

const (
	noHints hintMode = iota
	zoneHints
	// nodeHints is what the EndpointSlice controller writes for PreferSameNode: zone and
	// node hints.
	nodeHints
	// partialHints leaves the last endpoint without hints, which makes proxies ignore them
	// all.
	partialHints
)

type endpoint struct {
	pod  PodRef
	cond condition
}

// plan is a scenario's drawn dimensions, before addresses and ports are handed out.
type plan struct {
	kind       kind
	otherProxy bool
	// externalIPs counts the external IPs, the node's address included when nodeExternalIP.
	externalIPs    int
	nodeExternalIP bool
	// ingress counts the load-balancer IPs, the node's address included when nodeIngress.
	ingress      int
	nodeIngress  bool
	proxyIngress bool

	internalLocal, externalLocal bool
	sourceRanges                 []netip.Prefix
	affinity                     bool
	affinityTimeout              int32 // 0: the API's default
	distribution                 string

	ports       int
	namedPort   bool
	namedTarget bool

	endpoints []endpoint
	hints     hintMode
	// split spreads the endpoints over two slices; duplicate repeats one in a second
	// slice, as happens while an endpoint moves between slices, and lagging gives the
	// copy a state of its own, as when one slice is not updated yet, on the other node.
	split, duplicate, lagging, emptySlice, fqdn bool
}

type portKey struct {
	port     int32
	protocol v1.Protocol
}

type generator struct {
	o             Options
	rng           *rand.Rand
	pool          []netip.Addr // free addresses of o.ExternalIPs, in order
	local, remote []PodRef
	// nodeIPUsed holds the ports Services already have on the node's address.
	nodeIPUsed map[portKey]bool
	// rangeSets are the loadBalancerSourceRanges to draw from.
	rangeSets [][]netip.Prefix
}

// servicePorts are the port numbers Services draw from: low ports nothing on the node
// listens on, and away from the pods' own port so a probe that reaches a pod unchanged
// cannot be mistaken for one that was translated.
var servicePorts = []int32{53, 80, 81, 82, 443, 5000, 7000, 8000, 8443, 9000}

// documentation is where "some other range" of source ranges is taken from
// (RFC 5737), skipping one that holds the node or the client.
var documentation = []netip.Prefix{
	netip.MustParsePrefix("192.0.2.0/24"),
	netip.MustParsePrefix("198.51.100.0/24"),
	netip.MustParsePrefix("203.0.113.0/24"),
}

func newGenerator(o Options) (*generator, error) {
	if o.Count < 0 {
		return nil, fmt.Errorf("negative scenario count %d", o.Count)
	}
	if o.IPFamilies == nil {
		o.IPFamilies = []v1.IPFamily{v1.IPv4Protocol}
	}
	if !slices.Equal(o.IPFamilies, []v1.IPFamily{v1.IPv4Protocol}) {
		return nil, fmt.Errorf("IP families %v: only IPv4 is implemented", o.IPFamilies)
	}
	if !o.ExternalIPs.IsValid() || !o.ExternalIPs.Addr().Is4() || o.ExternalIPs.Bits() > 30 {
		return nil, fmt.Errorf("external IP pool %v: want an IPv4 prefix of at least 4 addresses", o.ExternalIPs)
	}
	if !o.NodeIP.Is4() || !o.ClientIP.Is4() {
		return nil, fmt.Errorf("node IP %v and client IP %v must be IPv4 addresses", o.NodeIP, o.ClientIP)
	}
	if o.ExternalIPs.Contains(o.NodeIP) || o.ExternalIPs.Contains(o.ClientIP) {
		return nil, fmt.Errorf("external IP pool %v holds the node's or the client's address", o.ExternalIPs)
	}
	if len(o.Protocols) == 0 {
		return nil, fmt.Errorf("no protocols")
	}
	for _, p := range o.Protocols {
		if p != v1.ProtocolTCP && p != v1.ProtocolUDP && p != v1.ProtocolSCTP {
			return nil, fmt.Errorf("protocol %q", p)
		}
	}
	if o.Zone == "" || o.Zone == OtherZone {
		return nil, fmt.Errorf("zone %q: want the node's zone, other than %q", o.Zone, OtherZone)
	}
	g := &generator{
		o:          o,
		rng:        rand.New(rand.NewPCG(uint64(o.Seed), 0x5d1ff)),
		nodeIPUsed: map[portKey]bool{},
	}
	for _, pod := range o.Pods {
		if a, err := netip.ParseAddr(pod.IP); err != nil || !a.Is4() {
			return nil, fmt.Errorf("pod %s: IP %q is not an IPv4 address", pod.Name, pod.IP)
		}
		if pod.Node == lab.NodeName {
			g.local = append(g.local, pod)
		} else {
			g.remote = append(g.remote, pod)
		}
	}
	if len(g.local) == 0 || len(g.remote) == 0 {
		return nil, fmt.Errorf("want pods on %s and on another node, have %d and %d", lab.NodeName, len(g.local), len(g.remote))
	}
	// Every address of the prefix but its network and broadcast addresses.
	for a := o.ExternalIPs.Masked().Addr().Next(); o.ExternalIPs.Contains(a.Next()); a = a.Next() {
		g.pool = append(g.pool, a)
	}
	other := documentation[0]
	for _, d := range documentation {
		if !d.Contains(o.NodeIP) && !d.Contains(o.ClientIP) {
			other = d
			break
		}
	}
	node32, client32 := netip.PrefixFrom(o.NodeIP, 32), netip.PrefixFrom(o.ClientIP, 32)
	// The client's /30 holds the node too in the lab, where both ends of one link share it.
	client30 := netip.PrefixFrom(o.ClientIP, 30).Masked()
	g.rangeSets = [][]netip.Prefix{
		{client32},
		{client30},
		{node32},
		{other},
		{netip.MustParsePrefix("0.0.0.0/0")},
		{client32, other},
		{node32, other},
	}
	return g, nil
}

// corner builds a plan for one hard corner: a random plan bent where the corner needs it.
type corner struct {
	trait string
	plan  func(g *generator) *plan
}

var corners = []corner{
	{TraitExternalIPIsNodeIP, func(g *generator) *plan {
		p := g.planOf(g.pick(clusterIP, nodePort, loadBalancer))
		p.externalIPs = max(p.externalIPs, 1)
		p.nodeExternalIP = true
		return p
	}},
	{TraitLBIPIsNodeIP, func(g *generator) *plan {
		p := g.planOf(loadBalancer)
		p.nodeIngress = true
		return p
	}},
	{TraitBothLocalNoLocalEndpoints, func(g *generator) *plan {
		p := g.planOf(g.pick(nodePort, loadBalancer))
		p.internalLocal, p.externalLocal = true, true
		p.endpoints = g.endpoints(g.remote, 1+g.rng.IntN(len(g.remote)), ready)
		return p
	}},
	sourceRangesCorner(TraitSourceRangesExcludeNode, func(o Options) netip.Addr { return o.NodeIP }, false),
	sourceRangesCorner(TraitSourceRangesIncludeNode, func(o Options) netip.Addr { return o.NodeIP }, true),
	sourceRangesCorner(TraitSourceRangesExcludeClient, func(o Options) netip.Addr { return o.ClientIP }, false),
	{TraitExternalLocalOnlyTerminatingLocal, func(g *generator) *plan {
		p := g.planOf(g.pick(nodePort, loadBalancer))
		p.externalLocal = true
		// Ready endpoints elsewhere must not rescue the local ones: under Local only the
		// terminating local endpoints may serve.
		p.endpoints = append(g.endpoints(g.local, 1+g.rng.IntN(len(g.local)), terminatingServing),
			g.endpoints(g.remote, g.rng.IntN(len(g.remote)+1), ready)...)
		p.lagging = false
		return p
	}},
	{TraitInternalLocalNoLocalEndpoints, func(g *generator) *plan {
		p := g.planOf(clusterIP)
		p.internalLocal = true
		p.endpoints = g.endpoints(g.remote, 1+g.rng.IntN(len(g.remote)), ready)
		return p
	}},
	{TraitNoEndpoints, func(g *generator) *plan {
		p := g.planOf(g.pick(clusterIP, nodePort, loadBalancer))
		p.endpoints, p.split, p.duplicate = nil, false, false
		return p
	}},
	{TraitTerminatingFallback, func(g *generator) *plan {
		p := g.planOf(g.pick(clusterIP, nodePort, loadBalancer))
		// Cluster policies, so that every endpoint is a candidate and only the fallback
		// decides.
		p.internalLocal, p.externalLocal = false, false
		p.endpoints = g.endpoints(g.o.Pods, 1+g.rng.IntN(min(3, len(g.o.Pods))), terminatingServing)
		if len(p.endpoints) > 1 {
			p.endpoints[len(p.endpoints)-1].cond = terminatingGone
		}
		p.lagging = false
		return p
	}},
	{TraitOtherProxy, func(g *generator) *plan {
		p := g.planOf(g.pick(clusterIP, nodePort, loadBalancer))
		p.otherProxy = true
		return g.ignoredAnswers(p)
	}},
	{TraitHeadless, func(g *generator) *plan { return g.ignoredAnswers(g.planOf(headless)) }},
	{TraitExternalName, func(g *generator) *plan { return g.planOf(externalName) }},
}

// sourceRangesCorner is a LoadBalancer whose source ranges let the address addr picks in
// (in) or keep it out.
func sourceRangesCorner(trait string, addr func(Options) netip.Addr, in bool) corner {
	return corner{trait, func(g *generator) *plan {
		p := g.planOf(loadBalancer)
		p.sourceRanges = g.drawRanges(func(r []netip.Prefix) bool { return covers(r, addr(g.o)) == in })
		return p
	}}
}

// ignoredAnswers gives a Service that proxies must ignore (headless, another proxy's)
// a ready endpoint: wrongly served, it would answer instead of staying silent.
func (g *generator) ignoredAnswers(p *plan) *plan {
	switch {
	case len(p.endpoints) == 0:
		p.endpoints = g.endpoints(g.o.Pods, 1, ready)
	case !slices.ContainsFunc(p.endpoints, func(e endpoint) bool { return e.cond == ready }):
		p.endpoints[0].cond = ready
	}
	return p
}

func (g *generator) randomPlan() *plan {
	k := kind(weighted(g.rng, 6, 5, 6, 1, 1))
	p := g.planOf(k)
	p.otherProxy = k <= loadBalancer && g.chance(1, 20)
	if p.otherProxy || k == headless {
		g.ignoredAnswers(p)
	}
	return p
}

// planOf draws every dimension of a Service of kind k.
func (g *generator) planOf(k kind) *plan {
	p := &plan{kind: k, ports: 1 + weighted(g.rng, 5, 3, 2), namedPort: g.chance(1, 2), namedTarget: g.chance(1, 3)}
	if k == externalName {
		return p
	}
	p.internalLocal = g.chance(1, 3)
	if p.affinity = g.chance(1, 4); p.affinity && g.chance(1, 2) {
		p.affinityTimeout = []int32{60, 3600}[g.rng.IntN(2)]
	}
	if g.chance(3, 8) {
		p.distribution = []string{v1.ServiceTrafficDistributionPreferClose, v1.ServiceTrafficDistributionPreferSameZone,
			v1.ServiceTrafficDistributionPreferSameNode}[g.rng.IntN(3)]
	}
	p.endpoints = g.randomEndpoints(g.rng.IntN(5))
	p.hints = hintMode(weighted(g.rng, 8, 4, 2, 2))
	p.split = g.chance(1, 4)
	p.duplicate = len(p.endpoints) > 0 && g.chance(1, 8)
	p.lagging = g.chance(1, 2)
	p.emptySlice = g.chance(1, 2)
	p.fqdn = g.chance(1, 10)
	if k == headless {
		return p
	}
	p.externalIPs = weighted(g.rng, 12, 5, 3)
	p.nodeExternalIP = p.externalIPs > 0 && g.chance(1, 15)
	p.externalLocal = g.chance(1, 3)
	if k == loadBalancer {
		p.ingress = 1 + weighted(g.rng, 7, 3)
		p.nodeIngress = g.chance(1, 15)
		p.proxyIngress = g.chance(1, 5)
		if g.chance(1, 2) {
			p.sourceRanges = g.drawRanges(func([]netip.Prefix) bool { return true })
		}
	}
	return p
}

func (g *generator) randomEndpoints(n int) []endpoint {
	var eps []endpoint
	for _, i := range g.rng.Perm(len(g.o.Pods))[:min(n, len(g.o.Pods))] {
		eps = append(eps, endpoint{pod: g.o.Pods[i], cond: g.randomCondition()})
	}
	return eps
}

func (g *generator) randomCondition() condition {
	return condition(weighted(g.rng, 6, 1, 1, 1, 1))
}

// endpoints draws n distinct pods of pods, all in state c.
func (g *generator) endpoints(pods []PodRef, n int, c condition) []endpoint {
	var eps []endpoint
	for _, i := range g.rng.Perm(len(pods))[:n] {
		eps = append(eps, endpoint{pod: pods[i], cond: c})
	}
	return eps
}

func (g *generator) drawRanges(keep func([]netip.Prefix) bool) []netip.Prefix {
	var sets [][]netip.Prefix
	for _, s := range g.rangeSets {
		if keep(s) {
			sets = append(sets, s)
		}
	}
	return slices.Clone(sets[g.rng.IntN(len(sets))])
}

func covers(ranges []netip.Prefix, a netip.Addr) bool {
	return slices.ContainsFunc(ranges, func(p netip.Prefix) bool { return p.Contains(a) })
}

func (g *generator) pick(kinds ...kind) kind { return kinds[g.rng.IntN(len(kinds))] }

func (g *generator) chance(n, in int) bool { return g.rng.IntN(in) < n }

// weighted returns i with probability weights[i] / sum(weights).
func weighted(rng *rand.Rand, weights ...int) int {
	total := 0
	for _, w := range weights {
		total += w
	}
	r := rng.IntN(total)
	for i, w := range weights {
		if r < w {
			return i
		}
		r -= w
	}
	panic("unreachable")
}

// build turns p into API objects, handing out addresses and ports.
func (g *generator) build(name string, p *plan) (Scenario, error) {
	svc := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: Namespace, Name: name},
		Spec:       v1.ServiceSpec{SessionAffinity: v1.ServiceAffinityNone},
	}
	spec := &svc.Spec
	usesNodeIP := p.nodeExternalIP || p.nodeIngress
	ports, ok := g.drawPorts(p.ports, usesNodeIP)
	if !ok {
		// Every port of every protocol on the node's address is taken: this Service keeps
		// to addresses of its own.
		usesNodeIP, p.nodeExternalIP, p.nodeIngress = false, false, false
		ports, _ = g.drawPorts(p.ports, false)
	}
	for _, key := range ports {
		sp := v1.ServicePort{Port: key.port, Protocol: key.protocol, TargetPort: intstr.FromInt32(lab.PodPort)}
		// Validation wants names when there are several ports; a single one is named
		// sometimes, and its slice port then carries the name.
		if len(ports) > 1 || p.namedPort {
			sp.Name = strings.ToLower(string(key.protocol)) + "-" + strconv.Itoa(int(key.port))
		}
		if p.namedTarget {
			sp.TargetPort = intstr.FromString("pod-" + strings.ToLower(string(key.protocol)))
		}
		spec.Ports = append(spec.Ports, sp)
		if usesNodeIP {
			g.nodeIPUsed[key] = true
		}
	}

	switch p.kind {
	case externalName:
		spec.Type, spec.ExternalName = v1.ServiceTypeExternalName, ExternalName
		return Scenario{Name: name, Traits: g.traits(svc, nil), Service: svc}, nil
	case headless:
		spec.Type, spec.ClusterIP, spec.ClusterIPs = v1.ServiceTypeClusterIP, v1.ClusterIPNone, []string{v1.ClusterIPNone}
	case clusterIP:
		spec.Type = v1.ServiceTypeClusterIP
	case nodePort:
		spec.Type = v1.ServiceTypeNodePort
	case loadBalancer:
		spec.Type = v1.ServiceTypeLoadBalancer
		spec.AllocateLoadBalancerNodePorts = ptr.To(true)
	}
	spec.IPFamilies, spec.IPFamilyPolicy = slices.Clone(g.o.IPFamilies), ptr.To(v1.IPFamilyPolicySingleStack)
	spec.InternalTrafficPolicy = ptr.To(v1.ServiceInternalTrafficPolicyCluster)
	if p.internalLocal {
		spec.InternalTrafficPolicy = ptr.To(v1.ServiceInternalTrafficPolicyLocal)
	}
	if p.otherProxy {
		svc.Labels = map[string]string{proxier.LabelServiceProxyName: OtherProxy}
	}
	if p.affinity {
		spec.SessionAffinity = v1.ServiceAffinityClientIP
		if p.affinityTimeout != 0 {
			spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr.To(p.affinityTimeout)}}
		}
	}
	if p.distribution != "" {
		spec.TrafficDistribution = ptr.To(p.distribution)
	}
	for i := range p.externalIPs {
		a := g.o.NodeIP
		if i > 0 || !p.nodeExternalIP {
			var err error
			if a, err = g.allocate(); err != nil {
				return Scenario{}, err
			}
		}
		spec.ExternalIPs = append(spec.ExternalIPs, a.String())
	}
	// The apiserver would default it; set here, the scenario says what it tests.
	if p.kind == nodePort || p.kind == loadBalancer || len(spec.ExternalIPs) > 0 {
		spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyCluster
		if p.externalLocal {
			spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
		}
	}
	if p.kind == loadBalancer {
		for _, r := range p.sourceRanges {
			spec.LoadBalancerSourceRanges = append(spec.LoadBalancerSourceRanges, r.String())
		}
		for i := range p.ingress {
			ing := v1.LoadBalancerIngress{IP: g.o.NodeIP.String(), IPMode: ptr.To(v1.LoadBalancerIPModeVIP)}
			if i > 0 || !p.nodeIngress {
				a, err := g.allocate()
				if err != nil {
					return Scenario{}, err
				}
				ing.IP = a.String()
				if p.proxyIngress && i == p.ingress-1 {
					ing.IPMode = ptr.To(v1.LoadBalancerIPModeProxy)
				}
			}
			svc.Status.LoadBalancer.Ingress = append(svc.Status.LoadBalancer.Ingress, ing)
		}
	}
	eps := g.slices(svc, p)
	return Scenario{Name: name, Traits: g.traits(svc, eps), Service: svc, Slices: eps}, nil
}

// drawPorts draws n distinct (port, protocol) pairs; onNodeIP keeps to pairs no other
// scenario uses on the node's address. It reports false when too few are left.
func (g *generator) drawPorts(n int, onNodeIP bool) ([]portKey, bool) {
	var free []portKey
	for _, port := range servicePorts {
		for _, proto := range g.o.Protocols {
			if k := (portKey{port, proto}); !onNodeIP || !g.nodeIPUsed[k] {
				free = append(free, k)
			}
		}
	}
	if len(free) < n {
		return nil, false
	}
	var keys []portKey
	for _, i := range g.rng.Perm(len(free))[:n] {
		keys = append(keys, free[i])
	}
	return keys, true
}

func (g *generator) allocate() (netip.Addr, error) {
	if len(g.pool) == 0 {
		return netip.Addr{}, fmt.Errorf("external IP pool %v is used up", g.o.ExternalIPs)
	}
	a := g.pool[0]
	g.pool = g.pool[1:]
	return a, nil
}

// slices writes p's endpoints as the EndpointSlice controller would for svc: one slice
// (two when split or duplicated), port names those of the Service, the Service's labels
// copied.
func (g *generator) slices(svc *v1.Service, p *plan) []*discovery.EndpointSlice {
	labels := map[string]string{discovery.LabelServiceName: svc.Name, discovery.LabelManagedBy: ManagedBy}
	if v, ok := svc.Labels[proxier.LabelServiceProxyName]; ok {
		labels[proxier.LabelServiceProxyName] = v
	}
	if svc.Spec.ClusterIP == v1.ClusterIPNone {
		labels[v1.IsHeadlessService] = ""
	}
	newSlice := func(suffix string, family discovery.AddressType, eps []discovery.Endpoint) *discovery.EndpointSlice {
		slice := &discovery.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Namespace: Namespace, Name: svc.Name + "-" + suffix, Labels: maps.Clone(labels)},
			AddressType: family,
			Endpoints:   eps,
		}
		for _, sp := range svc.Spec.Ports {
			slice.Ports = append(slice.Ports, discovery.EndpointPort{Name: ptr.To(sp.Name), Port: ptr.To[int32](lab.PodPort), Protocol: ptr.To(sp.Protocol)})
		}
		return slice
	}

	var eps []discovery.Endpoint
	for i, e := range p.endpoints {
		ep := discovery.Endpoint{Addresses: []string{e.pod.IP}, Conditions: e.cond.conditions(), NodeName: ptr.To(e.pod.Node)}
		if p.hints != noHints && (p.hints != partialHints || i < len(p.endpoints)-1) {
			zone := OtherZone
			if g.chance(1, 2) {
				zone = g.o.Zone
			}
			ep.Hints = &discovery.EndpointHints{ForZones: []discovery.ForZone{{Name: zone}}}
			if p.hints == nodeHints {
				ep.Hints.ForNodes = []discovery.ForNode{{Name: e.pod.Node}}
			}
		}
		eps = append(eps, ep)
	}
	first, second := eps, []discovery.Endpoint(nil)
	if p.split && len(eps) > 1 {
		cut := 1 + g.rng.IntN(len(eps)-1)
		first, second = eps[:cut:cut], eps[cut:]
	}
	if p.duplicate && len(eps) > 0 {
		dup := eps[g.rng.IntN(len(eps))].DeepCopy()
		if p.lagging {
			// The stale copy also names the other node: kube-proxy keeps a copy on its
			// node whatever the slices' order, while between copies equally local its
			// pick follows its map order, which no run can predict (node-contract.md).
			dup.Conditions = g.randomCondition().conditions()
			other := g.local[0].Node
			if dup.NodeName != nil && *dup.NodeName == other {
				other = g.remote[0].Node
			}
			dup.NodeName = ptr.To(other)
		}
		second = append(second, *dup)
	}
	var out []*discovery.EndpointSlice
	if len(first) > 0 || p.emptySlice {
		out = append(out, newSlice("1", discovery.AddressTypeIPv4, first))
	}
	if len(second) > 0 {
		out = append(out, newSlice("2", discovery.AddressTypeIPv4, second))
	}
	if p.fqdn {
		pod := g.o.Pods[g.rng.IntN(len(g.o.Pods))]
		out = append(out, newSlice("fqdn", discovery.AddressTypeFQDN, []discovery.Endpoint{{
			Addresses:  []string{pod.Name + "." + ExternalName},
			Conditions: ready.conditions(),
		}}))
	}
	return out
}
