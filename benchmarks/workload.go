package benchmarks

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/switchyard/switchyard/proxier"
)

// Namespace holds every Service of the workload.
const Namespace = "bench"

// Workload addressing. Cluster IPs come from the lab's service CIDR (10.96.0.0/16),
// starting above the addresses tests and the probe Service use; endpoint addresses come
// from 10.64.0.0/10, which nothing routes: programming cost does not depend on whether
// an endpoint answers.
const (
	firstClusterIP = 4096
	ServicePort    = 80
	EndpointPort   = 8080
	// MaxServices is how many cluster IPs the generator can hand out in a /16.
	MaxServices = 65536 - firstClusterIP - 2
)

// Workload is the seeded generator of N Services with M endpoints each. Service i is the
// same in every run with the same seed, and does not depend on how many Services exist, so
// a run at 10,000 Services contains the run at 1,000.
type Workload struct {
	Endpoints int
	Seed      int64
	// changes counts endpoint changes, so that every new address is fresh.
	changes uint64
}

// Spec is one generated Service: its index and its current endpoint addresses.
type Spec struct {
	Index     int
	Endpoints []netip.Addr
}

// Name is the Service's name.
func (s *Spec) Name() string { return fmt.Sprintf("svc-%05d", s.Index) }

// ClusterIP is the Service's cluster IP.
func (s *Spec) ClusterIP() netip.Addr {
	k := firstClusterIP + s.Index
	return netip.AddrFrom4([4]byte{10, 96, byte(k >> 8), byte(k)})
}

// Spec generates Service i.
func (w *Workload) Spec(i int) *Spec {
	rng := rand.New(rand.NewPCG(uint64(w.Seed), uint64(i)))
	s := &Spec{Index: i}
	for range w.Endpoints {
		s.Endpoints = append(s.Endpoints, s.newEndpoint(rng))
	}
	return s
}

// ChangeEndpoint replaces one endpoint of s with a fresh address, as a rolling update of
// one pod does.
func (w *Workload) ChangeEndpoint(s *Spec) {
	w.changes++
	rng := rand.New(rand.NewPCG(uint64(w.Seed), 1<<40+w.changes))
	s.Endpoints[rng.IntN(len(s.Endpoints))] = s.newEndpoint(rng)
}

// newEndpoint draws an address that none of s's endpoints has: an EndpointSlice
// controller never lists one pod twice, and a duplicate would leave the Service with one
// endpoint fewer than the workload says (Service 8502 of seed 1 drew one).
func (s *Spec) newEndpoint(rng *rand.Rand) netip.Addr {
	for {
		// 10.64.0.0/10: the low 22 bits are random, avoiding .0 and .255.
		v := 64<<16 | rng.Uint32N(1<<22)
		a := netip.AddrFrom4([4]byte{10, byte(v >> 16), byte(v >> 8), byte(1 + uint32(v)%254)})
		if !slices.Contains(s.Endpoints, a) {
			return a
		}
	}
}

// Service is the API object for s: a ClusterIP Service with one TCP port.
func (s *Spec) Service() *v1.Service {
	return &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: Namespace, Name: s.Name()},
		Spec: v1.ServiceSpec{
			Type:       v1.ServiceTypeClusterIP,
			ClusterIP:  s.ClusterIP().String(),
			ClusterIPs: []string{s.ClusterIP().String()},
			Ports: []v1.ServicePort{{Name: "http", Port: ServicePort, Protocol: v1.ProtocolTCP,
				TargetPort: intstr.FromInt32(EndpointPort)}},
		},
	}
}

// EndpointSlice is the API object holding s's endpoints, all ready.
func (s *Spec) EndpointSlice() *discovery.EndpointSlice {
	slice := &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: Namespace, Name: s.Name() + "-1",
			Labels: map[string]string{discovery.LabelServiceName: s.Name()}},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](EndpointPort), Protocol: ptr.To(v1.ProtocolTCP)}},
	}
	for _, ip := range s.Endpoints {
		slice.Endpoints = append(slice.Endpoints, discovery.Endpoint{Addresses: []string{ip.String()},
			Conditions: discovery.EndpointConditions{Ready: ptr.To(true)}, NodeName: ptr.To("swyd-other-node")})
	}
	return slice
}

// Desired is a desired state built from Specs through proxier's own translation, so the
// backends see exactly what the control loop would hand them for the same API objects.
type Desired struct {
	State *proxier.State
	Specs map[int]*Spec
}

// NewDesired returns an empty desired state for node.
func NewDesired(node string) *Desired {
	return &Desired{
		State: &proxier.State{NodeName: node, Services: map[proxier.ServicePortName]*proxier.ServicePort{},
			Endpoints: map[proxier.ServicePortName][]proxier.Endpoint{}},
		Specs: map[int]*Spec{},
	}
}

// Set adds or replaces s and returns the ServicePorts that changed.
func (d *Desired) Set(s *Spec) ([]proxier.ServicePortName, error) {
	ports, errs := proxier.ServicePorts(s.Service(), proxier.IPv4)
	if len(errs) > 0 {
		return nil, fmt.Errorf("generated Service %s does not translate: %v", s.Name(), errs)
	}
	slice := s.EndpointSlice()
	eps, errs := proxier.ServiceEndpoints(types.NamespacedName{Namespace: Namespace, Name: s.Name()},
		map[string]*discovery.EndpointSlice{slice.Name: slice}, proxier.IPv4, d.State.NodeName)
	if len(errs) > 0 {
		return nil, fmt.Errorf("generated EndpointSlice %s does not translate: %v", slice.Name, errs)
	}
	var names []proxier.ServicePortName
	for _, p := range ports {
		d.State.Services[p.Name] = p
		d.State.Endpoints[p.Name] = eps[p.Name]
		names = append(names, p.Name)
	}
	d.Specs[s.Index] = s
	return names, nil
}

// Delete removes Service i and returns the ServicePorts that went.
func (d *Desired) Delete(i int) []proxier.ServicePortName {
	var names []proxier.ServicePortName
	for name := range d.State.Services {
		if name.Namespace == Namespace && name.Name == d.Specs[i].Name() {
			delete(d.State.Services, name)
			delete(d.State.Endpoints, name)
			names = append(names, name)
		}
	}
	delete(d.Specs, i)
	return names
}
