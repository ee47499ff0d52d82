package proxier

import (
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
)

// fieldErrorOpts compares FieldErrors by what they point at, in any order; the Reason is
// prose.
var fieldErrorOpts = cmp.Options{
	cmpopts.IgnoreFields(FieldError{}, "Reason"),
	cmpopts.SortSlices(func(a, b FieldError) bool { return a.ObjectName()+" "+a.Field < b.ObjectName()+" "+b.Field }),
	cmpopts.EquateEmpty(),
}

func TestServicePorts(t *testing.T) {
	// wantPort is the ServicePort of makeService's default port, modified by tweak.
	wantPort := func(tweak func(*ServicePort)) *ServicePort {
		sp := &ServicePort{
			Name:      spn("svc", "http", v1.ProtocolTCP),
			ClusterIP: netip.MustParseAddr("10.96.0.1"),
			Port:      80,
			Protocol:  v1.ProtocolTCP,
		}
		if tweak != nil {
			tweak(sp)
		}
		return sp
	}
	object := v1.ObjectReference{APIVersion: "v1", Kind: "Service", Namespace: "ns", Name: "svc"}

	testCases := []struct {
		name     string
		svc      *v1.Service
		family   Family
		want     []*ServicePort
		wantErrs []FieldError
	}{
		{
			name: "cluster IP with named ports of each protocol, empty protocol means TCP",
			svc: makeService("svc", func(s *v1.Service) {
				s.Spec.Ports = []v1.ServicePort{
					{Name: "http", Port: 80, Protocol: v1.ProtocolTCP},
					{Name: "dns", Port: 53, Protocol: v1.ProtocolUDP},
					{Name: "metrics", Port: 9090}, // protocol unset
				}
			}),
			family: IPv4,
			want: []*ServicePort{
				wantPort(nil),
				wantPort(func(sp *ServicePort) {
					sp.Name = spn("svc", "dns", v1.ProtocolUDP)
					sp.Port = 53
					sp.Protocol = v1.ProtocolUDP
				}),
				wantPort(func(sp *ServicePort) {
					sp.Name = spn("svc", "metrics", v1.ProtocolTCP)
					sp.Port = 9090
				}),
			},
		},
		{
			name: "single unnamed port",
			svc: makeService("svc", func(s *v1.Service) {
				s.Spec.Ports = []v1.ServicePort{{Port: 443, Protocol: v1.ProtocolSCTP}}
			}),
			family: IPv4,
			want: []*ServicePort{wantPort(func(sp *ServicePort) {
				sp.Name = spn("svc", "", v1.ProtocolSCTP)
				sp.Port = 443
				sp.Protocol = v1.ProtocolSCTP
			})},
		},
		{
			name: "headless service is not proxied",
			svc: makeService("svc", func(s *v1.Service) {
				s.Spec.ClusterIP = v1.ClusterIPNone
				s.Spec.ClusterIPs = []string{v1.ClusterIPNone}
			}),
			family: IPv4,
		},
		{
			name: "headless service with only spec.clusterIP set is not proxied",
			svc: makeService("svc", func(s *v1.Service) {
				s.Spec.ClusterIP = v1.ClusterIPNone
				s.Spec.ClusterIPs = nil
			}),
			family: IPv4,
		},
		{
			name: "ExternalName service is not proxied",
			svc: makeService("svc", func(s *v1.Service) {
				s.Spec.Type = v1.ServiceTypeExternalName
				s.Spec.ExternalName = "db.example.com"
				s.Spec.ClusterIP = ""
				s.Spec.ClusterIPs = nil
			}),
			family: IPv4,
		},
		{
			name: "ExternalName service is not proxied even with a stale cluster IP",
			svc: makeService("svc", func(s *v1.Service) {
				s.Spec.Type = v1.ServiceTypeExternalName
				s.Spec.ExternalName = "db.example.com"
			}),
			family: IPv4,
		},
		{
			name:   "service without ports is not proxied",
			svc:    makeService("svc", func(s *v1.Service) { s.Spec.Ports = nil }),
			family: IPv4,
		},
		{
			name: "service without a cluster IP is not proxied",
			svc: makeService("svc", func(s *v1.Service) {
				s.Spec.ClusterIP = ""
				s.Spec.ClusterIPs = nil
			}),
			family: IPv4,
		},
		{
			name: "dual-stack service, IPv4 proxier takes the IPv4 addresses",
			svc: makeService("svc", func(s *v1.Service) {
				s.Spec.ClusterIP = "fd00::1"
				s.Spec.ClusterIPs = []string{"fd00::1", "10.96.0.1"}
				s.Spec.ExternalIPs = []string{"2001:db8::1", "192.0.2.1"}
			}),
			family: IPv4,
			want: []*ServicePort{wantPort(func(sp *ServicePort) {
				sp.ExternalIPs = addrs("192.0.2.1")
			})},
		},
		{
			name: "dual-stack service, IPv6 proxier takes the IPv6 addresses",
			svc: makeService("svc", func(s *v1.Service) {
				s.Spec.ClusterIPs = []string{"10.96.0.1", "fd00::1"}
				s.Spec.ExternalIPs = []string{"192.0.2.1", "2001:db8::1"}
			}),
			family: IPv6,
			want: []*ServicePort{wantPort(func(sp *ServicePort) {
				sp.ClusterIP = netip.MustParseAddr("fd00::1")
				sp.ExternalIPs = addrs("2001:db8::1")
			})},
		},
		{
			name: "IPv6-only service gives nothing to the IPv4 proxier",
			svc: makeService("svc", func(s *v1.Service) {
				s.Spec.ClusterIP = "fd00::1"
				s.Spec.ClusterIPs = []string{"fd00::1"}
			}),
			family: IPv4,
		},
		{
			// The apiserver accepts these legacy forms with a warning; kube-proxy reads
			// them as the IPv4 address they denote.
			name: "legacy IP forms are read as kube-proxy reads them",
			svc: makeService("svc", func(s *v1.Service) {
				s.Spec.ClusterIP = "::ffff:10.96.0.1"
				s.Spec.ClusterIPs = []string{"::ffff:10.96.0.1"}
				s.Spec.ExternalIPs = []string{"192.0.002.001"}
			}),
			family: IPv4,
			want: []*ServicePort{wantPort(func(sp *ServicePort) {
				sp.ExternalIPs = addrs("192.0.2.1")
			})},
		},
		{
			name: "an IPv4-mapped IPv6 cluster IP is not an IPv6 address",
			svc: makeService("svc", func(s *v1.Service) {
				s.Spec.ClusterIP = "::ffff:10.96.0.1"
				s.Spec.ClusterIPs = []string{"::ffff:10.96.0.1"}
			}),
			family: IPv6,
		},
		{
			name: "unparsable cluster IP is reported and the service skipped",
			svc: makeService("svc", func(s *v1.Service) {
				s.Spec.ClusterIP = "10.96.0.300"
				s.Spec.ClusterIPs = []string{"10.96.0.300"}
			}),
			family:   IPv4,
			wantErrs: []FieldError{{Object: object, Field: "spec.clusterIPs[0]", Value: "10.96.0.300"}},
		},
		{
			name: "invalid externalIPs entry is skipped and reported, valid ones kept",
			svc: makeService("svc", func(s *v1.Service) {
				s.Spec.ExternalIPs = []string{"192.0.2.1", "not-an-ip", "192.0.2.3"}
			}),
			family: IPv4,
			want: []*ServicePort{wantPort(func(sp *ServicePort) {
				sp.ExternalIPs = addrs("192.0.2.1", "192.0.2.3")
			})},
			wantErrs: []FieldError{{Object: object, Field: "spec.externalIPs[1]", Value: "not-an-ip"}},
		},
		{
			name: "single invalid externalIP is reported with its index",
			svc: makeService("svc", func(s *v1.Service) {
				s.Spec.ExternalIPs = []string{"192.0.2"}
			}),
			family:   IPv4,
			want:     []*ServicePort{wantPort(nil)},
			wantErrs: []FieldError{{Object: object, Field: "spec.externalIPs[0]", Value: "192.0.2"}},
		},
		{
			name: "unsupported protocol skips just that port",
			svc: makeService("svc", func(s *v1.Service) {
				s.Spec.Ports = []v1.ServicePort{
					{Name: "http", Port: 80, Protocol: v1.ProtocolTCP},
					{Name: "ping", Port: 81, Protocol: "ICMP"},
				}
			}),
			family:   IPv4,
			want:     []*ServicePort{wantPort(nil)},
			wantErrs: []FieldError{{Object: object, Field: "spec.ports[1].protocol", Value: "ICMP"}},
		},
		{
			name: "port 0 skips just that port",
			svc: makeService("svc", func(s *v1.Service) {
				s.Spec.Ports = []v1.ServicePort{
					{Name: "http", Port: 80, Protocol: v1.ProtocolTCP},
					{Name: "zero", Port: 0, Protocol: v1.ProtocolTCP},
				}
			}),
			family:   IPv4,
			want:     []*ServicePort{wantPort(nil)},
			wantErrs: []FieldError{{Object: object, Field: "spec.ports[1].port", Value: "0"}},
		},
		{
			name: "port 70000 skips just that port",
			svc: makeService("svc", func(s *v1.Service) {
				s.Spec.Ports = []v1.ServicePort{
					{Name: "big", Port: 70000, Protocol: v1.ProtocolUDP},
					{Name: "http", Port: 80, Protocol: v1.ProtocolTCP},
				}
			}),
			family:   IPv4,
			want:     []*ServicePort{wantPort(nil)},
			wantErrs: []FieldError{{Object: object, Field: "spec.ports[0].port", Value: "70000"}},
		},
		{
			name: "port 65535 is valid",
			svc: makeService("svc", func(s *v1.Service) {
				s.Spec.Ports = []v1.ServicePort{{Name: "http", Port: 65535, Protocol: v1.ProtocolTCP}}
			}),
			family: IPv4,
			want:   []*ServicePort{wantPort(func(sp *ServicePort) { sp.Port = 65535 })},
		},
		{
			name: "nodePort out of range skips just that port",
			svc: makeService("svc", func(s *v1.Service) {
				s.Spec.Type = v1.ServiceTypeNodePort
				s.Spec.Ports = []v1.ServicePort{
					{Name: "http", Port: 80, Protocol: v1.ProtocolTCP, NodePort: 30080},
					{Name: "bad", Port: 81, Protocol: v1.ProtocolTCP, NodePort: 70000},
				}
			}),
			family:   IPv4,
			want:     []*ServicePort{wantPort(func(sp *ServicePort) { sp.NodePort = 30080 })},
			wantErrs: []FieldError{{Object: object, Field: "spec.ports[1].nodePort", Value: "70000"}},
		},
		{
			name: "load balancer ingress: ipMode Proxy and hostname-only entries skipped, source ranges of the family kept",
			svc: makeService("svc", func(s *v1.Service) {
				s.Spec.Type = v1.ServiceTypeLoadBalancer
				s.Spec.Ports[0].NodePort = 30080
				s.Spec.LoadBalancerSourceRanges = []string{"198.51.100.7/24", "2001:db8::/32"}
				s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{
					{IP: "203.0.113.1", IPMode: ptr(v1.LoadBalancerIPModeVIP)},
					{IP: "203.0.113.2", IPMode: ptr(v1.LoadBalancerIPModeProxy)},
					{IP: "203.0.113.3"},
					{Hostname: "lb.example.com"},
					{IP: "2001:db8::5"},
				}
			}),
			family: IPv4,
			want: []*ServicePort{wantPort(func(sp *ServicePort) {
				sp.NodePort = 30080
				sp.LoadBalancerIPs = addrs("203.0.113.1", "203.0.113.3")
				sp.LoadBalancerSourceRanges = []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}
			})},
		},
		{
			// kube-proxy's newBaseServiceInfo trims them: API validation does too.
			name: "source ranges padded with spaces are read trimmed",
			svc: makeService("svc", func(s *v1.Service) {
				s.Spec.Type = v1.ServiceTypeLoadBalancer
				s.Spec.LoadBalancerSourceRanges = []string{" 198.51.100.0/24 "}
				s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "203.0.113.1"}}
			}),
			family: IPv4,
			want: []*ServicePort{wantPort(func(sp *ServicePort) {
				sp.LoadBalancerIPs = addrs("203.0.113.1")
				sp.LoadBalancerSourceRanges = []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}
			})},
		},
		{
			// kube-proxy's newBaseServiceInfo: a zero-length range means "allow any".
			name: "a zero-length source range admits everyone: no ranges",
			svc: makeService("svc", func(s *v1.Service) {
				s.Spec.Type = v1.ServiceTypeLoadBalancer
				s.Spec.LoadBalancerSourceRanges = []string{"198.51.100.0/24", "0.0.0.0/0"}
				s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "203.0.113.1"}}
			}),
			family: IPv4,
			want: []*ServicePort{wantPort(func(sp *ServicePort) {
				sp.LoadBalancerIPs = addrs("203.0.113.1")
			})},
		},
		{
			name: "invalid load balancer ingress IP and source range are reported",
			svc: makeService("svc", func(s *v1.Service) {
				s.Spec.Type = v1.ServiceTypeLoadBalancer
				s.Spec.LoadBalancerSourceRanges = []string{"198.51.100.0/33"}
				s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "203.0.113.1"}, {IP: "bogus"}}
			}),
			family: IPv4,
			want: []*ServicePort{wantPort(func(sp *ServicePort) {
				sp.LoadBalancerIPs = addrs("203.0.113.1")
			})},
			wantErrs: []FieldError{
				{Object: object, Field: "status.loadBalancer.ingress[1].ip", Value: "bogus"},
				{Object: object, Field: "spec.loadBalancerSourceRanges[0]", Value: "198.51.100.0/33"},
			},
		},
		{
			name: "source ranges are ignored unless the service is a LoadBalancer",
			svc: makeService("svc", func(s *v1.Service) {
				s.Spec.LoadBalancerSourceRanges = []string{"198.51.100.0/24"}
			}),
			family: IPv4,
			want:   []*ServicePort{wantPort(nil)},
		},
		{
			name: "session affinity ClientIP defaults to 10800s",
			svc: makeService("svc", func(s *v1.Service) {
				s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
			}),
			family: IPv4,
			want: []*ServicePort{wantPort(func(sp *ServicePort) {
				sp.SessionAffinityTimeout = 10800 * time.Second
			})},
		},
		{
			name: "session affinity ClientIP with explicit timeout",
			svc: makeService("svc", func(s *v1.Service) {
				s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
				s.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr[int32](60)}}
			}),
			family: IPv4,
			want: []*ServicePort{wantPort(func(sp *ServicePort) {
				sp.SessionAffinityTimeout = 60 * time.Second
			})},
		},
		{
			name: "session affinity None ignores a leftover config",
			svc: makeService("svc", func(s *v1.Service) {
				s.Spec.SessionAffinity = v1.ServiceAffinityNone
				s.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr[int32](60)}}
			}),
			family: IPv4,
			want:   []*ServicePort{wantPort(nil)},
		},
		{
			name: "externalTrafficPolicy Local on a plain ClusterIP service does not count",
			svc: makeService("svc", func(s *v1.Service) {
				s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
			}),
			family: IPv4,
			want:   []*ServicePort{wantPort(nil)},
		},
		{
			name: "externalTrafficPolicy Local on a NodePort service",
			svc: makeService("svc", func(s *v1.Service) {
				s.Spec.Type = v1.ServiceTypeNodePort
				s.Spec.Ports[0].NodePort = 30080
				s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
				s.Spec.HealthCheckNodePort = 32000 // not a LoadBalancer: no health check
			}),
			family: IPv4,
			want: []*ServicePort{wantPort(func(sp *ServicePort) {
				sp.NodePort = 30080
				sp.ExternalPolicyLocal = true
			})},
		},
		{
			name: "externalTrafficPolicy Local on a ClusterIP service with externalIPs",
			svc: makeService("svc", func(s *v1.Service) {
				s.Spec.ExternalIPs = []string{"192.0.2.1"}
				s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
			}),
			family: IPv4,
			want: []*ServicePort{wantPort(func(sp *ServicePort) {
				sp.ExternalIPs = addrs("192.0.2.1")
				sp.ExternalPolicyLocal = true
			})},
		},
		{
			name: "externalTrafficPolicy Local on a LoadBalancer service carries its healthCheckNodePort",
			svc: makeService("svc", func(s *v1.Service) {
				s.Spec.Type = v1.ServiceTypeLoadBalancer
				s.Spec.Ports[0].NodePort = 30080
				s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
				s.Spec.HealthCheckNodePort = 32000
			}),
			family: IPv4,
			want: []*ServicePort{wantPort(func(sp *ServicePort) {
				sp.NodePort = 30080
				sp.ExternalPolicyLocal = true
				sp.HealthCheckNodePort = 32000
			})},
		},
		{
			name: "externalTrafficPolicy Cluster on a LoadBalancer service has no healthCheckNodePort",
			svc: makeService("svc", func(s *v1.Service) {
				s.Spec.Type = v1.ServiceTypeLoadBalancer
				s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyCluster
				s.Spec.HealthCheckNodePort = 32000
			}),
			family: IPv4,
			want:   []*ServicePort{wantPort(nil)},
		},
		{
			name: "internalTrafficPolicy Local",
			svc: makeService("svc", func(s *v1.Service) {
				s.Spec.InternalTrafficPolicy = ptr(v1.ServiceInternalTrafficPolicyLocal)
			}),
			family: IPv4,
			want:   []*ServicePort{wantPort(func(sp *ServicePort) { sp.InternalPolicyLocal = true })},
		},
		{
			name: "internalTrafficPolicy Cluster",
			svc: makeService("svc", func(s *v1.Service) {
				s.Spec.InternalTrafficPolicy = ptr(v1.ServiceInternalTrafficPolicyCluster)
			}),
			family: IPv4,
			want:   []*ServicePort{wantPort(nil)},
		},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			got, errs := ServicePorts(tc.svc, tc.family)
			if diff := cmp.Diff(tc.want, got, netipComparers, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("ServicePorts() mismatch (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.wantErrs, errs, fieldErrorOpts); diff != "" {
				t.Errorf("ServicePorts() errors mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

// sliceNode is the node the proxier of TestServiceEndpoints runs on.
const sliceNode = "node-a"

func TestServiceEndpoints(t *testing.T) {
	sliceA := v1.ObjectReference{APIVersion: "discovery.k8s.io/v1", Kind: "EndpointSlice", Namespace: "ns", Name: "svc-a"}
	service := nsName("svc")
	httpPort := spn("svc", "http", v1.ProtocolTCP)
	// ep is an endpoint of port 8080 that is ready and serving, modified by tweak.
	ep := func(ip string, tweak func(*Endpoint)) Endpoint {
		e := Endpoint{IP: netip.MustParseAddr(ip), Port: 8080, Ready: true, Serving: true}
		if tweak != nil {
			tweak(&e)
		}
		return e
	}
	notReady := discovery.EndpointConditions{Ready: ptr(false)}
	slicesOf := func(ss ...*discovery.EndpointSlice) map[string]*discovery.EndpointSlice {
		m := map[string]*discovery.EndpointSlice{}
		for _, s := range ss {
			m[s.Name] = s
		}
		return m
	}

	testCases := []struct {
		name     string
		slices   map[string]*discovery.EndpointSlice
		family   Family
		want     map[ServicePortName][]Endpoint
		wantErrs []FieldError
	}{
		{
			name:   "no slices",
			family: IPv4,
			want:   map[ServicePortName][]Endpoint{},
		},
		{
			name: "two slices are merged",
			slices: slicesOf(
				makeSlice("svc", "svc-a", []discovery.Endpoint{readyEndpoint("10.0.0.1", "")}, nil),
				makeSlice("svc", "svc-b", []discovery.Endpoint{readyEndpoint("10.0.0.2", "")}, nil),
			),
			family: IPv4,
			want:   map[ServicePortName][]Endpoint{httpPort: {ep("10.0.0.1", nil), ep("10.0.0.2", nil)}},
		},
		{
			name: "duplicate address across slices appears once, the ready copy wins (ready copy in the later slice)",
			slices: slicesOf(
				makeSlice("svc", "svc-a", []discovery.Endpoint{{Addresses: []string{"10.0.0.1"}, Conditions: notReady}}, nil),
				makeSlice("svc", "svc-b", []discovery.Endpoint{readyEndpoint("10.0.0.1", "")}, nil),
			),
			family: IPv4,
			want:   map[ServicePortName][]Endpoint{httpPort: {ep("10.0.0.1", nil)}},
		},
		{
			name: "duplicate address across slices appears once, the ready copy wins (ready copy in the earlier slice)",
			slices: slicesOf(
				makeSlice("svc", "svc-a", []discovery.Endpoint{readyEndpoint("10.0.0.1", "")}, nil),
				makeSlice("svc", "svc-b", []discovery.Endpoint{{Addresses: []string{"10.0.0.1"}, Conditions: notReady}}, nil),
			),
			family: IPv4,
			want:   map[ServicePortName][]Endpoint{httpPort: {ep("10.0.0.1", nil)}},
		},
		{
			// kube-proxy's addEndpoints: a later copy replaces an earlier one only when
			// it is local, so a local copy wins whatever its conditions.
			name: "duplicate address across slices, one copy on this node: it wins though not ready (local copy in the later slice)",
			slices: slicesOf(
				makeSlice("svc", "svc-a", []discovery.Endpoint{readyEndpoint("10.0.0.1", "other")}, nil),
				makeSlice("svc", "svc-b", []discovery.Endpoint{{Addresses: []string{"10.0.0.1"}, Conditions: notReady, NodeName: ptr(sliceNode)}}, nil),
			),
			family: IPv4,
			want: map[ServicePortName][]Endpoint{httpPort: {ep("10.0.0.1", func(e *Endpoint) {
				e.Ready, e.NodeName = false, sliceNode
			})}},
		},
		{
			name: "duplicate address across slices, one copy on this node: it wins though not ready (local copy in the earlier slice)",
			slices: slicesOf(
				makeSlice("svc", "svc-a", []discovery.Endpoint{{Addresses: []string{"10.0.0.1"}, Conditions: notReady, NodeName: ptr(sliceNode)}}, nil),
				makeSlice("svc", "svc-b", []discovery.Endpoint{readyEndpoint("10.0.0.1", "other")}, nil),
			),
			family: IPv4,
			want: map[ServicePortName][]Endpoint{httpPort: {ep("10.0.0.1", func(e *Endpoint) {
				e.Ready, e.NodeName = false, sliceNode
			})}},
		},
		{
			name: "FQDN and IPv6 slices are ignored by the IPv4 proxier",
			slices: slicesOf(
				makeSlice("svc", "svc-v4", []discovery.Endpoint{readyEndpoint("10.0.0.1", "")}, nil),
				makeSlice("svc", "svc-v6", []discovery.Endpoint{readyEndpoint("fd00::1", "")}, func(s *discovery.EndpointSlice) {
					s.AddressType = discovery.AddressTypeIPv6
				}),
				makeSlice("svc", "svc-fqdn", []discovery.Endpoint{readyEndpoint("db.example.com", "")}, func(s *discovery.EndpointSlice) {
					s.AddressType = discovery.AddressTypeFQDN
				}),
			),
			family: IPv4,
			want:   map[ServicePortName][]Endpoint{httpPort: {ep("10.0.0.1", nil)}},
		},
		{
			name: "IPv6 proxier takes only the IPv6 slice",
			slices: slicesOf(
				makeSlice("svc", "svc-v4", []discovery.Endpoint{readyEndpoint("10.0.0.1", "")}, nil),
				makeSlice("svc", "svc-v6", []discovery.Endpoint{readyEndpoint("fd00::1", "")}, func(s *discovery.EndpointSlice) {
					s.AddressType = discovery.AddressTypeIPv6
				}),
			),
			family: IPv6,
			want:   map[ServicePortName][]Endpoint{httpPort: {ep("fd00::1", nil)}},
		},
		{
			// kube-proxy's EndpointSliceCache.addEndpoints reads a nil serving as true.
			name: "conditions: nil ready means ready, nil serving means serving, terminating only when set",
			slices: slicesOf(makeSlice("svc", "svc-a", []discovery.Endpoint{
				{Addresses: []string{"10.0.0.1"}}, // all conditions unset
				{Addresses: []string{"10.0.0.2"}, Conditions: discovery.EndpointConditions{Ready: ptr(false)}},
				{Addresses: []string{"10.0.0.3"}, Conditions: discovery.EndpointConditions{Ready: ptr(false), Serving: ptr(true), Terminating: ptr(true)}},
				{Addresses: []string{"10.0.0.4"}, Conditions: discovery.EndpointConditions{Ready: ptr(false), Serving: ptr(false), Terminating: ptr(true)}},
				{Addresses: []string{"10.0.0.5"}, Conditions: discovery.EndpointConditions{Ready: ptr(true), Serving: ptr(true), Terminating: ptr(false)}},
			}, nil)),
			family: IPv4,
			want: map[ServicePortName][]Endpoint{httpPort: {
				ep("10.0.0.1", nil),
				ep("10.0.0.2", func(e *Endpoint) { e.Ready = false }),
				ep("10.0.0.3", func(e *Endpoint) { e.Ready, e.Terminating = false, true }),
				ep("10.0.0.4", func(e *Endpoint) { e.Ready, e.Serving, e.Terminating = false, false, true }),
				ep("10.0.0.5", nil),
			}},
		},
		{
			name: "nodeName, zone and hints are copied",
			slices: slicesOf(makeSlice("svc", "svc-a", []discovery.Endpoint{{
				Addresses:  []string{"10.0.0.1"},
				Conditions: discovery.EndpointConditions{Ready: ptr(true)},
				NodeName:   ptr("node-a"),
				Zone:       ptr("zone-a"),
				Hints: &discovery.EndpointHints{
					ForZones: []discovery.ForZone{{Name: "zone-a"}, {Name: "zone-b"}},
					ForNodes: []discovery.ForNode{{Name: "node-a"}},
				},
			}}, nil)),
			family: IPv4,
			want: map[ServicePortName][]Endpoint{httpPort: {ep("10.0.0.1", func(e *Endpoint) {
				e.NodeName = "node-a"
				e.Zone = "zone-a"
				e.ZoneHints = []string{"zone-a", "zone-b"}
				e.NodeHints = []string{"node-a"}
			})}},
		},
		{
			name: "slice ports become separate ServicePortNames; unset name is \"\" and unset protocol is TCP",
			slices: slicesOf(makeSlice("svc", "svc-a", []discovery.Endpoint{readyEndpoint("10.0.0.1", "")}, func(s *discovery.EndpointSlice) {
				s.Ports = []discovery.EndpointPort{
					{Name: ptr("dns"), Port: ptr[int32](5353), Protocol: ptr(v1.ProtocolUDP)},
					{Port: ptr[int32](8080)},
					{Name: ptr("all"), Protocol: ptr(v1.ProtocolTCP)}, // no port number: matches nothing
				}
			})),
			family: IPv4,
			want: map[ServicePortName][]Endpoint{
				spn("svc", "dns", v1.ProtocolUDP): {ep("10.0.0.1", func(e *Endpoint) { e.Port = 5353 })},
				spn("svc", "", v1.ProtocolTCP):    {ep("10.0.0.1", nil)},
			},
		},
		{
			name: "invalid address is skipped and reported once, valid ones kept",
			slices: slicesOf(makeSlice("svc", "svc-a", []discovery.Endpoint{
				readyEndpoint("bogus", ""),
				readyEndpoint("10.0.0.1", ""),
				readyEndpoint("fd00::1", ""), // wrong family for an IPv4 slice
			}, func(s *discovery.EndpointSlice) {
				s.Ports = append(s.Ports, discovery.EndpointPort{Name: ptr("https"), Port: ptr[int32](8443), Protocol: ptr(v1.ProtocolTCP)})
			})),
			family: IPv4,
			want: map[ServicePortName][]Endpoint{
				httpPort:                            {ep("10.0.0.1", nil)},
				spn("svc", "https", v1.ProtocolTCP): {ep("10.0.0.1", func(e *Endpoint) { e.Port = 8443 })},
			},
			wantErrs: []FieldError{
				{Object: sliceA, Field: "endpoints[0].addresses[0]", Value: "bogus"},
				{Object: sliceA, Field: "endpoints[2].addresses[0]", Value: "fd00::1"},
			},
		},
		{
			name: "slice port out of range is reported and skipped",
			slices: slicesOf(makeSlice("svc", "svc-a", []discovery.Endpoint{readyEndpoint("10.0.0.1", "")}, func(s *discovery.EndpointSlice) {
				s.Ports = append(s.Ports, discovery.EndpointPort{Name: ptr("bad"), Port: ptr[int32](0), Protocol: ptr(v1.ProtocolTCP)})
			})),
			family:   IPv4,
			want:     map[ServicePortName][]Endpoint{httpPort: {ep("10.0.0.1", nil)}},
			wantErrs: []FieldError{{Object: sliceA, Field: "ports[1].port", Value: "0"}},
		},
		{
			// Regression: addresses used to be checked only while walking ports[0], so a
			// bad address went unreported when ports[0] itself was unusable.
			name: "invalid address is reported even when the first slice port is unusable",
			slices: slicesOf(makeSlice("svc", "svc-a", []discovery.Endpoint{
				readyEndpoint("bogus", ""),
				readyEndpoint("10.0.0.1", ""),
			}, func(s *discovery.EndpointSlice) {
				s.Ports = []discovery.EndpointPort{
					{Name: ptr("bad"), Port: ptr[int32](70000), Protocol: ptr(v1.ProtocolTCP)},
					{Name: ptr("http"), Port: ptr[int32](8080), Protocol: ptr(v1.ProtocolTCP)},
				}
			})),
			family: IPv4,
			want:   map[ServicePortName][]Endpoint{httpPort: {ep("10.0.0.1", nil)}},
			wantErrs: []FieldError{
				{Object: sliceA, Field: "ports[0].port", Value: "70000"},
				{Object: sliceA, Field: "endpoints[0].addresses[0]", Value: "bogus"},
			},
		},
		{
			name: "endpoint without addresses is skipped",
			slices: slicesOf(makeSlice("svc", "svc-a", []discovery.Endpoint{
				{Conditions: discovery.EndpointConditions{Ready: ptr(true)}},
				readyEndpoint("10.0.0.1", ""),
			}, nil)),
			family: IPv4,
			want:   map[ServicePortName][]Endpoint{httpPort: {ep("10.0.0.1", nil)}},
		},
		{
			name: "output is sorted by address, not by slice order",
			slices: slicesOf(
				makeSlice("svc", "svc-a", []discovery.Endpoint{readyEndpoint("10.0.0.10", ""), readyEndpoint("10.0.0.2", "")}, nil),
				makeSlice("svc", "svc-b", []discovery.Endpoint{readyEndpoint("10.0.0.1", ""), readyEndpoint("9.0.0.1", "")}, nil),
			),
			family: IPv4,
			want: map[ServicePortName][]Endpoint{httpPort: {
				ep("9.0.0.1", nil), ep("10.0.0.1", nil), ep("10.0.0.2", nil), ep("10.0.0.10", nil),
			}},
		},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			got, errs := ServiceEndpoints(service, tc.slices, tc.family, sliceNode)
			if diff := cmp.Diff(tc.want, got, netipComparers, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("ServiceEndpoints() mismatch (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.wantErrs, errs, fieldErrorOpts); diff != "" {
				t.Errorf("ServiceEndpoints() errors mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

// The endpoints of a port are sorted, so backends render them deterministically no matter
// in which order the map of slices is walked. Run the merge many times to catch map-order
// dependence in the duplicate resolution and the sort.
func TestServiceEndpointsDeterministic(t *testing.T) {
	sl := map[string]*discovery.EndpointSlice{}
	for i, name := range []string{"s1", "s2", "s3", "s4"} {
		sl[name] = makeSlice("svc", name, []discovery.Endpoint{
			{Addresses: []string{"10.0.0.1"}, Conditions: discovery.EndpointConditions{Ready: ptr(false)}, NodeName: ptr(name)},
			readyEndpoint("10.0.1."+string(rune('1'+i)), ""),
		}, nil)
	}
	first, _ := ServiceEndpoints(types.NamespacedName{Namespace: testNamespace, Name: "svc"}, sl, IPv4, sliceNode)
	for range 50 {
		got, _ := ServiceEndpoints(types.NamespacedName{Namespace: testNamespace, Name: "svc"}, sl, IPv4, sliceNode)
		if diff := cmp.Diff(first, got, netipComparers); diff != "" {
			t.Fatalf("ServiceEndpoints() is not deterministic (-first +got):\n%s", diff)
		}
	}
	// Among not-ready duplicates the first slice by name wins.
	if got := first[spn("svc", "http", v1.ProtocolTCP)][0]; got.NodeName != "s1" {
		t.Errorf("duplicate resolution picked the copy from node %q, want the one from slice s1", got.NodeName)
	}
}

// TestPrimaryNodeIP: the node's IP that kube-proxy checks against source ranges is its
// first InternalIP of the family, else its first ExternalIP (GetNodeHostIPs).
func TestPrimaryNodeIP(t *testing.T) {
	addrs := func(a ...v1.NodeAddress) *v1.Node { return &v1.Node{Status: v1.NodeStatus{Addresses: a}} }
	internal := func(ip string) v1.NodeAddress { return v1.NodeAddress{Type: v1.NodeInternalIP, Address: ip} }
	external := func(ip string) v1.NodeAddress { return v1.NodeAddress{Type: v1.NodeExternalIP, Address: ip} }
	tests := []struct {
		name   string
		node   *v1.Node
		family Family
		want   string
	}{
		{name: "first InternalIP of the family", node: addrs(internal("fd00::1"), external("192.0.2.9"), internal("10.0.0.1"), internal("10.0.0.2")), family: IPv4, want: "10.0.0.1"},
		{name: "ExternalIP when there is no InternalIP", node: addrs(v1.NodeAddress{Type: v1.NodeHostName, Address: "node-a"}, external("192.0.2.9")), family: IPv4, want: "192.0.2.9"},
		{name: "IPv6", node: addrs(internal("10.0.0.1"), internal("fd00::1")), family: IPv6, want: "fd00::1"},
		{name: "none of the family", node: addrs(internal("10.0.0.1")), family: IPv6},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.family.primaryNodeIP(tc.node)
			if (tc.want == "" && got.IsValid()) || (tc.want != "" && got != netip.MustParseAddr(tc.want)) {
				t.Errorf("primaryNodeIP = %v, want %q", got, tc.want)
			}
		})
	}
}
