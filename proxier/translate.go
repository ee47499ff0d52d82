package proxier

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/switchyard/switchyard/internal/kubeaddr"
)

// defaultSessionAffinityTimeout is the API's default for
// sessionAffinityConfig.clientIP.timeoutSeconds (3 hours).
const defaultSessionAffinityTimeout = 10800 * time.Second

// FieldError reports one unusable field of a Service or EndpointSlice. The object is still
// used; only the offending value is skipped (or the whole object when nothing usable is
// left), so one bad object never affects others.
type FieldError struct {
	// Object is the Service or EndpointSlice, as the Event about it refers to it.
	Object v1.ObjectReference
	Field  string // a field path, e.g. "spec.externalIPs[1]"
	Value  string
	Reason string
}

// ObjectName is "Kind namespace/name", for log lines.
func (e FieldError) ObjectName() string {
	return e.Object.Kind + " " + e.Object.Namespace + "/" + e.Object.Name
}

// Message says what is wrong with the field, without naming the object.
func (e FieldError) Message() string {
	return fmt.Sprintf("%s: invalid value %q: %s", e.Field, e.Value, e.Reason)
}

func (e FieldError) Error() string {
	return e.ObjectName() + ": " + e.Message()
}

// objectReference refers to an API object of the given kind, as an Event's subject.
func objectReference(apiVersion, kind string, meta metav1.ObjectMeta) v1.ObjectReference {
	return v1.ObjectReference{APIVersion: apiVersion, Kind: kind, Namespace: meta.Namespace, Name: meta.Name, UID: meta.UID}
}

// Family is an IP family as the model uses it.
type Family int

// The families a proxier can serve. One proxier programs one family, like kube-proxy.
const (
	IPv4 Family = 4
	IPv6 Family = 6
)

// String is the family as metrics and logs name it ("IPv4", "IPv6").
func (f Family) String() string {
	if f == IPv6 {
		return "IPv6"
	}
	return "IPv4"
}

// primaryNodeIP is the node's address of this family that kube-proxy takes as the node's
// IP (its NodeIPs, from GetNodeHostIPs): the first InternalIP, else the first
// ExternalIP; invalid when the Node has neither.
func (f Family) primaryNodeIP(node *v1.Node) netip.Addr {
	for _, kind := range []v1.NodeAddressType{v1.NodeInternalIP, v1.NodeExternalIP} {
		for _, a := range node.Status.Addresses {
			if ip, ok := kubeaddr.ParseIP(a.Address); a.Type == kind && ok && f.matches(ip) {
				return ip
			}
		}
	}
	return netip.Addr{}
}

func (f Family) matches(a netip.Addr) bool {
	return a.IsValid() && (a.Is4() == (f == IPv4)) && !a.Is4In6()
}

// ServicePorts translates a Service into the ServicePorts this proxy serves for one IP
// family. It returns nothing for Services that are not proxied (headless, ExternalName,
// no ports, no cluster IP of this family) and reports every unusable field it skipped.
func ServicePorts(svc *v1.Service, family Family) ([]*ServicePort, []FieldError) {
	if svc.Spec.Type == v1.ServiceTypeExternalName || len(svc.Spec.Ports) == 0 {
		return nil, nil
	}
	object := objectReference("v1", "Service", svc.ObjectMeta)
	var errs []FieldError
	bad := func(field, value, reason string) {
		errs = append(errs, FieldError{Object: object, Field: field, Value: value, Reason: reason})
	}
	clusterIPs := svc.Spec.ClusterIPs
	if len(clusterIPs) == 0 && svc.Spec.ClusterIP != "" {
		clusterIPs = []string{svc.Spec.ClusterIP}
	}
	var clusterIP netip.Addr
	for i, s := range clusterIPs {
		if s == v1.ClusterIPNone || s == "" {
			return nil, nil // headless
		}
		a, ok := kubeaddr.ParseIP(s)
		if !ok {
			bad(fmt.Sprintf("spec.clusterIPs[%d]", i), s, "not an IP address")
			continue
		}
		if family.matches(a) {
			clusterIP = a
			break
		}
	}
	if !clusterIP.IsValid() {
		return nil, errs
	}

	externalIPs := parseAddrs(svc.Spec.ExternalIPs, family, "spec.externalIPs", bad)
	var lbIPs []netip.Addr
	for i, ing := range svc.Status.LoadBalancer.Ingress {
		if ing.IP == "" {
			continue // hostname-only ingress: nothing to program
		}
		// ipMode Proxy means the load balancer delivers traffic to the node with the node
		// as destination, so the ingress IP must not be captured on the node.
		if ing.IPMode != nil && *ing.IPMode == v1.LoadBalancerIPModeProxy {
			continue
		}
		lbIPs = append(lbIPs, parseAddrs([]string{ing.IP}, family, fmt.Sprintf("status.loadBalancer.ingress[%d].ip", i), bad)...)
	}
	var sourceRanges []netip.Prefix
	if svc.Spec.Type == v1.ServiceTypeLoadBalancer {
		for i, s := range svc.Spec.LoadBalancerSourceRanges {
			// API validation trims the value before checking it, so padded ranges are
			// valid Services: read them as kube-proxy does, trimmed, or a range that was
			// meant to restrict would be skipped and leave the load balancer open.
			p, ok := kubeaddr.ParsePrefix(strings.TrimSpace(s))
			if !ok {
				bad(fmt.Sprintf("spec.loadBalancerSourceRanges[%d]", i), s, "not a CIDR")
				continue
			}
			if family.matches(p.Addr()) {
				sourceRanges = append(sourceRanges, p.Masked())
			}
		}
		// A zero-length range admits everyone, which is the same as no ranges at all
		// (kube-proxy's newBaseServiceInfo): no firewall.
		if slices.ContainsFunc(sourceRanges, func(p netip.Prefix) bool { return p.Bits() == 0 }) {
			sourceRanges = nil
		}
	}

	var affinity time.Duration
	if svc.Spec.SessionAffinity == v1.ServiceAffinityClientIP {
		affinity = defaultSessionAffinityTimeout
		if c := svc.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil {
			affinity = time.Duration(*c.ClientIP.TimeoutSeconds) * time.Second
		}
	}
	// externalTrafficPolicy only means something for traffic that enters from outside,
	// which a plain ClusterIP Service without externalIPs cannot receive.
	external := svc.Spec.Type == v1.ServiceTypeNodePort || svc.Spec.Type == v1.ServiceTypeLoadBalancer || len(svc.Spec.ExternalIPs) > 0
	externalLocal := external && svc.Spec.ExternalTrafficPolicy == v1.ServiceExternalTrafficPolicyLocal
	internalLocal := svc.Spec.InternalTrafficPolicy != nil && *svc.Spec.InternalTrafficPolicy == v1.ServiceInternalTrafficPolicyLocal
	var healthCheckNodePort int32
	if externalLocal && svc.Spec.Type == v1.ServiceTypeLoadBalancer {
		healthCheckNodePort = svc.Spec.HealthCheckNodePort
	}

	name := types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}
	var ports []*ServicePort
	for i, p := range svc.Spec.Ports {
		protocol := p.Protocol
		if protocol == "" {
			protocol = v1.ProtocolTCP
		}
		switch {
		case protocol != v1.ProtocolTCP && protocol != v1.ProtocolUDP && protocol != v1.ProtocolSCTP:
			bad(fmt.Sprintf("spec.ports[%d].protocol", i), string(protocol), "supported values: TCP, UDP, SCTP")
			continue
		case p.Port < 1 || p.Port > 65535:
			bad(fmt.Sprintf("spec.ports[%d].port", i), fmt.Sprint(p.Port), "must be between 1 and 65535")
			continue
		case p.NodePort < 0 || p.NodePort > 65535:
			bad(fmt.Sprintf("spec.ports[%d].nodePort", i), fmt.Sprint(p.NodePort), "must be between 1 and 65535")
			continue
		}
		ports = append(ports, &ServicePort{
			Name:                     ServicePortName{NamespacedName: name, Port: p.Name, Protocol: protocol},
			ClusterIP:                clusterIP,
			Port:                     p.Port,
			Protocol:                 protocol,
			NodePort:                 p.NodePort,
			ExternalIPs:              externalIPs,
			LoadBalancerIPs:          lbIPs,
			LoadBalancerSourceRanges: sourceRanges,
			SessionAffinityTimeout:   affinity,
			ExternalPolicyLocal:      externalLocal,
			InternalPolicyLocal:      internalLocal,
			HealthCheckNodePort:      healthCheckNodePort,
		})
	}
	return ports, errs
}

func parseAddrs(values []string, family Family, field string, bad func(field, value, reason string)) []netip.Addr {
	var out []netip.Addr
	for i, s := range values {
		a, ok := kubeaddr.ParseIP(s)
		if !ok {
			path := field
			if len(values) > 1 || field == "spec.externalIPs" {
				path = fmt.Sprintf("%s[%d]", field, i)
			}
			bad(path, s, "not an IP address")
			continue
		}
		if family.matches(a) {
			out = append(out, a)
		}
	}
	return out
}

// ServiceEndpoints merges all EndpointSlices of one Service into endpoints per
// ServicePortName, for one IP family. Slices of the other family and FQDN slices are
// ignored. An address and port listed more than once appears once: a copy on nodeName
// wins, as in kube-proxy's EndpointSliceCache.addEndpoints; between copies equally local,
// where kube-proxy's pick follows its map order (random), a ready copy wins, else the
// first in slice-name order.
func ServiceEndpoints(service types.NamespacedName, slicesByName map[string]*discovery.EndpointSlice, family Family, nodeName string) (map[ServicePortName][]Endpoint, []FieldError) {
	wantType := discovery.AddressTypeIPv4
	if family == IPv6 {
		wantType = discovery.AddressTypeIPv6
	}
	names := make([]string, 0, len(slicesByName))
	for n := range slicesByName {
		names = append(names, n)
	}
	slices.Sort(names) // deterministic choice among duplicates

	var errs []FieldError
	byPort := map[ServicePortName]map[netip.AddrPort]Endpoint{}
	for _, sliceName := range names {
		slice := slicesByName[sliceName]
		if slice.AddressType != wantType {
			continue
		}
		object := objectReference("discovery.k8s.io/v1", "EndpointSlice", slice.ObjectMeta)
		// Addresses are checked once per slice, not once per port, so each bad one is
		// reported once.
		addrs := make([]netip.Addr, len(slice.Endpoints))
		for ei, ep := range slice.Endpoints {
			if len(ep.Addresses) == 0 {
				continue
			}
			// Like kube-proxy, only the first address is used: the API defines the
			// others as interchangeable and they are never set in practice.
			ip, ok := kubeaddr.ParseIP(ep.Addresses[0])
			if !ok || !family.matches(ip) {
				errs = append(errs, FieldError{Object: object, Field: fmt.Sprintf("endpoints[%d].addresses[0]", ei), Value: ep.Addresses[0], Reason: "not an IP address of the slice's addressType"})
				continue
			}
			addrs[ei] = ip
		}
		for pi, port := range slice.Ports {
			if port.Port == nil {
				continue // a slice port without a number matches no service port
			}
			if *port.Port < 1 || *port.Port > 65535 {
				errs = append(errs, FieldError{Object: object, Field: fmt.Sprintf("ports[%d].port", pi), Value: fmt.Sprint(*port.Port), Reason: "must be between 1 and 65535"})
				continue
			}
			spn := ServicePortName{NamespacedName: service, Protocol: v1.ProtocolTCP}
			if port.Name != nil {
				spn.Port = *port.Name
			}
			if port.Protocol != nil {
				spn.Protocol = *port.Protocol
			}
			eps := byPort[spn]
			if eps == nil {
				eps = map[netip.AddrPort]Endpoint{}
				byPort[spn] = eps
			}
			for ei, ep := range slice.Endpoints {
				ip := addrs[ei]
				if !ip.IsValid() {
					continue
				}
				e := endpointFromSlice(ip, *port.Port, ep)
				key := netip.AddrPortFrom(ip, uint16(*port.Port))
				if prev, ok := eps[key]; ok && !replacesDuplicate(e, prev, nodeName) {
					continue
				}
				eps[key] = e
			}
		}
	}
	out := make(map[ServicePortName][]Endpoint, len(byPort))
	for spn, eps := range byPort {
		list := make([]Endpoint, 0, len(eps))
		for _, e := range eps {
			list = append(list, e)
		}
		slices.SortFunc(list, func(a, b Endpoint) int {
			return cmp.Or(a.IP.Compare(b.IP), cmp.Compare(a.Port, b.Port))
		})
		out[spn] = list
	}
	return out, errs
}

// replacesDuplicate reports whether e, a later copy of prev's address and port, is the
// one to keep (see ServiceEndpoints).
func replacesDuplicate(e, prev Endpoint, nodeName string) bool {
	local, prevLocal := e.IsLocal(nodeName), prev.IsLocal(nodeName)
	if local != prevLocal {
		return local
	}
	return e.Ready && !prev.Ready
}

func endpointFromSlice(ip netip.Addr, port int32, ep discovery.Endpoint) Endpoint {
	// Unset conditions are read as kube-proxy reads them (EndpointSliceCache.addEndpoints):
	// ready and serving unless said otherwise, terminating only when said.
	e := Endpoint{
		IP:          ip,
		Port:        port,
		Ready:       ep.Conditions.Ready == nil || *ep.Conditions.Ready,
		Serving:     ep.Conditions.Serving == nil || *ep.Conditions.Serving,
		Terminating: ep.Conditions.Terminating != nil && *ep.Conditions.Terminating,
	}
	if ep.NodeName != nil {
		e.NodeName = *ep.NodeName
	}
	if ep.Zone != nil {
		e.Zone = *ep.Zone
	}
	if ep.Hints != nil {
		for _, z := range ep.Hints.ForZones {
			e.ZoneHints = append(e.ZoneHints, z.Name)
		}
		for _, n := range ep.Hints.ForNodes {
			e.NodeHints = append(e.NodeHints, n.Name)
		}
	}
	return e
}
