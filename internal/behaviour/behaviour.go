// Package behaviour is the behaviour suite written once: a node's worth of Services (one
// desired State) and the packet flows service-semantics.md prescribes for them, each with
// its outcome. Each backend syncs the State into stateful fakes of the kernel, and
// CheckTraces traces the same flows through what it wrote (iptables: the rules;
// IPVS: its rules, with its ipsets and virtual servers), so both modes are held to one
// table. The real counterpart, with packets, is test/e2e.
package behaviour

import (
	"net/netip"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/switchyard/switchyard/proxier"
)

// Facts of the node the suite's State is for.
var (
	NodeName    = "node-a"
	NodeIP      = netip.MustParseAddr("192.0.2.1")
	ClusterCIDR = netip.MustParsePrefix("10.244.0.0/16")
)

// Endpoints: L runs on this node, R on another; P is a pod that backs no Service.
var (
	L = netip.MustParseAddr("10.244.1.2")
	R = netip.MustParseAddr("10.244.2.2")
	P = netip.MustParseAddr("10.244.1.9")
	// Outside is a client outside the cluster; Allowed is one inside the load-balancer
	// source range of the "fw" Service.
	Outside = netip.MustParseAddr("203.0.113.50")
	Allowed = netip.MustParseAddr("198.18.0.5")
)

// HealthCheckNodePort is the healthCheckNodePort of the "local" Service.
const HealthCheckNodePort = 32001

// Verdicts other than delivery to endpoints.
const (
	Reject    = "REJECT"
	Drop      = "DROP"
	Untouched = "UNTOUCHED"
)

// Outcome is what happens to a flow: delivered to one of Endpoints (each "ip:port"),
// masqueraded or not; or a Verdict.
type Outcome struct {
	Endpoints []string
	Masq      bool
	Verdict   string
}

// Flow is one packet flow and what must happen to it.
type Flow struct {
	Name string
	// Src is the client; FromNode marks a process on the node itself, whose Src may be
	// left unset for the source the kernel picks: the destination itself when that is
	// one of the node's addresses (loopback ones, and in IPVS mode Service addresses,
	// on kube-ipvs0), else NodeIP.
	Src      netip.Addr
	FromNode bool
	Protocol v1.Protocol
	Dst      netip.AddrPort
	// InputDrops puts the flow on a node whose filter INPUT policy is DROP, a host
	// firewall that admits only what some rule accepts.
	InputDrops bool
	Want       Outcome
	// ModeWant overrides Want for a proxy mode where the kernel makes it differ
	// (docs/node-contract.md explains each).
	ModeWant map[string]Outcome
}

// WantFor is the outcome the flow must have in a mode.
func (f Flow) WantFor(mode string) Outcome {
	if o, ok := f.ModeWant[mode]; ok {
		return o
	}
	return f.Want
}

func ep(ip netip.Addr) string { return netip.AddrPortFrom(ip, 8080).String() }

func at(ip string, port uint16) netip.AddrPort {
	return netip.AddrPortFrom(netip.MustParseAddr(ip), port)
}

// Flows is the suite: at least one flow per line of service-semantics.md that a rule
// or a virtual server decides.
func Flows() []Flow {
	both := []string{ep(L), ep(R)}
	tcp, udp := v1.ProtocolTCP, v1.ProtocolUDP
	node := NodeIP.String()
	return []Flow{
		{Name: "node to a cluster IP: any endpoint, masqueraded (outside the cluster CIDR)", Src: NodeIP, FromNode: true, Protocol: tcp, Dst: at("10.96.0.10", 80), Want: Outcome{Endpoints: both, Masq: true}},
		{Name: "pod to a cluster IP: any endpoint, not masqueraded", Src: P, Protocol: tcp, Dst: at("10.96.0.10", 80), Want: Outcome{Endpoints: both}},
		{Name: "endpoint pod to its own Service (hairpin): masqueraded", Src: L, Protocol: tcp, Dst: at("10.96.0.17", 80), Want: Outcome{Endpoints: []string{ep(L)}, Masq: true}},
		{Name: "cluster IP of a Service without endpoints: rejected", Src: P, Protocol: tcp, Dst: at("10.96.0.15", 80), Want: Outcome{Verdict: Reject}},
		{Name: "cluster IP on a port the Service does not have: never a host process", Src: P, Protocol: tcp, Dst: at("10.96.0.10", 81), Want: Outcome{Verdict: Untouched},
			ModeWant: map[string]Outcome{"ipvs": {Verdict: Reject}}},
		{Name: "internalTrafficPolicy Local with a local endpoint: only it", Src: P, Protocol: tcp, Dst: at("10.96.0.13", 80), Want: Outcome{Endpoints: []string{ep(L)}}},
		{Name: "internalTrafficPolicy Local without a local endpoint: dropped", Src: P, Protocol: tcp, Dst: at("10.96.0.14", 80), Want: Outcome{Verdict: Drop}},
		{Name: "off-node client to a NodePort, Cluster policy: any endpoint, masqueraded", Src: Outside, Protocol: tcp, Dst: at(node, 30080), Want: Outcome{Endpoints: both, Masq: true}},
		{Name: "off-node client to an external IP, Cluster policy: any endpoint, masqueraded", Src: Outside, Protocol: tcp, Dst: at("203.0.113.7", 80), Want: Outcome{Endpoints: both, Masq: true}},
		{Name: "off-node client to a load-balancer IP, Cluster policy: any endpoint, masqueraded", Src: Outside, Protocol: tcp, Dst: at("198.51.100.9", 80), Want: Outcome{Endpoints: both, Masq: true}},
		{Name: "off-node client to a NodePort, Local policy: the local endpoint, client kept", Src: Outside, Protocol: tcp, Dst: at(node, 30081), Want: Outcome{Endpoints: []string{ep(L)}}},
		{Name: "off-node client to a load-balancer IP, Local policy: the local endpoint, client kept", Src: Outside, Protocol: tcp, Dst: at("198.51.100.10", 80), Want: Outcome{Endpoints: []string{ep(L)}}},
		// kube-proxy's iptables mode short-circuits the node to any endpoint and
		// masquerades it; one IPVS virtual server serves every client, so its IPVS
		// mode sends the node to the local endpoints the off-node clients get, keeping
		// the node's address (node-contract.md).
		{Name: "the node to the load-balancer IP of a Local Service with a local endpoint", FromNode: true, Protocol: tcp, Dst: at("198.51.100.10", 80),
			Want: Outcome{Endpoints: both, Masq: true}, ModeWant: map[string]Outcome{"ipvs": {Endpoints: []string{ep(L)}}}},
		{Name: "the node to a NodePort, Local policy with a local endpoint", FromNode: true, Protocol: tcp, Dst: at(node, 30081),
			Want: Outcome{Endpoints: both, Masq: true}, ModeWant: map[string]Outcome{"ipvs": {Endpoints: []string{ep(L)}}}},
		{Name: "off-node client to a NodePort, Local policy, no local endpoint: dropped", Src: Outside, Protocol: tcp, Dst: at(node, 30082), Want: Outcome{Verdict: Drop}},
		{Name: "pod to the load-balancer IP of a Local Service without a local endpoint: short-circuit", Src: P, Protocol: tcp, Dst: at("198.51.100.11", 80), Want: Outcome{Endpoints: []string{ep(R)}}},
		{Name: "client outside loadBalancerSourceRanges: dropped", Src: Outside, Protocol: tcp, Dst: at("198.51.100.12", 80), Want: Outcome{Verdict: Drop}},
		{Name: "client inside loadBalancerSourceRanges: any endpoint, masqueraded", Src: Allowed, Protocol: tcp, Dst: at("198.51.100.12", 80), Want: Outcome{Endpoints: both, Masq: true}},
		// Without any endpoint, kube-proxy's iptables mode rejects everyone before its
		// firewall (usesFWChain needs an endpoint); its IPVS mode filters the ranges in
		// INPUT whatever the endpoints, so IPVS's own reject reaches only who they admit.
		{Name: "load-balancer IP without endpoints, client outside loadBalancerSourceRanges", Src: P, Protocol: tcp, Dst: at("198.51.100.14", 80),
			Want: Outcome{Verdict: Reject}, ModeWant: map[string]Outcome{"ipvs": {Verdict: Drop}}},
		{Name: "load-balancer IP without endpoints, client inside loadBalancerSourceRanges: rejected", Src: Allowed, Protocol: tcp, Dst: at("198.51.100.14", 80), Want: Outcome{Verdict: Reject}},
		{Name: "NodePorts are not subject to loadBalancerSourceRanges", Src: Outside, Protocol: tcp, Dst: at(node, 30086), Want: Outcome{Endpoints: both, Masq: true}},
		{Name: "off-node client to the NodePort of a Service without endpoints: rejected", Src: Outside, Protocol: tcp, Dst: at(node, 30085), Want: Outcome{Verdict: Reject}},
		{Name: "UDP to a cluster IP: the endpoint", Src: P, Protocol: udp, Dst: at("10.96.0.16", 53), Want: Outcome{Endpoints: []string{ep(L)}}},
		{Name: "topology hints for this node's zone: only those endpoints", Src: P, Protocol: tcp, Dst: at("10.96.0.20", 80), Want: Outcome{Endpoints: []string{ep(L)}}},
		{Name: "SCTP to a cluster IP: the endpoint", Src: P, Protocol: v1.ProtocolSCTP, Dst: at("10.96.0.19", 80), Want: Outcome{Endpoints: []string{ep(L)}}},
		{Name: "TCP to the port of a UDP Service: not that Service", Src: P, Protocol: tcp, Dst: at("10.96.0.16", 53), Want: Outcome{Verdict: Untouched},
			ModeWant: map[string]Outcome{"ipvs": {Verdict: Reject}}},
		{Name: "an address no Service has: untouched", Src: P, Protocol: tcp, Dst: at("10.96.0.99", 80), Want: Outcome{Verdict: Untouched}},

		// Defect: a LoadBalancer with both policies Local, source ranges and every
		// endpoint elsewhere had a firewall chain jumping to an EXT chain that was never
		// written, so iptables-restore failed and the node stopped programming Services.
		// kube-proxy writes the EXT chain whenever the Service has endpoints anywhere
		// (iptables/proxier.go usesExternalTrafficChain) and short-circuits pods and the
		// node to any endpoint, because UsesClusterEndpoints holds for every externally
		// accessible port (serviceport.go).
		{Name: "both policies Local, every endpoint elsewhere: a pod at the load-balancer IP is short-circuited to any endpoint", Src: P, Protocol: tcp, Dst: at("198.51.100.21", 80),
			Want: Outcome{Endpoints: []string{ep(R)}}},
		{Name: "both policies Local, every endpoint elsewhere: a pod at the NodePort is short-circuited to any endpoint", Src: P, Protocol: tcp, Dst: at(node, 30087),
			Want: Outcome{Endpoints: []string{ep(R)}}},
		{Name: "both policies Local, every endpoint elsewhere: the node at the external IP gets any endpoint, masqueraded", FromNode: true, Protocol: tcp, Dst: at("203.0.113.21", 80),
			Want: Outcome{Endpoints: []string{ep(R)}, Masq: true}},
		// From the node's own address, which the reply finds its way back to: kube-proxy's
		// IPVS mode does not mark its KUBE-NODE-PORT-LOCAL members.
		{Name: "both policies Local, every endpoint elsewhere: the node at the NodePort gets any endpoint", FromNode: true, Protocol: tcp, Dst: at(node, 30087),
			Want: Outcome{Endpoints: []string{ep(R)}, Masq: true}, ModeWant: map[string]Outcome{"ipvs": {Endpoints: []string{ep(R)}}}},
		{Name: "both policies Local, every endpoint elsewhere: an off-node client inside the source ranges is dropped", Src: Allowed, Protocol: tcp, Dst: at("198.51.100.21", 80), Want: Outcome{Verdict: Drop}},
		{Name: "both policies Local, every endpoint elsewhere: an off-node client outside the source ranges is dropped", Src: Outside, Protocol: tcp, Dst: at("198.51.100.21", 80), Want: Outcome{Verdict: Drop}},
		{Name: "both policies Local, every endpoint elsewhere: the cluster IP drops", Src: P, Protocol: tcp, Dst: at("10.96.0.21", 80), Want: Outcome{Verdict: Drop}},

		// Defect: IPVS mode bound an external IP equal to a node address on kube-ipvs0
		// and listed it as a Service address, so its filter rejected every other port of
		// the node there (ssh, kubelet). kube-proxy never binds a node address.
		{Name: "an external IP that is the node's own address: the Service port reaches the endpoints", Src: Outside, Protocol: tcp, Dst: at(node, 8443),
			Want: Outcome{Endpoints: []string{ep(L)}, Masq: true}},
		{Name: "an external IP that is the node's own address: the node's other ports there stay the node's", Src: Outside, Protocol: tcp, Dst: at(node, 22), Want: Outcome{Verdict: Untouched}},

		// A load balancer's health check reaches the health-check server on the node
		// whatever the node's firewall does with other ports, and on a Service address
		// too (IPVS mode binds those and closes their other ports): kube-proxy accepts
		// the port in INPUT in both modes (IPVS: KUBE-NODE-PORT, after KUBE-IPVS-FILTER
		// returns it).
		{Name: "off-node client to the node at a healthCheckNodePort: accepted, where INPUT's policy drops", Src: Outside, Protocol: tcp, Dst: at(node, HealthCheckNodePort),
			InputDrops: true, Want: Outcome{Verdict: Untouched}},
		{Name: "off-node client to a load-balancer IP at a healthCheckNodePort: not another port of a Service address", Src: Outside, Protocol: tcp, Dst: at("198.51.100.10", HealthCheckNodePort),
			Want: Outcome{Verdict: Untouched}},

		// The node's own connections to a load-balancer IP meet its source ranges too:
		// in iptables mode from the node's address, which a range may hold (kube-proxy's
		// allowFromNode admits the load-balancer IPs as sources then); in IPVS mode from
		// the load-balancer IP itself, bound on kube-ipvs0, which IPVS takes before any
		// filter rule, so kube-proxy drops it after IPVS (KUBE-IPVS-OUT-FILTER) unless a
		// range holds the node's primary IP.
		{Name: "the node to a load-balancer IP whose source ranges do not hold it: dropped", FromNode: true, Protocol: tcp, Dst: at("198.51.100.12", 80), Want: Outcome{Verdict: Drop}},
		{Name: "the node to a load-balancer IP whose source ranges hold it: any endpoint, masqueraded", FromNode: true, Protocol: tcp, Dst: at("198.51.100.13", 80),
			Want: Outcome{Endpoints: both, Masq: true}},

		// kube-proxy's iptables mode serves NodePorts on 127.0.0.1 by default
		// (iptables.localhostNodePorts, with route_localnet=1), masquerading the
		// connection so that it leaves loopback with a routable source; its IPVS mode
		// makes no virtual server on loopback, and the node answers for itself there.
		{Name: "the node to 127.0.0.1 at a NodePort, Cluster policy: any endpoint, masqueraded", FromNode: true, Protocol: tcp, Dst: at("127.0.0.1", 30080),
			Want: Outcome{Endpoints: both, Masq: true}, ModeWant: map[string]Outcome{"ipvs": {Verdict: Untouched}}},
		{Name: "the node to 127.0.0.1 at a NodePort, Local policy: any endpoint (short-circuit), masqueraded", FromNode: true, Protocol: tcp, Dst: at("127.0.0.1", 30081),
			Want: Outcome{Endpoints: both, Masq: true}, ModeWant: map[string]Outcome{"ipvs": {Verdict: Untouched}}},
	}
}

// State is the desired state the flows are about.
func State() *proxier.State {
	s := &proxier.State{NodeName: NodeName, NodeIP: NodeIP, NodeLabels: map[string]string{v1.LabelTopologyZone: "zone-a"}, Services: map[proxier.ServicePortName]*proxier.ServicePort{}, Endpoints: map[proxier.ServicePortName][]proxier.Endpoint{}}
	add := func(name, clusterIP string, port, nodePort int32, protocol v1.Protocol, eps []netip.Addr, tweak func(*proxier.ServicePort)) {
		n := proxier.ServicePortName{NamespacedName: types.NamespacedName{Namespace: "default", Name: name}, Protocol: protocol}
		sp := &proxier.ServicePort{Name: n, ClusterIP: netip.MustParseAddr(clusterIP), Port: port, Protocol: protocol, NodePort: nodePort}
		if tweak != nil {
			tweak(sp)
		}
		s.Services[n] = sp
		for _, ip := range eps {
			node := NodeName
			if ip == R {
				node = "node-b"
			}
			s.Endpoints[n] = append(s.Endpoints[n], proxier.Endpoint{IP: ip, Port: 8080, Ready: true, Serving: true, NodeName: node})
		}
	}
	addrs := func(ss ...string) []netip.Addr {
		var out []netip.Addr
		for _, a := range ss {
			out = append(out, netip.MustParseAddr(a))
		}
		return out
	}
	tcp := v1.ProtocolTCP
	zonal := proxier.ServicePortName{NamespacedName: types.NamespacedName{Namespace: "default", Name: "zonal"}, Protocol: tcp}
	add("web", "10.96.0.10", 80, 30080, tcp, []netip.Addr{L, R}, func(sp *proxier.ServicePort) {
		sp.ExternalIPs, sp.LoadBalancerIPs = addrs("203.0.113.7"), addrs("198.51.100.9")
	})
	add("local", "10.96.0.11", 80, 30081, tcp, []netip.Addr{L, R}, func(sp *proxier.ServicePort) {
		sp.LoadBalancerIPs, sp.ExternalPolicyLocal, sp.HealthCheckNodePort = addrs("198.51.100.10"), true, HealthCheckNodePort
	})
	add("nolocal", "10.96.0.12", 80, 30082, tcp, []netip.Addr{R}, func(sp *proxier.ServicePort) {
		sp.LoadBalancerIPs, sp.ExternalPolicyLocal = addrs("198.51.100.11"), true
	})
	add("itp", "10.96.0.13", 80, 0, tcp, []netip.Addr{L, R}, func(sp *proxier.ServicePort) { sp.InternalPolicyLocal = true })
	add("itpnone", "10.96.0.14", 80, 0, tcp, []netip.Addr{R}, func(sp *proxier.ServicePort) { sp.InternalPolicyLocal = true })
	add("empty", "10.96.0.15", 80, 30085, tcp, nil, nil)
	add("dns", "10.96.0.16", 53, 0, v1.ProtocolUDP, []netip.Addr{L}, nil)
	add("self", "10.96.0.17", 80, 0, tcp, []netip.Addr{L}, nil)
	add("sctp", "10.96.0.19", 80, 0, v1.ProtocolSCTP, []netip.Addr{L}, nil)
	add("zonal", "10.96.0.20", 80, 0, tcp, []netip.Addr{L, R}, nil)
	for i := range s.Endpoints[zonal] {
		zone := "zone-b"
		if s.Endpoints[zonal][i].IP == L {
			zone = "zone-a"
		}
		s.Endpoints[zonal][i].ZoneHints = []string{zone}
	}
	add("bothlocal", "10.96.0.21", 80, 30087, tcp, []netip.Addr{R}, func(sp *proxier.ServicePort) {
		sp.ExternalIPs, sp.LoadBalancerIPs = addrs("203.0.113.21"), addrs("198.51.100.21")
		sp.LoadBalancerSourceRanges = []netip.Prefix{netip.MustParsePrefix("198.18.0.0/16"), ClusterCIDR}
		sp.InternalPolicyLocal, sp.ExternalPolicyLocal = true, true
	})
	add("nodeaddr", "10.96.0.22", 8443, 0, tcp, []netip.Addr{L}, func(sp *proxier.ServicePort) { sp.ExternalIPs = []netip.Addr{NodeIP} })
	add("fw", "10.96.0.18", 80, 30086, tcp, []netip.Addr{L, R}, func(sp *proxier.ServicePort) {
		sp.LoadBalancerIPs = addrs("198.51.100.12")
		sp.LoadBalancerSourceRanges = []netip.Prefix{netip.MustParsePrefix("198.18.0.0/16")}
	})
	add("fwempty", "10.96.0.24", 80, 30089, tcp, nil, func(sp *proxier.ServicePort) {
		sp.LoadBalancerIPs = addrs("198.51.100.14")
		sp.LoadBalancerSourceRanges = []netip.Prefix{netip.MustParsePrefix("198.18.0.0/16")}
	})
	add("fwnode", "10.96.0.23", 80, 30088, tcp, []netip.Addr{L, R}, func(sp *proxier.ServicePort) {
		sp.LoadBalancerIPs = addrs("198.51.100.13")
		sp.LoadBalancerSourceRanges = []netip.Prefix{netip.MustParsePrefix("198.18.0.0/16"), netip.PrefixFrom(NodeIP, 24).Masked()}
	})
	return s
}
