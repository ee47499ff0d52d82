package differential

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/utils/ptr"

	"github.com/switchyard/switchyard/internal/lab"
)

// Where a probe is sent from. The pod is also an endpoint of some Services, so its own
// Service's traffic to it is hairpin traffic. A Service with ClientIP affinity is probed
// from a pod that is no endpoint instead: which endpoint a client sticks to is each
// proxy's random choice, and whether that is the sender itself would decide whether its
// traffic is hairpin.
const (
	FromPod       = "pod-1"
	FromStickyPod = "pod-7"
	FromNode      = "node"
	FromClient    = "client"
)

// Entry points of a Service port, as the report names them.
const (
	EntryClusterIP     = "cluster-ip"
	EntryExternalIP    = "external-ip"
	EntryLoadBalancer  = "load-balancer-ip"
	EntryNodePort      = "node-port"
	EntryLocalNodePort = "node-port-on-localhost"
	// EntryHealthCheck is the healthCheckNodePort: its answer (the JSON body naming
	// the Service and its local endpoints) is compared as an endpoint's name would be.
	EntryHealthCheck = "health-check-node-port"
	// EntryHealthz is the proxy's own /healthz on the node (its status code and body,
	// times left out), which cloud load balancers probe to judge the node.
	EntryHealthz = "healthz"
)

// NodeScenario names the probes that are about the node, not about one Service.
const NodeScenario = "node"

// healthzAddr is where both proxies serve /healthz in the lab (--healthz-bind-address).
const healthzAddr = "127.0.0.1:10256"

// Probe is a batch of requests to one entry point of one Service port from one place.
type Probe struct {
	Scenario string `json:"scenario"`
	Port     string `json:"port"`
	Entry    string `json:"entry"`
	From     string `json:"from"`
	Protocol string `json:"protocol"`
	Addr     string `json:"addr"`
	// Sticky marks a Service with ClientIP affinity: which endpoint a client sticks to
	// is the proxy's random choice, so only how many answered is compared.
	Sticky bool `json:"sticky,omitempty"`
	// Phase is when the probe is made, after the first probes of every Service
	// (PhaseRestart, PhaseTainted); empty for those.
	Phase string `json:"phase,omitempty"`
	// SourcePort, when set, sends every request of the probe from this port: one flow.
	SourcePort int `json:"sourcePort,omitempty"`
}

// The phases of a run after the first probes, in their order.
const (
	// PhaseRestart: a UDP flow started before the proxy restarts, continued once the
	// new proxy has synced (the outcome says whether it kept its endpoint).
	PhaseRestart = "across a proxy restart"
	// PhaseTainted: once the Node is tainted ToBeDeletedByClusterAutoscaler, as the
	// cluster autoscaler does before it removes a node (kube-proxy's /healthz then
	// fails, so that load balancers drain the node).
	PhaseTainted = "node tainted " + toBeDeletedTaint
)

// toBeDeletedTaint is the cluster autoscaler's taint on a node it is about to delete.
const toBeDeletedTaint = "ToBeDeletedByClusterAutoscaler"

// ID names the probe in a report. Its addresses are the same under every proxy (see
// apply).
func (p Probe) ID() string {
	id := fmt.Sprintf("%s port %s: %s %s from %s (%s)", p.Scenario, p.Port, p.Entry, p.Addr, p.From, p.Protocol)
	if p.Phase != "" {
		id += ", " + p.Phase
	}
	return id
}

// restartFlows is how many UDP flows are followed across the proxy's restart: the
// first cluster IPs of UDP ports that a pod reaches and that have a ready endpoint.
const restartFlows = 4

// allProbes lists the probes of a run: every Service's (probes) and the proxy's
// /healthz; a few UDP flows across a restart; with the Node tainted, /healthz and the
// health check ports again. endpointSlices are each Service's EndpointSlices, by Service name.
func allProbes(services []*v1.Service, endpointSlices map[string][]*discovery.EndpointSlice) []Probe {
	healthz := Probe{Scenario: NodeScenario, Port: "healthz", Entry: EntryHealthz, From: FromNode, Protocol: "healthz", Addr: healthzAddr}
	out := []Probe{healthz}
	var flows, tainted []Probe
	for _, svc := range services {
		// A flow is about the restart: not from a Service whose policy keeps the pod
		// from its endpoints in some mode (see Deliberates), nor from a port without a
		// ready endpoint, where every proxy answers alike before and after.
		internalLocal := svc.Spec.InternalTrafficPolicy != nil && *svc.Spec.InternalTrafficPolicy == v1.ServiceInternalTrafficPolicyLocal
		for _, p := range probes(svc) {
			out = append(out, p)
			switch {
			case p.Entry == EntryHealthCheck:
				p.Phase = PhaseTainted
				tainted = append(tainted, p)
			case p.Entry == EntryClusterIP && p.Protocol == "udp" && p.From == FromPod && !internalLocal && len(flows) < restartFlows &&
				hasReadyEndpoint(svc, endpointSlices[svc.Name], p.Port):
				p.Phase, p.SourcePort = PhaseRestart, 40000+len(flows)
				flows = append(flows, p)
			}
		}
	}
	healthz.Phase = PhaseTainted
	return append(append(append(out, flows...), healthz), tainted...)
}

// flowOutcome is what a UDP flow saw across the restart: whether the same endpoint
// answered it before and after, or how it failed on either side.
func flowOutcome(before, after lab.Result) Outcome {
	o := Outcome{Detail: after.LastError}
	endpoint := sortedKeys(before.Answers)
	for _, f := range sortedKeys(before.Failures) {
		o.Failures = append(o.Failures, "before the restart: "+f)
	}
	for _, f := range sortedKeys(after.Failures) {
		o.Failures = append(o.Failures, "after the restart: "+f)
	}
	switch answered := sortedKeys(after.Answers); {
	case len(endpoint) != 1:
		o.Endpoints = append(o.Endpoints, fmt.Sprintf("%d endpoints before the restart", len(endpoint)))
	case slices.Equal(answered, endpoint):
		o.Endpoints = append(o.Endpoints, "the flow's endpoint before the restart")
	case len(answered) > 0:
		o.Endpoints = append(o.Endpoints, "another endpoint than before the restart")
	}
	return o
}

// hasReadyEndpoint says whether any of a Service's EndpointSlices has a ready endpoint
// for its port probed as port (probes name an unnamed port by its number; a Service with
// an unnamed port has no other, so its slices' unnamed port is that one).
func hasReadyEndpoint(svc *v1.Service, epSlices []*discovery.EndpointSlice, port string) bool {
	name := port
	if !slices.ContainsFunc(svc.Spec.Ports, func(p v1.ServicePort) bool { return p.Name == port }) {
		name = ""
	}
	for _, slice := range epSlices {
		if !slices.ContainsFunc(slice.Ports, func(p discovery.EndpointPort) bool { return ptr.Deref(p.Name, "") == name }) {
			continue
		}
		if slices.ContainsFunc(slice.Endpoints, func(ep discovery.Endpoint) bool { return ptr.Deref(ep.Conditions.Ready, true) }) {
			return true
		}
	}
	return false
}

// probes lists the probes of a Service as the apiserver holds it: every entry point of
// every port, from every place that can reach it. The off-node client has no route to
// cluster IPs, as off-node machines in a cluster have none.
func probes(svc *v1.Service) []Probe {
	var out []Probe
	sticky := svc.Spec.SessionAffinity == v1.ServiceAffinityClientIP
	pod := FromPod
	if sticky {
		pod = FromStickyPod
	}
	add := func(port v1.ServicePort, entry, addr string, p int32, from ...string) {
		name := port.Name
		if name == "" {
			name = strconv.Itoa(int(port.Port))
		}
		for _, f := range from {
			out = append(out, Probe{Scenario: svc.Name, Port: name, Entry: entry, From: f,
				Protocol: strings.ToLower(string(port.Protocol)), Addr: netip.AddrPortFrom(netip.MustParseAddr(addr), uint16(p)).String(), Sticky: sticky})
		}
	}
	for _, port := range svc.Spec.Ports {
		if ip := svc.Spec.ClusterIP; ip != "" && ip != v1.ClusterIPNone {
			add(port, EntryClusterIP, ip, port.Port, pod, FromNode)
		}
		for _, ip := range svc.Spec.ExternalIPs {
			add(port, EntryExternalIP, ip, port.Port, pod, FromNode, FromClient)
		}
		for _, ing := range svc.Status.LoadBalancer.Ingress {
			if ing.IP != "" {
				add(port, EntryLoadBalancer, ing.IP, port.Port, pod, FromNode, FromClient)
			}
		}
		if port.NodePort != 0 {
			add(port, EntryNodePort, lab.NodeIP, port.NodePort, pod, FromNode, FromClient)
			add(port, EntryLocalNodePort, "127.0.0.1", port.NodePort, FromNode)
		}
	}
	if hc := svc.Spec.HealthCheckNodePort; hc != 0 {
		out = append(out, Probe{Scenario: svc.Name, Port: "health", Entry: EntryHealthCheck, From: FromClient,
			Protocol: "tcp", Addr: netip.AddrPortFrom(netip.MustParseAddr(lab.NodeIP), uint16(hc)).String()})
	}
	return out
}

// Outcome is what a probe saw, reduced to what must be equal under both proxies: which
// endpoints answered (for a sticky Service, how many), which client addresses they saw
// (an address other than the sender's is a masquerade), and how the requests that got
// no answer failed.
type Outcome struct {
	Endpoints []string `json:"endpoints,omitempty"`
	Clients   []string `json:"clients,omitempty"`
	Failures  []string `json:"failures,omitempty"`
	// Detail is the last failure's error, for the report; it is not compared.
	Detail string `json:"detail,omitempty"`
}

// outcome reduces a probe's result (see `labagent probe`: its clients are "POD saw ADDR").
// For a sticky Service the endpoint a client sticks to is each proxy's random choice, so
// the endpoints become how many answered, and the clients what the answering pods saw.
func outcome(p Probe, r lab.Result) Outcome {
	o := Outcome{Endpoints: sortedKeys(r.Answers), Clients: sortedKeys(r.Clients), Failures: sortedKeys(r.Failures), Detail: r.LastError}
	if p.Sticky && len(o.Endpoints) > 0 {
		o.Endpoints = []string{fmt.Sprintf("%d endpoint(s), sticky", len(o.Endpoints))}
		for i, c := range o.Clients {
			_, addr, _ := strings.Cut(c, " saw ")
			o.Clients[i] = "the endpoint saw " + addr
		}
		o.Clients = slices.Compact(o.Clients)
	}
	return o
}

// String is the outcome in a report's words.
func (o Outcome) String() string {
	var parts []string
	if len(o.Endpoints) > 0 {
		parts = append(parts, "answered by "+strings.Join(o.Endpoints, ", "))
	}
	if len(o.Clients) > 0 {
		parts = append(parts, strings.Join(o.Clients, ", "))
	}
	if len(o.Failures) > 0 {
		parts = append(parts, fmt.Sprintf("failed: %s (last: %s)", strings.Join(o.Failures, ", "), o.Detail))
	}
	if len(parts) == 0 {
		return "nothing"
	}
	return strings.Join(parts, "; ")
}

func sortedKeys(m map[string]int) []string {
	var keys []string
	for k, n := range m {
		if n > 0 {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	return keys
}
