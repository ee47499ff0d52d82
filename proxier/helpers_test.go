package proxier

import (
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// Shared fixtures for the proxier unit tests. Objects are built from a minimal valid base
// and then modified by the test case, so each case shows only what matters to it.

const testNamespace = "ns"

func ptr[T any](v T) *T { return &v }

// netipComparers lets cmp compare the model's netip values, which have unexported fields.
var netipComparers = cmp.Options{
	cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
	cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }),
}

func addrs(ss ...string) []netip.Addr {
	out := make([]netip.Addr, 0, len(ss))
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func nsName(name string) types.NamespacedName {
	return types.NamespacedName{Namespace: testNamespace, Name: name}
}

func spn(svc, port string, proto v1.Protocol) ServicePortName {
	return ServicePortName{NamespacedName: nsName(svc), Port: port, Protocol: proto}
}

// makeService returns a ClusterIP Service "ns/<name>" with cluster IP 10.96.0.1 and one TCP
// port "http" 80, then applies tweak.
func makeService(name string, tweak func(*v1.Service)) *v1.Service {
	svc := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: testNamespace, Name: name, ResourceVersion: "1"},
		Spec: v1.ServiceSpec{
			Type:       v1.ServiceTypeClusterIP,
			ClusterIP:  "10.96.0.1",
			ClusterIPs: []string{"10.96.0.1"},
			Ports:      []v1.ServicePort{{Name: "http", Port: 80, Protocol: v1.ProtocolTCP}},
		},
	}
	if tweak != nil {
		tweak(svc)
	}
	return svc
}

// makeSlice returns an IPv4 EndpointSlice "ns/<name>" of Service <service> with port "http"
// 8080/TCP and the given endpoints, then applies tweak.
func makeSlice(service, name string, endpoints []discovery.Endpoint, tweak func(*discovery.EndpointSlice)) *discovery.EndpointSlice {
	s := &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Namespace:       testNamespace,
			Name:            name,
			ResourceVersion: "1",
			Labels:          map[string]string{discovery.LabelServiceName: service},
		},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: ptr("http"), Port: ptr[int32](8080), Protocol: ptr(v1.ProtocolTCP)}},
		Endpoints:   endpoints,
	}
	if tweak != nil {
		tweak(s)
	}
	return s
}

// readyEndpoint is a ready endpoint with the given address, on node <node> (unset if "").
func readyEndpoint(ip, node string) discovery.Endpoint {
	e := discovery.Endpoint{Addresses: []string{ip}, Conditions: discovery.EndpointConditions{Ready: ptr(true)}}
	if node != "" {
		e.NodeName = ptr(node)
	}
	return e
}

// histogramSample returns the sample count and sum of the histogram called name in reg.
func histogramSample(t *testing.T, reg *prometheus.Registry, name string) (uint64, float64) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		if len(mf.GetMetric()) != 1 {
			t.Fatalf("%s: got %d series, want 1", name, len(mf.GetMetric()))
		}
		h := mf.GetMetric()[0].GetHistogram()
		return h.GetSampleCount(), h.GetSampleSum()
	}
	t.Fatalf("metric %s is not registered", name)
	return 0, 0
}

// counterValue returns the value of the counter or gauge called name in reg.
func counterValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		m := mf.GetMetric()[0]
		if c := m.GetCounter(); c != nil {
			return c.GetValue()
		}
		return m.GetGauge().GetValue()
	}
	t.Fatalf("metric %s is not registered", name)
	return 0
}

var testTime = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
