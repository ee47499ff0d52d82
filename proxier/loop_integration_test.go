package proxier_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"
	"k8s.io/utils/ptr"

	"github.com/switchyard/switchyard/benchmarks"
	"github.com/switchyard/switchyard/internal/testenv"
	"github.com/switchyard/switchyard/proxier"
)

// stateRecorder is a Backend that keeps a copy of what it was asked to program. It stands
// in for the kernel only: this test is about the loop (informers, tracking, coalescing),
// and the backends are proven against real kernels in their own packages.
type stateRecorder struct {
	mu    sync.Mutex
	syncs int
	full  int
	// first is the number of ServicePorts in the first sync.
	first    int
	services map[proxier.ServicePortName]int // ServicePort -> number of endpoints
	changed  []proxier.ServicePortName
}

func (r *stateRecorder) Name() string { return "recorder" }

func (r *stateRecorder) Sync(_ context.Context, state *proxier.State, changes proxier.Changes) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.syncs++
	if r.syncs == 1 {
		r.first = len(state.Services)
	}
	if changes.Full {
		r.full++
	}
	r.services = map[proxier.ServicePortName]int{}
	for name := range state.Services {
		r.services[name] = len(state.Endpoints[name])
	}
	for name := range changes.ServicePorts {
		r.changed = append(r.changed, name)
	}
	return nil
}

func (r *stateRecorder) snapshot() (syncs, full int, services map[proxier.ServicePortName]int, changed []proxier.ServicePortName) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.syncs, r.full, r.services, append([]proxier.ServicePortName(nil), r.changed...)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestLoopAgainstAPIServer drives the whole control loop from a real kube-apiserver:
// a burst of Services is coalesced into few syncs, Services that are not ours are
// ignored, updates that change nothing do not reach the backend, deletes do.
func TestLoopAgainstAPIServer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cp, err := testenv.StartControlPlane(ctx, testenv.ControlPlaneOptions{Dir: t.TempDir()})
	if err != nil {
		t.Fatalf("starting the control plane: %v", err)
	}
	t.Cleanup(cp.Stop)
	client := cp.Client

	rec := &stateRecorder{}
	p := proxier.New(proxier.Options{
		Backend:       rec,
		Family:        proxier.IPv4,
		NodeName:      "node-a",
		MinSyncPeriod: 500 * time.Millisecond,
		SyncPeriod:    time.Hour, // no periodic resync during the test
		Metrics:       proxier.NewMetrics(prometheus.NewRegistry()).For(proxier.IPv4),
		Health:        proxier.NewHealth(proxier.IPv4, clock.RealClock{}, time.Hour),
		Clock:         clock.RealClock{},
		Logger:        klog.Background(),
	})
	go p.Run(ctx)
	if err := proxier.Watch(ctx, client, "", 0, new(proxier.NodeEligibility), p); err != nil {
		t.Fatal(err)
	}
	// The apiserver's own "kubernetes" Service is there from the start.
	waitFor(t, "the first sync", func() bool { s, f, _, _ := rec.snapshot(); return s == 1 && f == 1 })

	const burst = 200
	syncsBefore, _, _, _ := rec.snapshot()
	for i := range burst {
		name := fmt.Sprintf("svc-%d", i)
		if _, err := client.CoreV1().Services("default").Create(ctx, service(name, nil), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := client.DiscoveryV1().EndpointSlices("default").Create(ctx, slice(name, fmt.Sprintf("10.244.%d.%d", i/200, i%200+1)), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	ignored := []*v1.Service{
		service("other-proxy", map[string]string{proxier.LabelServiceProxyName: "someone-else"}),
		func() *v1.Service { s := service("headless", nil); s.Spec.ClusterIP = v1.ClusterIPNone; return s }(),
		{ObjectMeta: metav1.ObjectMeta{Name: "external"}, Spec: v1.ServiceSpec{Type: v1.ServiceTypeExternalName, ExternalName: "example.com"}},
	}
	for _, s := range ignored {
		if _, err := client.CoreV1().Services("default").Create(ctx, s, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "all Services with their endpoints", func() bool {
		_, _, svcs, _ := rec.snapshot()
		return len(svcs) == burst+1 && svcs[portName("svc-199")] == 1
	})
	syncs, _, svcs, _ := rec.snapshot()
	t.Logf("%d Services and %d EndpointSlices created one by one: %d syncs", burst, burst, syncs-syncsBefore)
	// Creating 400 objects takes several seconds; with a 0.5 s minimum interval the loop
	// may sync a few dozen times, never once per event.
	if n := syncs - syncsBefore; n > burst/4 {
		t.Errorf("%d events took %d syncs; want them coalesced", 2*burst, n)
	}
	for _, s := range ignored {
		if _, ok := svcs[portName(s.Name)]; ok {
			t.Errorf("Service %s was programmed; it is not ours", s.Name)
		}
	}

	// An update that changes nothing the proxy reads must not reach the backend.
	syncs, _, _, _ = rec.snapshot()
	svc, err := client.CoreV1().Services("default").Get(ctx, "svc-3", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	svc.Annotations = map[string]string{"example.com/owner": "team-a"}
	if _, err := client.CoreV1().Services("default").Update(ctx, svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	if after, _, _, _ := rec.snapshot(); after != syncs {
		t.Errorf("an annotation-only update caused %d backend syncs; want none", after-syncs)
	}

	if err := client.CoreV1().Services("default").Delete(ctx, "svc-3", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the deleted Service to leave the state", func() bool {
		_, _, svcs, changed := rec.snapshot()
		_, present := svcs[portName("svc-3")]
		return !present && changed[len(changed)-1] == portName("svc-3")
	})
}

// TestFirstSyncHoldsEveryService starts the loop against an apiserver that already holds
// thousands of Services: its first sync must hold all of them. A first sync made as soon
// as the informers' stores are listed, while their handlers are still receiving the
// list, holds only part; on a node, that full sync removes the rules of the rest.
func TestFirstSyncHoldsEveryService(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cp, err := testenv.StartControlPlane(ctx, testenv.ControlPlaneOptions{Dir: t.TempDir()})
	if err != nil {
		t.Fatalf("starting the control plane: %v", err)
	}
	t.Cleanup(cp.Stop)
	const services = 3000
	if err := benchmarks.Populate(ctx, cp.Client, &benchmarks.Workload{Endpoints: 2, Seed: 1}, 0, services); err != nil {
		t.Fatal(err)
	}
	rec := &stateRecorder{}
	p := proxier.New(proxier.Options{
		Backend: rec, Family: proxier.IPv4, NodeName: "node-a", SyncPeriod: time.Hour,
		Metrics: proxier.NewMetrics(prometheus.NewRegistry()).For(proxier.IPv4),
		Health:  proxier.NewHealth(proxier.IPv4, clock.RealClock{}, time.Hour), Clock: clock.RealClock{}, Logger: klog.Background(),
	})
	go p.Run(ctx)
	if err := proxier.Watch(ctx, cp.Client, "", 0, new(proxier.NodeEligibility), p); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the first sync", func() bool { s, _, _, _ := rec.snapshot(); return s >= 1 })
	rec.mu.Lock()
	first := rec.first
	rec.mu.Unlock()
	// The workload, its probe Service and the apiserver's own "kubernetes" Service.
	if want := services + 2; first != want {
		t.Errorf("the first sync held %d ServicePorts, want all %d", first, want)
	}
}

func portName(service string) proxier.ServicePortName {
	n := proxier.ServicePortName{Port: "http", Protocol: v1.ProtocolTCP}
	n.Namespace, n.Name = "default", service
	return n
}

func service(name string, labels map[string]string) *v1.Service {
	return &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec:       v1.ServiceSpec{Ports: []v1.ServicePort{{Name: "http", Port: 80}}},
	}
}

func slice(service, ip string) *discovery.EndpointSlice {
	return &discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: service + "-1", Labels: map[string]string{discovery.LabelServiceName: service}},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: ptr.To("http"), Port: ptr.To(int32(8080)), Protocol: ptr.To(v1.ProtocolTCP)}},
		Endpoints:   []discovery.Endpoint{{Addresses: []string{ip}}},
	}
}
