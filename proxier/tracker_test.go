package proxier

import (
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// trackerStep feeds events to a Tracker, then flushes it and checks the result.
type trackerStep struct {
	events []func(t *testing.T, tr *Tracker)
	// wantPending is what Pending reports before the flush (nil: not checked).
	wantPending *[2]int

	wantChanged     []ServicePortName
	wantNodeChanged bool
	wantTriggers    []time.Time
	wantFieldErrors []FieldError
	// wantEndpoints is the whole desired state after the flush: every ServicePort in
	// State.Services with its endpoints as "ip:port" (nil for none).
	wantEndpoints map[ServicePortName][]string
	// wantZone is State.NodeLabels' zone after the flush.
	wantZone string
}

func upsertService(svc *v1.Service) func(*testing.T, *Tracker) {
	return func(_ *testing.T, tr *Tracker) { tr.OnServiceUpdate(svc) }
}

func deleteService(svc *v1.Service) func(*testing.T, *Tracker) {
	return func(_ *testing.T, tr *Tracker) { tr.OnServiceDelete(svc) }
}

func upsertSlice(s *discovery.EndpointSlice) func(*testing.T, *Tracker) {
	return func(_ *testing.T, tr *Tracker) { tr.OnEndpointSliceUpdate(s) }
}

func deleteSlice(s *discovery.EndpointSlice) func(*testing.T, *Tracker) {
	return func(_ *testing.T, tr *Tracker) { tr.OnEndpointSliceDelete(s) }
}

func updateNode(labels map[string]string, wantChanged bool) func(*testing.T, *Tracker) {
	return func(t *testing.T, tr *Tracker) {
		t.Helper()
		node := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a", Labels: labels}}
		if got := tr.OnNodeUpdate(node); got != wantChanged {
			t.Errorf("OnNodeUpdate(%v) = %v, want %v", labels, got, wantChanged)
		}
	}
}

func TestTracker(t *testing.T) {
	http := spn("svc", "http", v1.ProtocolTCP)
	dns := spn("svc", "dns", v1.ProtocolUDP)
	otherHTTP := spn("other", "http", v1.ProtocolTCP)

	// svc has two ports; its slices carry both.
	svc := func(rv string, tweak func(*v1.Service)) *v1.Service {
		return makeService("svc", func(s *v1.Service) {
			s.ResourceVersion = rv
			s.Spec.Ports = []v1.ServicePort{
				{Name: "http", Port: 80, Protocol: v1.ProtocolTCP},
				{Name: "dns", Port: 53, Protocol: v1.ProtocolUDP},
			}
			if tweak != nil {
				tweak(s)
			}
		})
	}
	slice := func(name, rv string, ips []string, tweak func(*discovery.EndpointSlice)) *discovery.EndpointSlice {
		var eps []discovery.Endpoint
		for _, ip := range ips {
			eps = append(eps, readyEndpoint(ip, ""))
		}
		return makeSlice("svc", name, eps, func(s *discovery.EndpointSlice) {
			s.ResourceVersion = rv
			s.Ports = []discovery.EndpointPort{
				{Name: ptr("http"), Port: ptr[int32](8080), Protocol: ptr(v1.ProtocolTCP)},
				{Name: ptr("dns"), Port: ptr[int32](5353), Protocol: ptr(v1.ProtocolUDP)},
			}
			if tweak != nil {
				tweak(s)
			}
		})
	}
	withTrigger := func(ts time.Time) func(*discovery.EndpointSlice) {
		return func(s *discovery.EndpointSlice) {
			s.Annotations = map[string]string{v1.EndpointsLastChangeTriggerTime: ts.Format(time.RFC3339Nano)}
		}
	}
	other := makeService("other", func(s *v1.Service) { s.Spec.ClusterIP = "10.96.0.2"; s.Spec.ClusterIPs = []string{"10.96.0.2"} })
	otherSlice := makeSlice("other", "other-1", []discovery.Endpoint{readyEndpoint("10.0.2.1", "")}, nil)

	t1 := testTime
	t2 := testTime.Add(time.Second)
	t3 := testTime.Add(2 * time.Second)

	testCases := []struct {
		name  string
		steps []trackerStep
	}{
		{
			name: "add and two updates of one Service coalesce into one change per port",
			steps: []trackerStep{{
				events: []func(*testing.T, *Tracker){
					upsertService(svc("1", nil)),
					upsertService(svc("2", func(s *v1.Service) { s.Spec.ExternalIPs = []string{"192.0.2.1"} })),
					upsertService(svc("3", func(s *v1.Service) { s.Spec.ExternalIPs = []string{"192.0.2.2"} })),
				},
				wantPending:   &[2]int{1, 0},
				wantChanged:   []ServicePortName{http, dns},
				wantEndpoints: map[ServicePortName][]string{http: nil, dns: nil},
			}},
		},
		{
			name: "update that changes nothing observable reports no change",
			steps: []trackerStep{
				{
					events:        []func(*testing.T, *Tracker){upsertService(svc("1", nil)), upsertSlice(slice("svc-1", "1", []string{"10.0.0.1"}, nil))},
					wantChanged:   []ServicePortName{http, dns},
					wantEndpoints: map[ServicePortName][]string{http: {"10.0.0.1:8080"}, dns: {"10.0.0.1:5353"}},
				},
				{
					events: []func(*testing.T, *Tracker){
						upsertService(svc("2", func(s *v1.Service) {
							s.Annotations = map[string]string{"example.com/owner": "team-a"}
							s.Labels = map[string]string{"app": "web"}
						})),
						upsertSlice(slice("svc-1", "2", []string{"10.0.0.1"}, func(s *discovery.EndpointSlice) {
							s.Annotations = map[string]string{"example.com/unrelated": "x"}
						})),
					},
					wantPending:   &[2]int{1, 1},
					wantChanged:   nil,
					wantEndpoints: map[ServicePortName][]string{http: {"10.0.0.1:8080"}, dns: {"10.0.0.1:5353"}},
				},
			},
		},
		{
			name: "delete and re-add of the same Service before a flush is no change",
			steps: []trackerStep{
				{
					events:        []func(*testing.T, *Tracker){upsertService(svc("1", nil))},
					wantChanged:   []ServicePortName{http, dns},
					wantEndpoints: map[ServicePortName][]string{http: nil, dns: nil},
				},
				{
					events:        []func(*testing.T, *Tracker){deleteService(svc("1", nil)), upsertService(svc("2", nil))},
					wantChanged:   nil,
					wantEndpoints: map[ServicePortName][]string{http: nil, dns: nil},
				},
			},
		},
		{
			name: "endpoint change of one Service reports only that Service's ports",
			steps: []trackerStep{
				{
					events: []func(*testing.T, *Tracker){
						upsertService(svc("1", nil)), upsertSlice(slice("svc-1", "1", []string{"10.0.0.1"}, nil)),
						upsertService(other), upsertSlice(otherSlice),
					},
					wantChanged: []ServicePortName{http, dns, otherHTTP},
					wantEndpoints: map[ServicePortName][]string{
						http: {"10.0.0.1:8080"}, dns: {"10.0.0.1:5353"}, otherHTTP: {"10.0.2.1:8080"},
					},
				},
				{
					events:      []func(*testing.T, *Tracker){upsertSlice(slice("svc-1", "2", []string{"10.0.0.1", "10.0.0.2"}, nil))},
					wantPending: &[2]int{0, 1},
					wantChanged: []ServicePortName{http, dns},
					wantEndpoints: map[ServicePortName][]string{
						http: {"10.0.0.1:8080", "10.0.0.2:8080"}, dns: {"10.0.0.1:5353", "10.0.0.2:5353"}, otherHTTP: {"10.0.2.1:8080"},
					},
				},
			},
		},
		{
			name: "deleting a Service reports its ports and removes them from State",
			steps: []trackerStep{
				{
					events: []func(*testing.T, *Tracker){
						upsertService(svc("1", nil)), upsertSlice(slice("svc-1", "1", []string{"10.0.0.1"}, nil)),
						upsertService(other),
					},
					wantChanged:   []ServicePortName{http, dns, otherHTTP},
					wantEndpoints: map[ServicePortName][]string{http: {"10.0.0.1:8080"}, dns: {"10.0.0.1:5353"}, otherHTTP: nil},
				},
				{
					events:        []func(*testing.T, *Tracker){deleteService(svc("1", nil))},
					wantChanged:   []ServicePortName{http, dns},
					wantEndpoints: map[ServicePortName][]string{otherHTTP: nil},
				},
			},
		},
		{
			name: "endpoints that arrive before their Service are used once it arrives",
			steps: []trackerStep{
				{
					events:        []func(*testing.T, *Tracker){upsertSlice(slice("svc-1", "1", []string{"10.0.0.1"}, nil))},
					wantChanged:   nil,
					wantEndpoints: map[ServicePortName][]string{},
				},
				{
					events:        []func(*testing.T, *Tracker){upsertService(svc("1", nil))},
					wantChanged:   []ServicePortName{http, dns},
					wantEndpoints: map[ServicePortName][]string{http: {"10.0.0.1:8080"}, dns: {"10.0.0.1:5353"}},
				},
			},
		},
		{
			name: "deleting slices one by one, the last one empties the endpoints",
			steps: []trackerStep{
				{
					events: []func(*testing.T, *Tracker){
						upsertService(svc("1", nil)),
						upsertSlice(slice("svc-1", "1", []string{"10.0.0.1"}, nil)),
						upsertSlice(slice("svc-2", "1", []string{"10.0.0.2"}, nil)),
					},
					wantChanged: []ServicePortName{http, dns},
					wantEndpoints: map[ServicePortName][]string{
						http: {"10.0.0.1:8080", "10.0.0.2:8080"}, dns: {"10.0.0.1:5353", "10.0.0.2:5353"},
					},
				},
				{
					events:        []func(*testing.T, *Tracker){deleteSlice(slice("svc-1", "1", []string{"10.0.0.1"}, nil))},
					wantChanged:   []ServicePortName{http, dns},
					wantEndpoints: map[ServicePortName][]string{http: {"10.0.0.2:8080"}, dns: {"10.0.0.2:5353"}},
				},
				{
					events:        []func(*testing.T, *Tracker){deleteSlice(slice("svc-2", "1", []string{"10.0.0.2"}, nil))},
					wantChanged:   []ServicePortName{http, dns},
					wantEndpoints: map[ServicePortName][]string{http: nil, dns: nil},
				},
			},
		},
		{
			name: "a port removed from a Service is reported and removed",
			steps: []trackerStep{
				{
					events: []func(*testing.T, *Tracker){
						upsertService(svc("1", nil)), upsertSlice(slice("svc-1", "1", []string{"10.0.0.1"}, nil)),
					},
					wantChanged:   []ServicePortName{http, dns},
					wantEndpoints: map[ServicePortName][]string{http: {"10.0.0.1:8080"}, dns: {"10.0.0.1:5353"}},
				},
				{
					events: []func(*testing.T, *Tracker){upsertService(svc("2", func(s *v1.Service) {
						s.Spec.Ports = s.Spec.Ports[:1]
					}))},
					wantChanged:   []ServicePortName{dns},
					wantEndpoints: map[ServicePortName][]string{http: {"10.0.0.1:8080"}},
				},
			},
		},
		{
			name: "a changed port number is reported for that port only",
			steps: []trackerStep{
				{
					events:        []func(*testing.T, *Tracker){upsertService(svc("1", nil))},
					wantChanged:   []ServicePortName{http, dns},
					wantEndpoints: map[ServicePortName][]string{http: nil, dns: nil},
				},
				{
					events:        []func(*testing.T, *Tracker){upsertService(svc("2", func(s *v1.Service) { s.Spec.Ports[0].Port = 8000 }))},
					wantChanged:   []ServicePortName{http},
					wantEndpoints: map[ServicePortName][]string{http: nil, dns: nil},
				},
			},
		},
		{
			name: "a Service that becomes headless loses all its ports",
			steps: []trackerStep{
				{
					events:        []func(*testing.T, *Tracker){upsertService(svc("1", nil))},
					wantChanged:   []ServicePortName{http, dns},
					wantEndpoints: map[ServicePortName][]string{http: nil, dns: nil},
				},
				{
					events: []func(*testing.T, *Tracker){upsertService(svc("2", func(s *v1.Service) {
						s.Spec.ClusterIP = v1.ClusterIPNone
						s.Spec.ClusterIPs = []string{v1.ClusterIPNone}
					}))},
					wantChanged:   []ServicePortName{http, dns},
					wantEndpoints: map[ServicePortName][]string{},
				},
			},
		},
		{
			name: "Services and slices this family does not serve are ignored",
			steps: []trackerStep{{
				events: []func(*testing.T, *Tracker){
					upsertService(makeService("v6", func(s *v1.Service) { s.Spec.ClusterIP = "fd00::1"; s.Spec.ClusterIPs = []string{"fd00::1"} })),
					upsertService(svc("1", nil)),
					upsertSlice(slice("svc-v6", "1", []string{"fd00::5"}, func(s *discovery.EndpointSlice) { s.AddressType = discovery.AddressTypeIPv6 })),
					upsertSlice(slice("no-service-label", "1", []string{"10.0.0.9"}, func(s *discovery.EndpointSlice) { s.Labels = nil })),
				},
				wantPending:   &[2]int{2, 1},
				wantChanged:   []ServicePortName{http, dns},
				wantEndpoints: map[ServicePortName][]string{http: nil, dns: nil},
			}},
		},
		{
			name: "trigger times are returned by one flush only",
			steps: []trackerStep{
				{
					events: []func(*testing.T, *Tracker){
						upsertService(svc("1", nil)),
						upsertSlice(slice("svc-1", "1", []string{"10.0.0.1"}, withTrigger(t1))),
					},
					wantChanged:   []ServicePortName{http, dns},
					wantTriggers:  []time.Time{t1},
					wantEndpoints: map[ServicePortName][]string{http: {"10.0.0.1:8080"}, dns: {"10.0.0.1:5353"}},
				},
				{
					wantEndpoints: map[ServicePortName][]string{http: {"10.0.0.1:8080"}, dns: {"10.0.0.1:5353"}},
				},
				{
					events: []func(*testing.T, *Tracker){
						upsertSlice(slice("svc-1", "2", []string{"10.0.0.2"}, withTrigger(t2))),
						upsertSlice(slice("svc-2", "1", []string{"10.0.0.3"}, withTrigger(t3))),
						// An unparsable annotation is not a trigger time.
						upsertSlice(slice("svc-3", "1", nil, func(s *discovery.EndpointSlice) {
							s.Annotations = map[string]string{v1.EndpointsLastChangeTriggerTime: "yesterday"}
						})),
					},
					wantChanged:   []ServicePortName{http, dns},
					wantTriggers:  []time.Time{t2, t3},
					wantEndpoints: map[ServicePortName][]string{http: {"10.0.0.2:8080", "10.0.0.3:8080"}, dns: {"10.0.0.2:5353", "10.0.0.3:5353"}},
				},
				{
					wantEndpoints: map[ServicePortName][]string{http: {"10.0.0.2:8080", "10.0.0.3:8080"}, dns: {"10.0.0.2:5353", "10.0.0.3:5353"}},
				},
			},
		},
		{
			name: "a node zone change sets NodeChanged for one flush",
			steps: []trackerStep{
				{
					events:          []func(*testing.T, *Tracker){updateNode(map[string]string{v1.LabelTopologyZone: "zone-a"}, true)},
					wantNodeChanged: true,
					wantZone:        "zone-a",
					wantEndpoints:   map[ServicePortName][]string{},
				},
				{
					wantZone:      "zone-a",
					wantEndpoints: map[ServicePortName][]string{},
				},
				{
					events: []func(*testing.T, *Tracker){
						updateNode(map[string]string{v1.LabelTopologyZone: "zone-a", "unrelated": "label"}, false),
					},
					wantNodeChanged: false,
					wantZone:        "zone-a",
					wantEndpoints:   map[ServicePortName][]string{},
				},
				{
					events: []func(*testing.T, *Tracker){
						updateNode(map[string]string{v1.LabelTopologyZone: "zone-b"}, true),
						updateNode(map[string]string{v1.LabelTopologyZone: "zone-b"}, false),
					},
					wantNodeChanged: true,
					wantZone:        "zone-b",
					wantEndpoints:   map[ServicePortName][]string{},
				},
				{
					wantZone:      "zone-b",
					wantEndpoints: map[ServicePortName][]string{},
				},
			},
		},
		{
			name: "field errors of Services and slices are reported through the callback",
			steps: []trackerStep{{
				events: []func(*testing.T, *Tracker){
					upsertService(svc("1", func(s *v1.Service) {
						s.Spec.ExternalIPs = []string{"192.0.2.1", "192.0.2.300"}
					})),
					upsertSlice(slice("svc-1", "1", []string{"10.0.0.1", "10.0.0"}, nil)),
				},
				wantChanged: []ServicePortName{http, dns},
				wantFieldErrors: []FieldError{
					{Object: v1.ObjectReference{APIVersion: "v1", Kind: "Service", Namespace: "ns", Name: "svc"}, Field: "spec.externalIPs[1]", Value: "192.0.2.300"},
					{Object: v1.ObjectReference{APIVersion: "discovery.k8s.io/v1", Kind: "EndpointSlice", Namespace: "ns", Name: "svc-1"}, Field: "endpoints[1].addresses[0]", Value: "10.0.0"},
				},
				wantEndpoints: map[ServicePortName][]string{http: {"10.0.0.1:8080"}, dns: {"10.0.0.1:5353"}},
			}},
		},
	}

	sortNames := cmpopts.SortSlices(func(a, b ServicePortName) bool { return a.String()+string(a.Protocol) < b.String()+string(b.Protocol) })
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			var fieldErrs []FieldError
			tr := NewTracker(IPv4, "node-a", time.Time{}, func(e FieldError) { fieldErrs = append(fieldErrs, e) })
			for i, step := range tc.steps {
				for _, ev := range step.events {
					ev(t, tr)
				}
				if step.wantPending != nil {
					svcs, eps := tr.Pending()
					if got := [2]int{svcs, eps}; got != *step.wantPending {
						t.Errorf("step %d: Pending() = %v, want %v", i, got, *step.wantPending)
					}
				}
				res := tr.Flush()

				if diff := cmp.Diff(step.wantChanged, slices.Collect(maps.Keys(res.Changed)), sortNames, cmpopts.EquateEmpty()); diff != "" {
					t.Errorf("step %d: Changed mismatch (-want +got):\n%s", i, diff)
				}
				if res.NodeChanged != step.wantNodeChanged {
					t.Errorf("step %d: NodeChanged = %v, want %v", i, res.NodeChanged, step.wantNodeChanged)
				}
				sortTimes := cmpopts.SortSlices(func(a, b time.Time) bool { return a.Before(b) })
				if diff := cmp.Diff(step.wantTriggers, res.TriggerTimes, sortTimes, cmpopts.EquateEmpty()); diff != "" {
					t.Errorf("step %d: TriggerTimes mismatch (-want +got):\n%s", i, diff)
				}
				if diff := cmp.Diff(step.wantFieldErrors, fieldErrs, fieldErrorOpts); diff != "" {
					t.Errorf("step %d: field errors mismatch (-want +got):\n%s", i, diff)
				}
				fieldErrs = nil

				if diff := cmp.Diff(step.wantEndpoints, renderState(t, res.State), cmpopts.EquateEmpty()); diff != "" {
					t.Errorf("step %d: State mismatch (-want +got):\n%s", i, diff)
				}
				if got := res.State.NodeLabels[v1.LabelTopologyZone]; got != step.wantZone {
					t.Errorf("step %d: State.NodeLabels zone = %q, want %q", i, got, step.wantZone)
				}
				if svcs, eps := tr.Pending(); svcs != 0 || eps != 0 {
					t.Errorf("step %d: Pending() after Flush = %d, %d, want 0, 0", i, svcs, eps)
				}
			}
		})
	}
}

// renderState flattens State into ServicePortName → ["ip:port", ...], checking that it is
// consistent: endpoints only for known ServicePorts, and ServicePorts keyed by their name.
func renderState(t *testing.T, st *State) map[ServicePortName][]string {
	t.Helper()
	out := map[ServicePortName][]string{}
	for name, sp := range st.Services {
		if sp.Name != name {
			t.Errorf("State.Services[%v] holds ServicePort %v", name, sp.Name)
		}
		var eps []string
		for _, e := range st.Endpoints[name] {
			eps = append(eps, e.String())
		}
		out[name] = eps
	}
	for name := range st.Endpoints {
		if _, ok := st.Services[name]; !ok {
			t.Errorf("State.Endpoints holds %v, which is not in State.Services", name)
		}
	}
	return out
}

// The state a Flush returns reflects the Service as it was at the flush, even when the
// informer's object is later replaced: the tracker must not lose a change that arrives
// between two flushes while the first one is being synced.
func TestTrackerEventsDuringSync(t *testing.T) {
	tr := NewTracker(IPv4, "node-a", time.Time{}, nil)
	tr.OnServiceUpdate(makeService("svc", nil))
	first := tr.Flush()
	if len(first.Changed) != 1 {
		t.Fatalf("first Flush changed %v, want one port", first.Changed)
	}
	// An event arrives after the flush (while the backend would be syncing).
	tr.OnEndpointSliceUpdate(makeSlice("svc", "svc-1", []discovery.Endpoint{readyEndpoint("10.0.0.1", "")}, nil))
	second := tr.Flush()
	name := spn("svc", "http", v1.ProtocolTCP)
	if _, ok := second.Changed[name]; !ok || len(second.Changed) != 1 {
		t.Errorf("second Flush changed %v, want only %v", second.Changed, name)
	}
	if got := len(second.State.Endpoints[name]); got != 1 {
		t.Errorf("second Flush has %d endpoints for %v, want 1", got, name)
	}
}
