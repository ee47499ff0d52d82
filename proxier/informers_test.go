package proxier

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"
	testingclock "k8s.io/utils/clock/testing"
)

func testNode(taints ...string) *v1.Node {
	n := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a"}}
	for _, key := range taints {
		n.Spec.Taints = append(n.Spec.Taints, v1.Taint{Key: key, Effect: v1.TaintEffectNoSchedule})
	}
	return n
}

// TestNodeEventsEligibility follows how kube-proxy's NodeConfig feeds its NodeManager
// (OnNodeChange on add and update, OnNodeDelete on delete, which keeps the Node) and how
// ProxyHealthServer.NodeEligible judges the Node it holds.
func TestNodeEventsEligibility(t *testing.T) {
	eligible := testNode("other-taint")
	autoscaled := testNode(toBeDeletedTaint)
	deleting := testNode()
	deleting.DeletionTimestamp = &metav1.Time{Time: testTime}
	add := func(n *v1.Node) func(cache.ResourceEventHandler) {
		return func(h cache.ResourceEventHandler) { h.OnAdd(n, false) }
	}
	update := func(n *v1.Node) func(cache.ResourceEventHandler) {
		return func(h cache.ResourceEventHandler) { h.OnUpdate(nil, n) }
	}
	remove := func(obj any) func(cache.ResourceEventHandler) {
		return func(h cache.ResourceEventHandler) { h.OnDelete(obj) }
	}

	testCases := []struct {
		name   string
		events []func(cache.ResourceEventHandler)
		want   bool
	}{
		{name: "unknown Node", want: false},
		{name: "Node added", events: []func(cache.ResourceEventHandler){add(eligible)}, want: true},
		{name: "Node added tainted by the Cluster Autoscaler", events: []func(cache.ResourceEventHandler){add(autoscaled)}, want: false},
		{name: "Node tainted by the Cluster Autoscaler", events: []func(cache.ResourceEventHandler){add(eligible), update(autoscaled)}, want: false},
		{name: "Node untainted again", events: []func(cache.ResourceEventHandler){add(eligible), update(autoscaled), update(eligible)}, want: true},
		{name: "Node being deleted", events: []func(cache.ResourceEventHandler){add(eligible), update(deleting)}, want: false},
		{name: "Node deleted: the last verdict stays", events: []func(cache.ResourceEventHandler){add(eligible), remove(eligible)}, want: true},
		{
			name:   "Node deleted while the informer was away: the last verdict stays",
			events: []func(cache.ResourceEventHandler){add(deleting), remove(cache.DeletedFinalStateUnknown{Key: "node-a", Obj: eligible})},
			want:   false,
		},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			var eligibility NodeEligibility
			h := nodeEvents(&eligibility, []*Proxier{newTestProxier(t).p})
			for _, e := range tc.events {
				e(h)
			}
			if got := eligibility.Eligible(); got != tc.want {
				t.Errorf("Eligible() = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestWatchFeedsNodeEligibility checks that the Node informer Watch starts for the
// proxiers is the one eligibility follows.
func TestWatchFeedsNodeEligibility(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client := fake.NewClientset()
	var eligibility NodeEligibility
	if err := Watch(ctx, client, "", 0, &eligibility, newTestProxier(t).p); err != nil {
		t.Fatal(err)
	}
	if eligibility.Eligible() {
		t.Fatal("Eligible() before the Node exists = true, want false")
	}
	nodes := client.CoreV1().Nodes()
	for _, step := range []struct {
		write func() (*v1.Node, error)
		want  bool
	}{
		{func() (*v1.Node, error) { return nodes.Create(ctx, testNode(), metav1.CreateOptions{}) }, true},
		{func() (*v1.Node, error) { return nodes.Update(ctx, testNode(toBeDeletedTaint), metav1.UpdateOptions{}) }, false},
		{func() (*v1.Node, error) { return nodes.Update(ctx, testNode(), metav1.UpdateOptions{}) }, true},
	} {
		n, err := step.write()
		if err != nil {
			t.Fatal(err)
		}
		err = wait.PollUntilContextCancel(ctx, 10*time.Millisecond, true, func(context.Context) (bool, error) {
			return eligibility.Eligible() == step.want, nil
		})
		if err != nil {
			t.Fatalf("Eligible() with taints %v: not %v: %v", n.Spec.Taints, step.want, err)
		}
	}
}

// TestWatchCountsChanges: each Service event counts once in
// kubeproxy_sync_proxy_rules_service_changes_total however many families' proxiers it
// goes to, and an EndpointSlice event counts when a proxier takes its address type, as
// kube-proxy's change trackers count them.
func TestWatchCountsChanges(t *testing.T) {
	slice := func(name string, addressType discovery.AddressType) *discovery.EndpointSlice {
		return makeSlice("a", name, nil, func(s *discovery.EndpointSlice) { s.AddressType = addressType })
	}
	objects := []runtime.Object{
		makeService("a", nil), makeService("b", nil),
		slice("a-v4", discovery.AddressTypeIPv4), slice("a-v6", discovery.AddressTypeIPv6), slice("a-fqdn", discovery.AddressTypeFQDN),
	}
	for _, tc := range []struct {
		families                 []Family
		wantServices, wantSlices float64
	}{
		{families: []Family{IPv4}, wantServices: 2, wantSlices: 1},
		{families: []Family{IPv6}, wantServices: 2, wantSlices: 1},
		{families: []Family{IPv4, IPv6}, wantServices: 2, wantSlices: 2},
	} {
		t.Run(fmt.Sprint(tc.families), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			reg := prometheus.NewRegistry()
			metrics := NewMetrics(reg)
			clk := testingclock.NewFakeClock(testTime)
			var proxiers []*Proxier
			for _, family := range tc.families {
				proxiers = append(proxiers, New(Options{Backend: &fakeBackend{}, Family: family, NodeName: "node-a", SyncPeriod: testSyncPeriod,
					Metrics: metrics.For(family), Health: NewHealth(family, clk, testHealthTimeout), Clock: clk}))
			}
			if err := Watch(ctx, fake.NewClientset(objects...), "", 0, &NodeEligibility{}, proxiers...); err != nil {
				t.Fatal(err)
			}
			if got := counterValue(t, reg, "kubeproxy_sync_proxy_rules_service_changes_total"); got != tc.wantServices {
				t.Errorf("service changes = %v, want %v", got, tc.wantServices)
			}
			if got := counterValue(t, reg, "kubeproxy_sync_proxy_rules_endpoint_changes_total"); got != tc.wantSlices {
				t.Errorf("endpoint changes = %v, want %v", got, tc.wantSlices)
			}
		})
	}
}
