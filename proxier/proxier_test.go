package proxier

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/prometheus/client_golang/prometheus"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	testingclock "k8s.io/utils/clock/testing"
)

// fakeBackend records what each Sync was asked to do and fails when told to.
type fakeBackend struct {
	calls []fakeSyncCall
	// errs are returned by successive Sync calls (nil once exhausted).
	errs []error
	// clock and took, when set, make each Sync take that long on the clock.
	clock *testingclock.FakeClock
	took  time.Duration
}

type fakeSyncCall struct {
	full    bool
	changed []ServicePortName
	// services are the ServicePorts in State at the time of the call.
	services []ServicePortName
}

func (b *fakeBackend) Name() string { return "fake" }

func (b *fakeBackend) Sync(_ context.Context, state *State, changes Changes) error {
	b.calls = append(b.calls, fakeSyncCall{
		full:     changes.Full,
		changed:  slices.Collect(maps.Keys(changes.ServicePorts)),
		services: slices.Collect(maps.Keys(state.Services)),
	})
	if b.clock != nil {
		b.clock.Step(b.took)
	}
	if len(b.errs) == 0 {
		return nil
	}
	err := b.errs[0]
	b.errs = b.errs[1:]
	return err
}

const (
	testSyncPeriod    = time.Hour
	testHealthTimeout = 2 * testSyncPeriod
)

type testProxier struct {
	t       *testing.T
	p       *Proxier
	backend *fakeBackend
	reg     *prometheus.Registry
	clk     *testingclock.FakeClock
	health  *Health
}

func newTestProxier(t *testing.T) *testProxier {
	t.Helper()
	tp := &testProxier{
		t:       t,
		backend: &fakeBackend{},
		reg:     prometheus.NewRegistry(),
		clk:     testingclock.NewFakeClock(testTime),
	}
	tp.health = NewHealth(IPv4, tp.clk, testHealthTimeout)
	tp.p = New(Options{
		Backend:       tp.backend,
		Family:        IPv4,
		NodeName:      "node-a",
		MinSyncPeriod: time.Second,
		SyncPeriod:    testSyncPeriod,
		Metrics:       NewMetrics(tp.reg).For(IPv4),
		Health:        tp.health,
		Clock:         tp.clk,
	})
	// The tests call sync directly instead of running the loop.
	tp.p.start(context.Background())
	return tp
}

// proxierEvent changes the world between syncs.
type proxierEvent func(tp *testProxier)

func svcEvent(svc *v1.Service) proxierEvent {
	return func(tp *testProxier) { tp.p.Tracker().OnServiceUpdate(svc); tp.p.Changed() }
}

func svcDeleteEvent(svc *v1.Service) proxierEvent {
	return func(tp *testProxier) { tp.p.Tracker().OnServiceDelete(svc); tp.p.Changed() }
}

func sliceEvent(s *discovery.EndpointSlice) proxierEvent {
	return func(tp *testProxier) { tp.p.Tracker().OnEndpointSliceUpdate(s); tp.p.Changed() }
}

func nodeEvent(zone string) proxierEvent {
	return func(tp *testProxier) {
		node := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a", Labels: map[string]string{v1.LabelTopologyZone: zone}}}
		if tp.p.Tracker().OnNodeUpdate(node) {
			tp.p.Changed()
		}
	}
}

func initialized() proxierEvent { return func(tp *testProxier) { tp.p.SetInitialized() } }

func clockStep(d time.Duration) proxierEvent { return func(tp *testProxier) { tp.clk.Step(d) } }

// proxierStep applies events, makes the backend return err after took, runs one sync and
// checks it.
type proxierStep struct {
	events []proxierEvent
	err    error
	took   time.Duration

	// wantCall is the backend call this sync must make (nil: no call).
	wantCall *fakeSyncCall
	// Cumulative metric values after the sync.
	wantFailures      float64
	wantFullSyncs     uint64
	wantPartialSyncs  uint64
	wantProgramming   uint64  // observations of network_programming_duration_seconds
	wantProgrammingS  float64 // their sum, in seconds
	wantInvalidFields float64
	wantHealthy       bool
}

func TestProxierSync(t *testing.T) {
	errBackend := errors.New("restore failed")
	a := makeService("a", nil)
	b := makeService("b", func(s *v1.Service) { s.Spec.ClusterIP = "10.96.0.2"; s.Spec.ClusterIPs = []string{"10.96.0.2"} })
	bMoved := makeService("b", func(s *v1.Service) {
		s.ResourceVersion = "2"
		s.Spec.ClusterIP = "10.96.0.2"
		s.Spec.ClusterIPs = []string{"10.96.0.2"}
		s.Spec.Ports[0].Port = 8000
	})
	aHTTP := spn("a", "http", v1.ProtocolTCP)
	bHTTP := spn("b", "http", v1.ProtocolTCP)
	sliceWithTrigger := func(svc, name string, ip string, trigger time.Time, tweak func(*discovery.EndpointSlice)) *discovery.EndpointSlice {
		return makeSlice(svc, name, []discovery.Endpoint{readyEndpoint(ip, "")}, func(s *discovery.EndpointSlice) {
			s.Annotations = map[string]string{v1.EndpointsLastChangeTriggerTime: trigger.Format(time.RFC3339Nano)}
			if tweak != nil {
				tweak(s)
			}
		})
	}

	testCases := []struct {
		name string
		// fullSyncPeriod is the proxier's FullSyncPeriod (0: SyncPeriod).
		fullSyncPeriod time.Duration
		steps          []proxierStep
	}{
		{
			name: "no backend sync before initialization; the first one after is full",
			steps: []proxierStep{
				{
					events:      []proxierEvent{svcEvent(a), svcEvent(b)},
					wantCall:    nil,
					wantHealthy: true,
				},
				{
					events:        []proxierEvent{initialized()},
					wantCall:      &fakeSyncCall{full: true, changed: []ServicePortName{aHTTP, bHTTP}, services: []ServicePortName{aHTTP, bHTTP}},
					wantFullSyncs: 1,
					wantHealthy:   true,
				},
			},
		},
		{
			name: "a later change gives a partial sync of only the changed ServicePort",
			steps: []proxierStep{
				{
					events:        []proxierEvent{svcEvent(a), svcEvent(b), initialized()},
					wantCall:      &fakeSyncCall{full: true, changed: []ServicePortName{aHTTP, bHTTP}, services: []ServicePortName{aHTTP, bHTTP}},
					wantFullSyncs: 1,
					wantHealthy:   true,
				},
				{
					events:           []proxierEvent{clockStep(time.Second), svcEvent(bMoved)},
					wantCall:         &fakeSyncCall{full: false, changed: []ServicePortName{bHTTP}, services: []ServicePortName{aHTTP, bHTTP}},
					wantFullSyncs:    1,
					wantPartialSyncs: 1,
					wantHealthy:      true,
				},
				{
					events:           []proxierEvent{clockStep(time.Second), svcDeleteEvent(a)},
					wantCall:         &fakeSyncCall{full: false, changed: []ServicePortName{aHTTP}, services: []ServicePortName{bHTTP}},
					wantFullSyncs:    1,
					wantPartialSyncs: 2,
					wantHealthy:      true,
				},
			},
		},
		{
			name: "nothing changed: no backend call, but a partial sync all the same, as kube-proxy counts its periodic syncs",
			steps: []proxierStep{
				{
					events:        []proxierEvent{svcEvent(a), initialized()},
					wantCall:      &fakeSyncCall{full: true, changed: []ServicePortName{aHTTP}, services: []ServicePortName{aHTTP}},
					wantFullSyncs: 1,
					wantHealthy:   true,
				},
				{
					events:           []proxierEvent{clockStep(time.Minute)},
					wantFullSyncs:    1,
					wantPartialSyncs: 1,
					wantHealthy:      true,
				},
				{
					events: []proxierEvent{clockStep(time.Minute), svcEvent(makeService("a", func(s *v1.Service) {
						s.ResourceVersion = "2"
						s.Annotations = map[string]string{"example.com/touched": "yes"}
					}))},
					wantFullSyncs:    1,
					wantPartialSyncs: 2,
					wantHealthy:      true,
				},
			},
		},
		{
			name: "periodic full sync once SyncPeriod has passed, even without changes",
			steps: []proxierStep{
				{
					events:        []proxierEvent{svcEvent(a), initialized()},
					wantCall:      &fakeSyncCall{full: true, changed: []ServicePortName{aHTTP}, services: []ServicePortName{aHTTP}},
					wantFullSyncs: 1,
					wantHealthy:   true,
				},
				{
					events:           []proxierEvent{clockStep(testSyncPeriod - time.Second)},
					wantFullSyncs:    1,
					wantPartialSyncs: 1,
					wantHealthy:      true,
				},
				{
					events:           []proxierEvent{clockStep(time.Second)},
					wantCall:         &fakeSyncCall{full: true, services: []ServicePortName{aHTTP}},
					wantFullSyncs:    2,
					wantPartialSyncs: 1,
					wantHealthy:      true,
				},
			},
		},
		{
			// iptables mode: periodic syncs apply what changed, and rewrite everything
			// only once FullSyncPeriod has passed.
			name:           "with a FullSyncPeriod, syncs are partial until it has passed",
			fullSyncPeriod: 3 * testSyncPeriod,
			steps: []proxierStep{
				{
					events:        []proxierEvent{svcEvent(a), initialized()},
					wantCall:      &fakeSyncCall{full: true, changed: []ServicePortName{aHTTP}, services: []ServicePortName{aHTTP}},
					wantFullSyncs: 1,
					wantHealthy:   true,
				},
				{
					events:           []proxierEvent{clockStep(testSyncPeriod)},
					wantFullSyncs:    1,
					wantPartialSyncs: 1,
					wantHealthy:      true,
				},
				{
					events:           []proxierEvent{clockStep(testSyncPeriod), svcEvent(b)},
					wantCall:         &fakeSyncCall{full: false, changed: []ServicePortName{bHTTP}, services: []ServicePortName{aHTTP, bHTTP}},
					wantFullSyncs:    1,
					wantPartialSyncs: 2,
					wantHealthy:      true,
				},
				{
					events:           []proxierEvent{clockStep(testSyncPeriod)},
					wantCall:         &fakeSyncCall{full: true, services: []ServicePortName{aHTTP, bHTTP}},
					wantFullSyncs:    2,
					wantPartialSyncs: 2,
					wantHealthy:      true,
				},
			},
		},
		{
			// A full sync that outlasts the period must not make the next sync full too:
			// every sync would then be one, and each change would wait for it.
			name: "the period runs from the end of the last full sync",
			steps: []proxierStep{
				{
					events:        []proxierEvent{svcEvent(a), initialized()},
					took:          testSyncPeriod + time.Minute,
					wantCall:      &fakeSyncCall{full: true, changed: []ServicePortName{aHTTP}, services: []ServicePortName{aHTTP}},
					wantFullSyncs: 1,
					wantHealthy:   true,
				},
				{
					events:           []proxierEvent{svcEvent(b)},
					wantCall:         &fakeSyncCall{full: false, changed: []ServicePortName{bHTTP}, services: []ServicePortName{aHTTP, bHTTP}},
					wantFullSyncs:    1,
					wantPartialSyncs: 1,
					wantHealthy:      true,
				},
				{
					events:           []proxierEvent{clockStep(testSyncPeriod)},
					wantCall:         &fakeSyncCall{full: true, services: []ServicePortName{aHTTP, bHTTP}},
					wantFullSyncs:    2,
					wantPartialSyncs: 1,
					wantHealthy:      true,
				},
			},
		},
		{
			name: "a node zone change forces a full sync",
			steps: []proxierStep{
				{
					events:        []proxierEvent{svcEvent(a), nodeEvent("zone-a"), initialized()},
					wantCall:      &fakeSyncCall{full: true, changed: []ServicePortName{aHTTP}, services: []ServicePortName{aHTTP}},
					wantFullSyncs: 1,
					wantHealthy:   true,
				},
				{
					events:        []proxierEvent{clockStep(time.Second), nodeEvent("zone-b")},
					wantCall:      &fakeSyncCall{full: true, services: []ServicePortName{aHTTP}},
					wantFullSyncs: 2,
					wantHealthy:   true,
				},
			},
		},
		{
			name: "a backend error counts a failure and makes the next sync full",
			steps: []proxierStep{
				{
					events:        []proxierEvent{svcEvent(a), svcEvent(b), initialized()},
					wantCall:      &fakeSyncCall{full: true, changed: []ServicePortName{aHTTP, bHTTP}, services: []ServicePortName{aHTTP, bHTTP}},
					wantFullSyncs: 1,
					wantHealthy:   true,
				},
				{
					events:           []proxierEvent{clockStep(time.Second), svcEvent(bMoved)},
					err:              errBackend,
					wantCall:         &fakeSyncCall{full: false, changed: []ServicePortName{bHTTP}, services: []ServicePortName{aHTTP, bHTTP}},
					wantFailures:     1,
					wantFullSyncs:    1,
					wantPartialSyncs: 1,
					wantHealthy:      true,
				},
				{
					// No new event: the change flushed by the failed sync must still be
					// written, and only a full sync can be sure to do it.
					events:           []proxierEvent{clockStep(time.Second)},
					wantCall:         &fakeSyncCall{full: true, services: []ServicePortName{aHTTP, bHTTP}},
					wantFailures:     1,
					wantFullSyncs:    2,
					wantPartialSyncs: 1,
					wantHealthy:      true,
				},
				{
					events:           []proxierEvent{clockStep(time.Second), svcDeleteEvent(a)},
					wantCall:         &fakeSyncCall{full: false, changed: []ServicePortName{aHTTP}, services: []ServicePortName{bHTTP}},
					wantFailures:     1,
					wantFullSyncs:    2,
					wantPartialSyncs: 2,
					wantHealthy:      true,
				},
			},
		},
		{
			name: "a failing first sync is retried as a full sync; failures turn health red after the timeout",
			steps: []proxierStep{
				{
					events:        []proxierEvent{svcEvent(a), initialized()},
					err:           errBackend,
					wantCall:      &fakeSyncCall{full: true, changed: []ServicePortName{aHTTP}, services: []ServicePortName{aHTTP}},
					wantFailures:  1,
					wantFullSyncs: 1,
					wantHealthy:   true,
				},
				{
					events:        []proxierEvent{clockStep(testHealthTimeout + time.Second)},
					err:           errBackend,
					wantCall:      &fakeSyncCall{full: true, services: []ServicePortName{aHTTP}},
					wantFailures:  2,
					wantFullSyncs: 2,
					wantHealthy:   false,
				},
				{
					events:        []proxierEvent{clockStep(time.Second)},
					wantCall:      &fakeSyncCall{full: true, services: []ServicePortName{aHTTP}},
					wantFailures:  2,
					wantFullSyncs: 3,
					wantHealthy:   true,
				},
			},
		},
		{
			name: "field errors are counted",
			steps: []proxierStep{{
				events: []proxierEvent{
					svcEvent(makeService("a", func(s *v1.Service) { s.Spec.ExternalIPs = []string{"192.0.2.1", "bogus"} })),
					initialized(),
				},
				wantCall:          &fakeSyncCall{full: true, changed: []ServicePortName{aHTTP}, services: []ServicePortName{aHTTP}},
				wantFullSyncs:     1,
				wantInvalidFields: 1,
				wantHealthy:       true,
			}},
		},
		{
			name: "network programming latency is observed when a slice with a trigger time is synced",
			steps: []proxierStep{
				{
					events:        []proxierEvent{svcEvent(a), initialized()},
					wantCall:      &fakeSyncCall{full: true, changed: []ServicePortName{aHTTP}, services: []ServicePortName{aHTTP}},
					wantFullSyncs: 1,
					wantHealthy:   true,
				},
				{
					// The pod changed at testTime+10s; the sync happens 3s later.
					events: []proxierEvent{
						clockStep(10 * time.Second),
						sliceEvent(sliceWithTrigger("a", "a-1", "10.0.0.1", testTime.Add(10*time.Second), nil)),
						clockStep(3 * time.Second),
					},
					wantCall:         &fakeSyncCall{full: false, changed: []ServicePortName{aHTTP}, services: []ServicePortName{aHTTP}},
					wantFullSyncs:    1,
					wantPartialSyncs: 1,
					wantProgramming:  1,
					wantProgrammingS: 3,
					wantHealthy:      true,
				},
				{
					// Observed once only: neither an idle sync nor the next real one repeats it.
					events:           []proxierEvent{clockStep(time.Second)},
					wantFullSyncs:    1,
					wantPartialSyncs: 2,
					wantProgramming:  1,
					wantProgrammingS: 3,
					wantHealthy:      true,
				},
				{
					events:           []proxierEvent{clockStep(time.Second), svcEvent(b)},
					wantCall:         &fakeSyncCall{full: false, changed: []ServicePortName{bHTTP}, services: []ServicePortName{aHTTP, bHTTP}},
					wantFullSyncs:    1,
					wantPartialSyncs: 3,
					wantProgramming:  1,
					wantProgrammingS: 3,
					wantHealthy:      true,
				},
			},
		},
		{
			name: "network programming latency waits for a successful sync",
			steps: []proxierStep{
				{
					events:        []proxierEvent{svcEvent(a), initialized()},
					wantCall:      &fakeSyncCall{full: true, changed: []ServicePortName{aHTTP}, services: []ServicePortName{aHTTP}},
					wantFullSyncs: 1,
					wantHealthy:   true,
				},
				{
					events: []proxierEvent{
						sliceEvent(sliceWithTrigger("a", "a-1", "10.0.0.1", testTime, nil)),
						clockStep(time.Second),
					},
					err:              errBackend,
					wantCall:         &fakeSyncCall{full: false, changed: []ServicePortName{aHTTP}, services: []ServicePortName{aHTTP}},
					wantFailures:     1,
					wantFullSyncs:    1,
					wantPartialSyncs: 1,
					wantHealthy:      true,
				},
				{
					events:           []proxierEvent{clockStep(2 * time.Second)},
					wantCall:         &fakeSyncCall{full: true, services: []ServicePortName{aHTTP}},
					wantFailures:     1,
					wantFullSyncs:    2,
					wantPartialSyncs: 1,
					wantProgramming:  1,
					wantProgrammingS: 3,
					wantHealthy:      true,
				},
			},
		},
		{
			// Only a change that needs programming has a programming latency: a trigger
			// time on a slice of the other IP family is never observed (kube-proxy
			// records trigger times only when a change is needed).
			name: "a trigger time of a slice this proxier does not program is not observed later",
			steps: []proxierStep{
				{
					events:        []proxierEvent{svcEvent(a), svcEvent(b), initialized()},
					wantCall:      &fakeSyncCall{full: true, changed: []ServicePortName{aHTTP, bHTTP}, services: []ServicePortName{aHTTP, bHTTP}},
					wantFullSyncs: 1,
					wantHealthy:   true,
				},
				{
					events: []proxierEvent{sliceEvent(sliceWithTrigger("a", "a-v6", "fd00::1", testTime, func(s *discovery.EndpointSlice) {
						s.AddressType = discovery.AddressTypeIPv6
					}))},
					wantFullSyncs:    1,
					wantPartialSyncs: 1,
					wantHealthy:      true,
				},
				{
					events:           []proxierEvent{clockStep(10 * time.Minute), svcEvent(bMoved)},
					wantCall:         &fakeSyncCall{full: false, changed: []ServicePortName{bHTTP}, services: []ServicePortName{aHTTP, bHTTP}},
					wantFullSyncs:    1,
					wantPartialSyncs: 2,
					wantProgramming:  0,
					wantProgrammingS: 0,
					wantHealthy:      true,
				},
			},
		},
		{
			// The initial list delivers slices with the trigger times of changes made
			// long before this proxy started; those are not its latency (kube-proxy
			// ignores trigger times from before its tracker started).
			name: "trigger times from before the proxier started are not observed",
			steps: []proxierStep{{
				events: []proxierEvent{
					svcEvent(a),
					sliceEvent(sliceWithTrigger("a", "a-1", "10.0.0.1", testTime.Add(-72*time.Hour), nil)),
					initialized(),
				},
				wantCall:      &fakeSyncCall{full: true, changed: []ServicePortName{aHTTP}, services: []ServicePortName{aHTTP}},
				wantFullSyncs: 1,
				wantHealthy:   true,
			}},
		},
	}

	sortNames := cmpopts.SortSlices(func(a, b ServicePortName) bool { return a.String()+string(a.Protocol) < b.String()+string(b.Protocol) })
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			tp := newTestProxier(t)
			tp.p.opts.FullSyncPeriod = tc.fullSyncPeriod
			for i, step := range tc.steps {
				for _, ev := range step.events {
					ev(tp)
				}
				tp.backend.errs = []error{step.err}
				tp.backend.clock, tp.backend.took = tp.clk, step.took
				callsBefore := len(tp.backend.calls)

				err := tp.p.sync()

				var got *fakeSyncCall
				switch n := len(tp.backend.calls) - callsBefore; n {
				case 0:
				case 1:
					got = &tp.backend.calls[callsBefore]
				default:
					t.Fatalf("step %d: one sync made %d backend calls", i, n)
				}
				if diff := cmp.Diff(step.wantCall, got, cmp.AllowUnexported(fakeSyncCall{}), sortNames, cmpopts.EquateEmpty()); diff != "" {
					t.Errorf("step %d: backend call mismatch (-want +got):\n%s", i, diff)
				}
				if wantErr := got != nil && step.err != nil; (err != nil) != wantErr {
					t.Errorf("step %d: sync() error = %v, want error: %v", i, err, wantErr)
				} else if err != nil && !errors.Is(err, step.err) {
					t.Errorf("step %d: sync() error = %v, want it to wrap %v", i, err, step.err)
				}

				if got := counterValue(t, tp.reg, "switchyard_sync_proxy_rules_failures_total"); got != step.wantFailures {
					t.Errorf("step %d: switchyard_sync_proxy_rules_failures_total = %v, want %v", i, got, step.wantFailures)
				}
				if got := counterValue(t, tp.reg, "switchyard_invalid_object_fields_total"); got != step.wantInvalidFields {
					t.Errorf("step %d: switchyard_invalid_object_fields_total = %v, want %v", i, got, step.wantInvalidFields)
				}
				if n, _ := histogramSample(t, tp.reg, "kubeproxy_sync_full_proxy_rules_duration_seconds"); n != step.wantFullSyncs {
					t.Errorf("step %d: full sync duration observations = %d, want %d", i, n, step.wantFullSyncs)
				}
				if n, _ := histogramSample(t, tp.reg, "kubeproxy_sync_partial_proxy_rules_duration_seconds"); n != step.wantPartialSyncs {
					t.Errorf("step %d: partial sync duration observations = %d, want %d", i, n, step.wantPartialSyncs)
				}
				if n, _ := histogramSample(t, tp.reg, "kubeproxy_sync_proxy_rules_duration_seconds"); n != step.wantFullSyncs+step.wantPartialSyncs {
					t.Errorf("step %d: sync duration observations = %d, want %d", i, n, step.wantFullSyncs+step.wantPartialSyncs)
				}
				n, sum := histogramSample(t, tp.reg, "kubeproxy_network_programming_duration_seconds")
				if n != step.wantProgramming || math.Abs(sum-step.wantProgrammingS) > 1e-9 {
					t.Errorf("step %d: network programming duration = %d observations summing to %vs, want %d summing to %vs",
						i, n, sum, step.wantProgramming, step.wantProgrammingS)
				}
				if healthy, _ := tp.health.Healthy(); healthy != step.wantHealthy {
					t.Errorf("step %d: Healthy() = %v, want %v", i, healthy, step.wantHealthy)
				}
				svcs := counterValue(t, tp.reg, "kubeproxy_sync_proxy_rules_service_changes_pending")
				eps := counterValue(t, tp.reg, "kubeproxy_sync_proxy_rules_endpoint_changes_pending")
				if tp.p.initialized.Load() && (svcs != 0 || eps != 0) {
					t.Errorf("step %d: pending changes after sync = %v services, %v endpoints, want 0", i, svcs, eps)
				}
			}
		})
	}
}

// eventLog records the Events a proxier records, as "Kind namespace/name reason note".
type eventLog struct{ events []string }

func (l *eventLog) Eventf(regarding runtime.Object, _ runtime.Object, eventtype, reason, _, note string, args ...any) {
	ref := regarding.(*v1.ObjectReference)
	l.events = append(l.events, fmt.Sprintf("%s %s/%s %s %s %s", ref.Kind, ref.Namespace, ref.Name, eventtype, reason, fmt.Sprintf(note, args...)))
}

// TestProxierPortErrors: when the backend reports that the kernel refused the rules of
// some ports only, the sync counts as done for the rest (no failure, no forced full
// sync, health green), each refused port gets an Event on its Service and a series of
// switchyard_sync_proxy_rules_service_port_failing, and every following sync retries
// it until it goes in.
func TestProxierPortErrors(t *testing.T) {
	refused := errors.New(`iptables-restore refused line 12: Couldn't load target "SWYD-MISSING"`)
	a, b, c := makeService("a", nil), makeService("b", nil), makeService("c", nil)
	aHTTP, bHTTP, cHTTP := spn("a", "http", v1.ProtocolTCP), spn("b", "http", v1.ProtocolTCP), spn("c", "http", v1.ProtocolTCP)
	bEvent := `Service ns/b Warning FailedToProgram The IPv4 fake rules of port http/TCP could not be applied on node node-a, retrying: ` + refused.Error()

	type step struct {
		events []proxierEvent
		err    error // what the backend returns
		// wantCall is the backend call this sync must make (nil: none).
		wantCall *fakeSyncCall
		// wantErr is whether sync() returns an error, for the runner to retry.
		wantErr      bool
		wantFailures float64
		// wantFailing are the ports with a failing series after the sync.
		wantFailing []ServicePortName
		wantEvents  []string // recorded by this sync
	}
	// firstRefused is a first (full) sync in which the kernel refuses b.
	firstRefused := step{
		events:      []proxierEvent{svcEvent(a), svcEvent(b), initialized()},
		err:         PortErrors{bHTTP: refused},
		wantCall:    &fakeSyncCall{full: true, changed: []ServicePortName{aHTTP, bHTTP}, services: []ServicePortName{aHTTP, bHTTP}},
		wantErr:     true,
		wantFailing: []ServicePortName{bHTTP},
		wantEvents:  []string{bEvent},
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{
			name: "a refused port is retried by every following sync until it goes in; health stays green",
			steps: []step{
				firstRefused,
				{
					// Past the health timeout (and so a periodic full sync): the other
					// Services are programmed, so the node is healthy.
					events:      []proxierEvent{clockStep(testHealthTimeout + time.Second)},
					err:         PortErrors{bHTTP: refused},
					wantCall:    &fakeSyncCall{full: true, changed: []ServicePortName{bHTTP}, services: []ServicePortName{aHTTP, bHTTP}},
					wantErr:     true,
					wantFailing: []ServicePortName{bHTTP},
					wantEvents:  []string{bEvent},
				},
				{
					events:   []proxierEvent{clockStep(time.Second), svcEvent(c)},
					wantCall: &fakeSyncCall{changed: []ServicePortName{bHTTP, cHTTP}, services: []ServicePortName{aHTTP, bHTTP, cHTTP}},
				},
				{
					events: []proxierEvent{clockStep(time.Second)}, // nothing left to retry
				},
			},
		},
		{
			name: "a refused port deleted is retried as deleted, and its series goes",
			steps: []step{
				{
					events:      []proxierEvent{svcEvent(a), svcEvent(b), initialized()},
					err:         fmt.Errorf("partial sync: %w", PortErrors{bHTTP: refused}),
					wantCall:    &fakeSyncCall{full: true, changed: []ServicePortName{aHTTP, bHTTP}, services: []ServicePortName{aHTTP, bHTTP}},
					wantErr:     true,
					wantFailing: []ServicePortName{bHTTP},
					wantEvents:  []string{bEvent},
				},
				{
					events:   []proxierEvent{clockStep(time.Second), svcDeleteEvent(b)},
					wantCall: &fakeSyncCall{changed: []ServicePortName{bHTTP}, services: []ServicePortName{aHTTP}},
				},
			},
		},
		{
			name: "a whole failure keeps the refused port for the full sync that follows",
			steps: []step{
				firstRefused,
				{
					events:       []proxierEvent{clockStep(time.Second)},
					err:          errors.New("xtables lock held"),
					wantCall:     &fakeSyncCall{changed: []ServicePortName{bHTTP}, services: []ServicePortName{aHTTP, bHTTP}},
					wantErr:      true,
					wantFailures: 1,
					wantFailing:  []ServicePortName{bHTTP},
				},
				{
					events:       []proxierEvent{clockStep(time.Second)},
					wantCall:     &fakeSyncCall{full: true, changed: []ServicePortName{bHTTP}, services: []ServicePortName{aHTTP, bHTTP}},
					wantFailures: 1,
				},
			},
		},
		{
			// Something besides the ports failed, so nothing can be taken as done.
			name: "port errors joined with another error are a failed sync",
			steps: []step{
				{
					events:       []proxierEvent{svcEvent(a), svcEvent(b), initialized()},
					err:          errors.Join(errors.New("listing virtual servers"), PortErrors{bHTTP: refused}),
					wantCall:     &fakeSyncCall{full: true, changed: []ServicePortName{aHTTP, bHTTP}, services: []ServicePortName{aHTTP, bHTTP}},
					wantErr:      true,
					wantFailures: 1,
				},
				{
					events:       []proxierEvent{clockStep(time.Second)},
					wantCall:     &fakeSyncCall{full: true, services: []ServicePortName{aHTTP, bHTTP}},
					wantFailures: 1,
				},
			},
		},
	}
	sortNames := cmpopts.SortSlices(func(a, b ServicePortName) bool { return a.Compare(b) < 0 })
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tp := newTestProxier(t)
			events := &eventLog{}
			tp.p.opts.Events = events
			for i, step := range tc.steps {
				for _, ev := range step.events {
					ev(tp)
				}
				tp.backend.errs = []error{step.err}
				callsBefore, eventsBefore := len(tp.backend.calls), len(events.events)

				err := tp.p.sync()

				var got *fakeSyncCall
				if len(tp.backend.calls) > callsBefore {
					got = &tp.backend.calls[callsBefore]
				}
				if diff := cmp.Diff(step.wantCall, got, cmp.AllowUnexported(fakeSyncCall{}), sortNames, cmpopts.EquateEmpty()); diff != "" {
					t.Errorf("step %d: backend call (-want +got):\n%s", i, diff)
				}
				// A PortErrors is a map, which errors.Is cannot compare: the message tells.
				if (err != nil) != step.wantErr || (err != nil && !strings.Contains(err.Error(), step.err.Error())) {
					t.Errorf("step %d: sync() = %v, want an error: %v (wrapping %v)", i, err, step.wantErr, step.err)
				}
				if got := counterValue(t, tp.reg, "switchyard_sync_proxy_rules_failures_total"); got != step.wantFailures {
					t.Errorf("step %d: switchyard_sync_proxy_rules_failures_total = %v, want %v", i, got, step.wantFailures)
				}
				if diff := cmp.Diff(step.wantFailing, failingSeries(t, tp.reg), sortNames, cmpopts.EquateEmpty()); diff != "" {
					t.Errorf("step %d: switchyard_sync_proxy_rules_service_port_failing series (-want +got):\n%s", i, diff)
				}
				if diff := cmp.Diff(step.wantEvents, events.events[eventsBefore:], cmpopts.EquateEmpty()); diff != "" {
					t.Errorf("step %d: Events (-want +got):\n%s", i, diff)
				}
				if healthy, _ := tp.health.Healthy(); !healthy {
					t.Errorf("step %d: unhealthy", i)
				}
			}
		})
	}
}

// failingSeries lists the ports switchyard_sync_proxy_rules_service_port_failing has a
// series of value 1 for, in the IPv4 family.
func failingSeries(t *testing.T, reg *prometheus.Registry) []ServicePortName {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	var out []ServicePortName
	for _, mf := range mfs {
		if mf.GetName() != "switchyard_sync_proxy_rules_service_port_failing" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["ip_family"] != "IPv4" || m.GetGauge().GetValue() != 1 {
				t.Errorf("unexpected series %v = %v", labels, m.GetGauge().GetValue())
			}
			out = append(out, spn(labels["service"], labels["port"], v1.ProtocolTCP))
		}
	}
	return out
}
