package differential

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/switchyard/switchyard/internal/lab"
	"github.com/switchyard/switchyard/proxier"
)

// labOptions are the options the runner passes: the lab's addresses and six pods, three
// on this node and three on the other.
func labOptions(seed int64, count int) Options {
	o := Options{
		Seed:        seed,
		Count:       count,
		ExternalIPs: netip.MustParsePrefix(lab.ExternalRange),
		NodeIP:      netip.MustParseAddr(lab.NodeIP),
		ClientIP:    netip.MustParseAddr(lab.ClientIP),
		Protocols:   []v1.Protocol{v1.ProtocolTCP, v1.ProtocolUDP},
		Zone:        "zone-a",
	}
	for i := 1; i <= 6; i++ {
		node := lab.NodeName
		if i > 3 {
			node = lab.OtherNodeName
		}
		o.Pods = append(o.Pods, PodRef{Name: fmt.Sprintf("pod-%d", i), IP: fmt.Sprintf("10.244.0.%d", 10+i), Node: node})
	}
	return o
}

// wide is labOptions with every protocol, for the tests that look at many draws.
func wide(seed int64, count int) Options {
	o := labOptions(seed, count)
	o.Protocols = append(o.Protocols, v1.ProtocolSCTP)
	return o
}

func generate(t *testing.T, o Options) []Scenario {
	t.Helper()
	scenarios, err := Generate(o)
	if err != nil {
		t.Fatalf("Generate(seed %d, count %d): %v", o.Seed, o.Count, err)
	}
	if len(scenarios) != o.Count {
		t.Fatalf("Generate returned %d scenarios, want %d", len(scenarios), o.Count)
	}
	return scenarios
}

func TestGenerateIsDeterministic(t *testing.T) {
	a, b := generate(t, labOptions(7, 40)), generate(t, labOptions(7, 40))
	if diff := cmp.Diff(a, b); diff != "" {
		t.Errorf("same seed, different scenarios (-first +second):\n%s", diff)
	}
	// Names carry the seed, so compare what the names leave out.
	c := generate(t, labOptions(8, 40))
	same := 0
	for i := range a {
		x, y := a[i].Service.DeepCopy(), c[i].Service.DeepCopy()
		x.Name, y.Name = "", ""
		if cmp.Equal(x, y) {
			same++
		}
	}
	if same == len(a) {
		t.Errorf("seeds 7 and 8 gave the same Services")
	}
}

func TestGenerateCoversEveryHardCorner(t *testing.T) {
	for _, seed := range []int64{1, 2, 3, -4, 1 << 40} {
		o := labOptions(seed, 20)
		scenarios := generate(t, o)
		for i, trait := range Corners() {
			s := scenarios[i]
			if !slices.Contains(s.Traits, trait) {
				t.Errorf("seed %d: scenario %s is built for %q but its traits are %v", seed, s.Name, trait, s.Traits)
			}
			if err := checkCorner(o, trait, s); err != nil {
				t.Errorf("seed %d: scenario %s, corner %q: %v", seed, s.Name, trait, err)
			}
		}
		// Any scenario claiming a corner has it, whether built for it or drawn.
		for _, s := range scenarios {
			for _, trait := range s.Traits {
				if slices.Contains(Corners(), trait) {
					if err := checkCorner(o, trait, s); err != nil {
						t.Errorf("seed %d: scenario %s claims %q: %v", seed, s.Name, trait, err)
					}
				}
			}
		}
	}
}

// checkCorner tells whether s has the corner, from its objects alone.
func checkCorner(o Options, trait string, s Scenario) error {
	spec := s.Service.Spec
	eps := ipv4Endpoints(s)
	var local []discovery.Endpoint
	for _, e := range eps {
		if *e.NodeName == lab.NodeName {
			local = append(local, e)
		}
	}
	isTrue := func(b *bool) bool { return b != nil && *b }
	isFalse := func(b *bool) bool { return b != nil && !*b }
	itpLocal := spec.InternalTrafficPolicy != nil && *spec.InternalTrafficPolicy == v1.ServiceInternalTrafficPolicyLocal
	etpLocal := spec.ExternalTrafficPolicy == v1.ServiceExternalTrafficPolicyLocal
	ranges := func() (in func(netip.Addr) bool, err error) {
		if spec.Type != v1.ServiceTypeLoadBalancer || len(spec.LoadBalancerSourceRanges) == 0 {
			return nil, fmt.Errorf("type %s with source ranges %v", spec.Type, spec.LoadBalancerSourceRanges)
		}
		return func(a netip.Addr) bool {
			for _, r := range spec.LoadBalancerSourceRanges {
				if netip.MustParsePrefix(r).Contains(a) {
					return true
				}
			}
			return false
		}, nil
	}
	want := func(ok bool, format string, args ...any) error {
		if !ok {
			return fmt.Errorf(format, args...)
		}
		return nil
	}
	switch trait {
	case TraitExternalIPIsNodeIP:
		return want(spec.Type != v1.ServiceTypeExternalName && spec.ClusterIP != v1.ClusterIPNone &&
			slices.Contains(spec.ExternalIPs, o.NodeIP.String()), "type %s, external IPs %v", spec.Type, spec.ExternalIPs)
	case TraitLBIPIsNodeIP:
		return want(spec.Type == v1.ServiceTypeLoadBalancer && slices.ContainsFunc(s.Service.Status.LoadBalancer.Ingress,
			func(i v1.LoadBalancerIngress) bool {
				return i.IP == o.NodeIP.String() && *i.IPMode == v1.LoadBalancerIPModeVIP
			}),
			"type %s, ingress %v", spec.Type, s.Service.Status.LoadBalancer.Ingress)
	case TraitBothLocalNoLocalEndpoints:
		return want(itpLocal && etpLocal && len(eps) > 0 && len(local) == 0, "policies %v/%s, %d endpoints, %d local",
			*spec.InternalTrafficPolicy, spec.ExternalTrafficPolicy, len(eps), len(local))
	case TraitSourceRangesExcludeNode, TraitSourceRangesIncludeNode, TraitSourceRangesExcludeClient:
		in, err := ranges()
		if err != nil {
			return err
		}
		wantIn, a := trait == TraitSourceRangesIncludeNode, o.NodeIP
		if trait == TraitSourceRangesExcludeClient {
			a = o.ClientIP
		}
		return want(in(a) == wantIn, "%v in %v: %t", a, spec.LoadBalancerSourceRanges, in(a))
	case TraitExternalLocalOnlyTerminatingLocal:
		ok := etpLocal && len(local) > 0
		for _, e := range local {
			c := e.Conditions
			ok = ok && isFalse(c.Ready) && isTrue(c.Serving) && isTrue(c.Terminating)
		}
		return want(ok, "externalTrafficPolicy %q, local endpoints %v", spec.ExternalTrafficPolicy, local)
	case TraitInternalLocalNoLocalEndpoints:
		return want(itpLocal && len(eps) > 0 && len(local) == 0, "internalTrafficPolicy Local %t, %d endpoints, %d local",
			itpLocal, len(eps), len(local))
	case TraitNoEndpoints:
		return want(len(eps) == 0 && spec.Type != v1.ServiceTypeExternalName && spec.ClusterIP != v1.ClusterIPNone &&
			s.Service.Labels[proxier.LabelServiceProxyName] == "", "%d endpoints, type %s", len(eps), spec.Type)
	case TraitTerminatingFallback:
		ok, fallback := len(eps) > 0, false
		for _, e := range eps {
			c := e.Conditions
			ok = ok && isFalse(c.Ready)
			fallback = fallback || isTrue(c.Serving) && isTrue(c.Terminating)
		}
		return want(ok && fallback, "endpoints %v", eps)
	case TraitOtherProxy:
		ok := s.Service.Labels[proxier.LabelServiceProxyName] == OtherProxy && len(eps) > 0
		for _, sl := range s.Slices {
			ok = ok && sl.Labels[proxier.LabelServiceProxyName] == OtherProxy
		}
		return want(ok, "labels %v, %d endpoints", s.Service.Labels, len(eps))
	case TraitHeadless:
		ok := spec.ClusterIP == v1.ClusterIPNone && spec.Type == v1.ServiceTypeClusterIP && len(eps) > 0
		for _, sl := range s.Slices {
			_, labelled := sl.Labels[v1.IsHeadlessService]
			ok = ok && labelled
		}
		return want(ok, "clusterIP %q, %d endpoints", spec.ClusterIP, len(eps))
	case TraitExternalName:
		return want(spec.Type == v1.ServiceTypeExternalName && spec.ExternalName == ExternalName && len(s.Slices) == 0,
			"type %s, externalName %q, %d slices", spec.Type, spec.ExternalName, len(s.Slices))
	}
	return fmt.Errorf("no check for corner %q", trait)
}

func ipv4Endpoints(s Scenario) []discovery.Endpoint {
	var eps []discovery.Endpoint
	for _, sl := range s.Slices {
		if sl.AddressType == discovery.AddressTypeIPv4 {
			eps = append(eps, sl.Endpoints...)
		}
	}
	return eps
}

// TestGenerateCoversTheMatrix checks that the random draws reach the rest of the matrix.
func TestGenerateCoversTheMatrix(t *testing.T) {
	seen := map[string]bool{}
	for _, s := range generate(t, wide(11, 300)) {
		for _, trait := range s.Traits {
			seen[trait] = true
		}
	}
	for _, trait := range []string{
		TraitClusterIP, TraitNodePort, TraitLoadBalancer, TraitExternalIPs, TraitLBIPModeProxy, TraitSourceRangesAll,
		TraitSourceRangesIncludeClient, TraitInternalLocal, TraitExternalLocal, TraitSessionAffinity, TraitTrafficDistribution,
		TraitMultiPort, TraitTargetPortName, TraitPortTwoProtocols, TraitUDP, TraitSCTP, TraitUnsetConditions,
		TraitExternalLocalNoLocalEndpoints, TraitZoneHints, TraitNodeHints, TraitPartialHints, TraitMultiSlice,
		TraitDuplicateEndpoint, TraitEmptySlice, TraitFQDNSlice,
	} {
		if !seen[trait] {
			t.Errorf("300 scenarios never drew %q", trait)
		}
	}
}

func TestGenerateAddressesAndNames(t *testing.T) {
	// The lab's pool holds a full run's 500 scenarios and more.
	for _, o := range []Options{labOptions(1, 60), labOptions(5, 60), wide(9, 400), labOptions(2, 1000)} {
		scenarios := generate(t, o)
		owner := map[string]string{}     // pool address -> scenario
		nodePorts := map[string]string{} // port/protocol on the node's address -> scenario
		names := map[string]bool{}
		for _, s := range scenarios {
			if errs := validation.IsDNS1035Label(s.Name); len(errs) > 0 {
				t.Errorf("name %q: %v", s.Name, errs)
			}
			if names[s.Name] || s.Service.Name != s.Name || s.Service.Namespace != Namespace {
				t.Errorf("scenario %q: duplicate, or Service named %s/%s", s.Name, s.Service.Namespace, s.Service.Name)
			}
			names[s.Name] = true

			var addrs []string
			addrs = append(addrs, s.Service.Spec.ExternalIPs...)
			for _, i := range s.Service.Status.LoadBalancer.Ingress {
				addrs = append(addrs, i.IP)
			}
			usesNode := false
			for _, a := range addrs {
				if a == o.NodeIP.String() {
					usesNode = true
					continue
				}
				if !o.ExternalIPs.Contains(netip.MustParseAddr(a)) {
					t.Errorf("%s: address %s is outside the pool %v", s.Name, a, o.ExternalIPs)
				}
				if prev, ok := owner[a]; ok {
					t.Errorf("%s: address %s is also %s's", s.Name, a, prev)
				}
				owner[a] = s.Name
			}
			if !usesNode {
				continue
			}
			for _, p := range s.Service.Spec.Ports {
				key := fmt.Sprintf("%d/%s", p.Port, p.Protocol)
				if prev, ok := nodePorts[key]; ok {
					t.Errorf("%s: %s on the node's address is also %s's", s.Name, key, prev)
				}
				nodePorts[key] = s.Name
			}
		}
	}
}

func TestGenerateSlices(t *testing.T) {
	o := wide(3, 300)
	pods := map[string]PodRef{}
	for _, p := range o.Pods {
		pods[p.IP] = p
	}
	for _, s := range generate(t, o) {
		var portNames []string
		for _, p := range s.Service.Spec.Ports {
			portNames = append(portNames, p.Name)
		}
		// A duplicate's stale copy names the other node (see plan.lagging).
		copies := map[string]int{}
		for _, sl := range s.Slices {
			for _, e := range sl.Endpoints {
				copies[e.Addresses[0]]++
			}
		}
		sliceNames := map[string]bool{}
		for _, sl := range s.Slices {
			where := s.Name + "/" + sl.Name
			if errs := validation.IsDNS1123Subdomain(sl.Name); len(errs) > 0 || sliceNames[sl.Name] {
				t.Errorf("%s: slice name invalid or repeated: %v", where, errs)
			}
			sliceNames[sl.Name] = true
			if sl.Namespace != Namespace || sl.Labels[discovery.LabelServiceName] != s.Name || sl.Labels[discovery.LabelManagedBy] != ManagedBy {
				t.Errorf("%s: namespace %q, labels %v", where, sl.Namespace, sl.Labels)
			}
			if len(sl.Ports) != len(portNames) {
				t.Errorf("%s: %d ports for the Service's %d", where, len(sl.Ports), len(portNames))
			}
			for i, p := range sl.Ports {
				sp := s.Service.Spec.Ports[i]
				if *p.Name != sp.Name || *p.Port != lab.PodPort || *p.Protocol != sp.Protocol {
					t.Errorf("%s: port %d is %q %d/%s, want %q %d/%s", where, i, *p.Name, *p.Port, *p.Protocol, sp.Name, lab.PodPort, sp.Protocol)
				}
			}
			for _, e := range sl.Endpoints {
				if len(e.Addresses) != 1 {
					t.Errorf("%s: endpoint addresses %v", where, e.Addresses)
					continue
				}
				switch sl.AddressType {
				case discovery.AddressTypeIPv4:
					pod, ok := pods[e.Addresses[0]]
					if !ok || e.NodeName == nil || (*e.NodeName != pod.Node && copies[e.Addresses[0]] == 1) {
						t.Errorf("%s: endpoint %s on node %v is no pod of the lab", where, e.Addresses[0], e.NodeName)
					}
					if e.Hints != nil {
						for _, z := range e.Hints.ForZones {
							if z.Name != o.Zone && z.Name != OtherZone {
								t.Errorf("%s: zone hint %q", where, z.Name)
							}
						}
						for _, n := range e.Hints.ForNodes {
							if n.Name != pod.Node {
								t.Errorf("%s: node hint %q for a pod on %s", where, n.Name, pod.Node)
							}
						}
					}
				case discovery.AddressTypeFQDN:
					if errs := validation.IsFullyQualifiedDomainName(nil, e.Addresses[0]); len(errs) > 0 {
						t.Errorf("%s: %v", where, errs)
					}
				default:
					t.Errorf("%s: address type %s", where, sl.AddressType)
				}
			}
		}
	}
}

// TestGenerateFollowsAPIValidation checks the generated objects against the rules of the
// apiserver's validation (k8s.io/kubernetes pkg/apis/core/validation and
// pkg/apis/discovery/validation, v1.35) that the generator's choices touch. The real
// validation is not imported: k8s.io/kubernetes stays out of this module (see
// hack/controlplane/go.mod), and the lab's apiserver is the final judge.
func TestGenerateFollowsAPIValidation(t *testing.T) {
	for _, s := range generate(t, wide(21, 400)) {
		for _, err := range validateService(s.Service) {
			t.Errorf("%s: %v", s.Name, err)
		}
	}
}

func validateService(svc *v1.Service) []error {
	var errs []error
	check := func(ok bool, format string, args ...any) {
		if !ok {
			errs = append(errs, fmt.Errorf(format, args...))
		}
	}
	spec := svc.Spec
	isHeadless := spec.ClusterIP == v1.ClusterIPNone
	externalName := spec.Type == v1.ServiceTypeExternalName
	lb := spec.Type == v1.ServiceTypeLoadBalancer
	externallyAccessible := lb || spec.Type == v1.ServiceTypeNodePort || spec.Type == v1.ServiceTypeClusterIP && len(spec.ExternalIPs) > 0

	check(slices.Contains([]v1.ServiceType{v1.ServiceTypeClusterIP, v1.ServiceTypeNodePort, v1.ServiceTypeLoadBalancer, v1.ServiceTypeExternalName}, spec.Type),
		"type %q", spec.Type)
	if externalName {
		check(spec.ClusterIP == "" && spec.ClusterIPs == nil && spec.IPFamilies == nil && spec.IPFamilyPolicy == nil,
			"ExternalName with cluster IP %q %v, families %v %v", spec.ClusterIP, spec.ClusterIPs, spec.IPFamilies, spec.IPFamilyPolicy)
		check(len(validation.IsDNS1123Subdomain(spec.ExternalName)) == 0, "externalName %q", spec.ExternalName)
	} else {
		check(spec.InternalTrafficPolicy != nil, "internalTrafficPolicy unset")
		check(slices.Equal(spec.IPFamilies, []v1.IPFamily{v1.IPv4Protocol}) && spec.IPFamilyPolicy != nil &&
			*spec.IPFamilyPolicy == v1.IPFamilyPolicySingleStack, "families %v %v", spec.IPFamilies, spec.IPFamilyPolicy)
		check(spec.ClusterIP == "" && spec.ClusterIPs == nil || isHeadless && slices.Equal(spec.ClusterIPs, []string{v1.ClusterIPNone}),
			"cluster IP %q %v", spec.ClusterIP, spec.ClusterIPs)
		check(len(spec.Ports) > 0, "no ports")
	}
	check(!isHeadless || spec.Type == v1.ServiceTypeClusterIP, "headless %s", spec.Type)

	names, ports := map[string]bool{}, map[string]bool{}
	for _, p := range spec.Ports {
		check(len(spec.Ports) == 1 || p.Name != "", "port %d unnamed among %d", p.Port, len(spec.Ports))
		check(p.Name == "" || len(validation.IsDNS1123Label(p.Name)) == 0 && !names[p.Name], "port name %q", p.Name)
		names[p.Name] = true
		key := fmt.Sprintf("%d/%s", p.Port, p.Protocol)
		check(!ports[key], "port %s twice", key)
		ports[key] = true
		check(slices.Contains([]v1.Protocol{v1.ProtocolTCP, v1.ProtocolUDP, v1.ProtocolSCTP}, p.Protocol), "protocol %q", p.Protocol)
		check(p.NodePort == 0, "node port %d: the apiserver allocates", p.NodePort)
		if p.TargetPort.Type == intstr.String {
			check(len(validation.IsValidPortName(p.TargetPort.StrVal)) == 0, "targetPort %q", p.TargetPort.StrVal)
		} else {
			check(len(validation.IsValidPortNum(p.TargetPort.IntValue())) == 0, "targetPort %d", p.TargetPort.IntValue())
		}
	}

	switch spec.SessionAffinity {
	case v1.ServiceAffinityNone:
		check(spec.SessionAffinityConfig == nil, "sessionAffinityConfig without ClientIP")
	case v1.ServiceAffinityClientIP:
		if c := spec.SessionAffinityConfig; c != nil {
			check(c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil && *c.ClientIP.TimeoutSeconds > 0 &&
				*c.ClientIP.TimeoutSeconds <= 86400, "sessionAffinityConfig %v", c)
		}
	default:
		check(false, "sessionAffinity %q", spec.SessionAffinity)
	}

	for _, ip := range spec.ExternalIPs {
		a, err := netip.ParseAddr(ip)
		check(err == nil && a.Is4() && a.String() == ip && !a.IsLoopback() && !a.IsLinkLocalUnicast() && !a.IsMulticast() && !a.IsUnspecified(),
			"external IP %q", ip)
	}
	check(!isHeadless && !externalName || len(spec.ExternalIPs) == 0, "external IPs on a %s Service", spec.Type)
	if externallyAccessible {
		check(spec.ExternalTrafficPolicy == v1.ServiceExternalTrafficPolicyCluster || spec.ExternalTrafficPolicy == v1.ServiceExternalTrafficPolicyLocal,
			"externalTrafficPolicy %q", spec.ExternalTrafficPolicy)
	} else {
		check(spec.ExternalTrafficPolicy == "", "externalTrafficPolicy %q on a Service not reachable from outside", spec.ExternalTrafficPolicy)
	}
	check(spec.HealthCheckNodePort == 0, "healthCheckNodePort %d: the apiserver allocates", spec.HealthCheckNodePort)

	check(lb || len(spec.LoadBalancerSourceRanges) == 0, "source ranges on a %s Service", spec.Type)
	for _, r := range spec.LoadBalancerSourceRanges {
		p, err := netip.ParsePrefix(r)
		// Canonical, as strict CIDR validation wants of new values.
		check(err == nil && p == p.Masked() && p.String() == r, "source range %q", r)
	}
	check(lb == (spec.AllocateLoadBalancerNodePorts != nil), "allocateLoadBalancerNodePorts %v on a %s Service", spec.AllocateLoadBalancerNodePorts, spec.Type)
	if d := spec.TrafficDistribution; d != nil {
		check(slices.Contains([]string{v1.ServiceTrafficDistributionPreferClose, v1.ServiceTrafficDistributionPreferSameZone,
			v1.ServiceTrafficDistributionPreferSameNode}, *d), "trafficDistribution %q", *d)
	}

	ingress := svc.Status.LoadBalancer.Ingress
	check(lb || len(ingress) == 0, "ingress on a %s Service", spec.Type)
	for _, i := range ingress {
		_, err := netip.ParseAddr(i.IP)
		check(err == nil && i.IPMode != nil && (*i.IPMode == v1.LoadBalancerIPModeVIP || *i.IPMode == v1.LoadBalancerIPModeProxy),
			"ingress %q mode %v", i.IP, i.IPMode)
	}
	for k, v := range svc.Labels {
		check(len(validation.IsQualifiedName(k)) == 0 && len(validation.IsValidLabelValue(v)) == 0, "label %s=%s", k, v)
	}
	return errs
}

func TestGenerateRejectsBadOptions(t *testing.T) {
	for name, change := range map[string]func(*Options){
		"pool too small": func(o *Options) { o.ExternalIPs = netip.MustParsePrefix("10.253.0.0/29") },
		"pool too small for the count": func(o *Options) {
			o.ExternalIPs = netip.MustParsePrefix("10.253.0.0/25")
			o.Count = 300
		},
		"no pool":             func(o *Options) { o.ExternalIPs = netip.Prefix{} },
		"pool holds the node": func(o *Options) { o.ExternalIPs = netip.MustParsePrefix("10.252.0.0/24") },
		"no protocol":         func(o *Options) { o.Protocols = nil },
		"unknown protocol":    func(o *Options) { o.Protocols = []v1.Protocol{"ICMP"} },
		"no zone":             func(o *Options) { o.Zone = "" },
		"no remote pod":       func(o *Options) { o.Pods = o.Pods[:3] },
		"no local pod":        func(o *Options) { o.Pods = o.Pods[3:] },
		"IPv6 pod":            func(o *Options) { o.Pods[0].IP = "fd00:10:244::11" },
		"dual-stack":          func(o *Options) { o.IPFamilies = []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol} },
		"no node IP":          func(o *Options) { o.NodeIP = netip.Addr{} },
	} {
		o := labOptions(1, 20)
		change(&o)
		if _, err := Generate(o); err == nil {
			t.Errorf("%s: no error", name)
		} else if name == "pool too small" && !strings.Contains(err.Error(), "used up") {
			t.Errorf("%s: error %q does not say the pool is used up", name, err)
		}
	}
}
