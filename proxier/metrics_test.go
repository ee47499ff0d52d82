package proxier

import (
	"context"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	testingclock "k8s.io/utils/clock/testing"

	"github.com/switchyard/switchyard/internal/metricstest"
)

// The pending-change gauges show what the trackers hold that no sync has taken, so that
// a stuck loop is visible; with a proxier per family, the family furthest behind,
// whichever syncs first.
func TestPendingChangeGauges(t *testing.T) {
	for _, first := range []Family{IPv4, IPv6} {
		t.Run(first.String()+" syncs first", func(t *testing.T) {
			reg := prometheus.NewRegistry()
			metrics := NewMetrics(reg)
			clk := testingclock.NewFakeClock(testTime)
			proxiers := map[Family]*Proxier{}
			for _, family := range []Family{IPv4, IPv6} {
				p := New(Options{Backend: &fakeBackend{}, Family: family, NodeName: "node-a", SyncPeriod: testSyncPeriod,
					Metrics: metrics.For(family), Health: NewHealth(family, clk, testHealthTimeout), Clock: clk})
				p.start(context.Background())
				p.Tracker().OnServiceUpdate(makeService("a", nil))
				p.Tracker().OnServiceUpdate(makeService("b", nil))
				p.Tracker().OnEndpointSliceUpdate(makeSlice("a", "a-1", nil, nil))
				p.SetInitialized()
				proxiers[family] = p
			}
			second := IPv4 + IPv6 - first
			pending := func() [2]float64 {
				return [2]float64{
					counterValue(t, reg, "kubeproxy_sync_proxy_rules_service_changes_pending"),
					counterValue(t, reg, "kubeproxy_sync_proxy_rules_endpoint_changes_pending"),
				}
			}
			if got, want := pending(), [2]float64{2, 1}; got != want {
				t.Errorf("pending (services, endpoints) = %v, want %v", got, want)
			}
			if err := proxiers[first].sync(); err != nil {
				t.Fatal(err)
			}
			if got, want := pending(), [2]float64{2, 1}; got != want {
				t.Errorf("after one family's sync, pending = %v, want the other's %v", got, want)
			}
			if err := proxiers[second].sync(); err != nil {
				t.Fatal(err)
			}
			if got, want := pending(), [2]float64{0, 0}; got != want {
				t.Errorf("after both syncs, pending = %v, want %v", got, want)
			}
		})
	}
}

// Each family's proxier has its own series of the loop (ip_family), as kube-proxy's has,
// and the two share the process's change counters, which have no ip_family.
func TestMetricsPerFamily(t *testing.T) {
	reg := prometheus.NewRegistry()
	metrics := NewMetrics(reg)
	v4, v6 := metrics.For(IPv4), metrics.For(IPv6)
	v4.LastSyncTimestamp.Set(4)
	v6.LastSyncTimestamp.Set(6)
	v4.ServiceChangesTotal.Inc()
	v6.ServiceChangesTotal.Inc()
	got := map[string]map[string]float64{}
	for _, name := range []string{"kubeproxy_sync_proxy_rules_last_timestamp_seconds", "kubeproxy_sync_proxy_rules_service_changes_total"} {
		got[name] = metricstest.Values(t, reg, name)
	}
	want := map[string]map[string]float64{
		"kubeproxy_sync_proxy_rules_last_timestamp_seconds": {"ip_family=IPv4": 4, "ip_family=IPv6": 6},
		"kubeproxy_sync_proxy_rules_service_changes_total":  {"": 2},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("series (-want +got):\n%s", diff)
	}
}

// TestNoLocalEndpoints: kubeproxy_sync_proxy_rules_no_local_endpoints_total counts, per
// traffic policy, the Service ports with endpoints somewhere whose Local policy finds none
// on this node, as kube-proxy's iptables mode counts them at each sync (one per port);
// partial syncs update the ports they take.
func TestNoLocalEndpoints(t *testing.T) {
	local, remote := readyEndpoint("10.244.1.2", "node-a"), readyEndpoint("10.244.2.2", "node-b")
	itpLocal := func(s *v1.Service) { s.Spec.InternalTrafficPolicy = ptr(v1.ServiceInternalTrafficPolicyLocal) }
	etpLocal := func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeNodePort
		s.Spec.Ports[0].NodePort = 30080
		s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
	}
	bothLocal := func(s *v1.Service) { itpLocal(s); etpLocal(s) }
	twoPorts := func(s *v1.Service) {
		itpLocal(s)
		s.Spec.Ports = append(s.Spec.Ports, v1.ServicePort{Name: "https", Port: 443, Protocol: v1.ProtocolTCP})
	}
	slice := func(svc string, eps ...discovery.Endpoint) proxierEvent {
		return sliceEvent(makeSlice(svc, svc+"-1", eps, func(s *discovery.EndpointSlice) {
			s.Ports = append(s.Ports, discovery.EndpointPort{Name: ptr("https"), Port: ptr[int32](8443), Protocol: ptr(v1.ProtocolTCP)})
		}))
	}
	counts := func(internal, external float64) map[string]float64 {
		return map[string]float64{"ip_family=IPv4,traffic_policy=internal": internal, "ip_family=IPv4,traffic_policy=external": external}
	}
	// service is Service "a" with the tweak, and its endpoints (none: no slice).
	service := func(tweak func(*v1.Service), eps ...discovery.Endpoint) []proxierEvent {
		events := []proxierEvent{svcEvent(makeService("a", tweak))}
		if len(eps) > 0 {
			events = append(events, slice("a", eps...))
		}
		return events
	}
	// synced is a first sync of a with both policies Local and b with the internal one,
	// both with endpoints elsewhere only, then the events.
	synced := func(events ...proxierEvent) []proxierEvent {
		return append([]proxierEvent{svcEvent(makeService("a", bothLocal)), svcEvent(makeService("b", itpLocal)),
			slice("a", remote), slice("b", remote), syncNow()}, events...)
	}
	tests := []struct {
		name   string
		events []proxierEvent
		want   map[string]float64
	}{
		{name: "internal Local, endpoints elsewhere only", events: service(itpLocal, remote), want: counts(1, 0)},
		{name: "external Local, endpoints elsewhere only", events: service(etpLocal, remote), want: counts(0, 1)},
		{name: "both Local, endpoints elsewhere only: counted under each", events: service(bothLocal, remote), want: counts(1, 1)},
		{name: "both Local with a local endpoint", events: service(bothLocal, local, remote), want: counts(0, 0)},
		// kube-proxy rejects its traffic instead: nothing to drop.
		{name: "no endpoint anywhere", events: service(bothLocal), want: counts(0, 0)},
		{name: "Cluster policies, endpoints elsewhere only", events: service(nil, remote), want: counts(0, 0)},
		{name: "each port of a Service counts", events: service(twoPorts, remote), want: counts(2, 0)},
		{name: "a partial sync takes a local endpoint into account", events: synced(slice("a", local)), want: counts(1, 0)},
		{name: "a partial sync takes a deleted Service into account", events: synced(svcDeleteEvent(makeService("a", nil))), want: counts(1, 0)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tp := newTestProxier(t)
			initialized()(tp)
			for _, e := range tc.events {
				e(tp)
			}
			if err := tp.p.sync(); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, metricstest.Values(t, tp.reg, "kubeproxy_sync_proxy_rules_no_local_endpoints_total")); diff != "" {
				t.Errorf("no local endpoints (-want +got):\n%s", diff)
			}
		})
	}
}

// syncNow runs a sync between events.
func syncNow() proxierEvent {
	return func(tp *testProxier) {
		if err := tp.p.sync(); err != nil {
			tp.t.Fatal(err)
		}
	}
}
