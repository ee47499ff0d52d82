package iptables

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"

	"github.com/switchyard/switchyard/proxier"
)

// TestChurnEqualsFullSync drives the tracker and the backend through a long series of
// partial syncs in a real kernel (endpoints replaced one at a time, Services scaled to
// none and back, several changes folded into one sync, a full sync now and then), then programs the final state
// with one full sync in a fresh namespace: both kernels must hold the same rules.
func TestChurnEqualsFullSync(t *testing.T) {
	for _, flavor := range []Flavor{Nft, Legacy} {
		t.Run(string(flavor), func(t *testing.T) {
			if _, err := exec.LookPath("iptables-" + string(flavor) + "-restore"); err != nil {
				t.Fatalf("iptables-%s-restore not found: install the Debian package iptables (make deps)", flavor)
			}
			testChurnEqualsFullSync(t, flavor)
		})
	}
}

func testChurnEqualsFullSync(t *testing.T, flavor Flavor) {
	const services, endpoints, changes = 100, 10, 1500
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(7, 0))
	tracker := proxier.NewTracker(proxier.IPv4, testRenderConfig.NodeName, metav1.Now().Time, nil)
	ips := make([][]string, services)
	for i := range services {
		tracker.OnServiceUpdate(churnService(i))
		for range endpoints {
			ips[i] = append(ips[i], churnIP(rng))
		}
		tracker.OnEndpointSliceUpdate(churnSlice(i, ips[i]))
	}
	var churned string
	var final *proxier.State
	inFreshNetns(t, func() {
		b := newChurnBackend(t, flavor)
		flushed := tracker.Flush()
		if err := b.Sync(ctx, flushed.State, proxier.Changes{Full: true}); err != nil {
			t.Fatalf("first full sync: %v", err)
		}
		for step := 0; step < changes; {
			// One to three changes folded into each sync, as the runner coalesces them.
			for range 1 + rng.IntN(3) {
				i := rng.IntN(services)
				if rng.IntN(10) == 0 {
					tracker.OnEndpointSliceUpdate(churnSlice(i, nil))
				} else {
					ips[i][rng.IntN(endpoints)] = churnIP(rng)
					tracker.OnEndpointSliceUpdate(churnSlice(i, ips[i]))
				}
				step++
			}
			flushed := tracker.Flush()
			// Now and then a full sync, as the sync period brings, between partial ones.
			full := rng.IntN(100) == 0
			if err := b.Sync(ctx, flushed.State, proxier.Changes{Full: full, ServicePorts: flushed.Changed}); err != nil {
				t.Fatalf("partial sync after %d changes: %v", step, err)
			}
		}
		churned = savedOwnRules(t, flavor)
		final = flushed.State
	})
	if t.Failed() {
		return
	}
	var fresh string
	inFreshNetns(t, func() {
		if err := newChurnBackend(t, flavor).Sync(ctx, final, proxier.Changes{Full: true}); err != nil {
			t.Fatalf("full sync: %v", err)
		}
		fresh = savedOwnRules(t, flavor)
	})
	if churned != fresh {
		t.Errorf("after %d changes by partial syncs, the kernel differs from one full sync of the same state:\n%s",
			changes, onlyInOne(churned, fresh))
	}
}

func newChurnBackend(t *testing.T, flavor Flavor) *Backend {
	t.Helper()
	ipt, err := New(flavor, false)
	if err != nil {
		t.Fatal(err)
	}
	return NewBackend(ipt, testRenderConfig, prometheus.NewRegistry(), klog.Background())
}

func churnService(i int) *v1.Service {
	ip := fmt.Sprintf("10.96.%d.%d", 1+i/250, 1+i%250)
	return &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "churn", Name: fmt.Sprintf("svc-%d", i)},
		Spec: v1.ServiceSpec{Type: v1.ServiceTypeClusterIP, ClusterIP: ip, ClusterIPs: []string{ip},
			Ports: []v1.ServicePort{{Name: "http", Port: 80, Protocol: v1.ProtocolTCP, TargetPort: intstr.FromInt32(8080)}}},
	}
}

func churnSlice(i int, ips []string) *discovery.EndpointSlice {
	name := fmt.Sprintf("svc-%d", i)
	slice := &discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "churn", Name: name + "-1", Labels: map[string]string{discovery.LabelServiceName: name}},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(v1.ProtocolTCP)}},
		Endpoints:   []discovery.Endpoint{},
	}
	for _, ip := range ips {
		slice.Endpoints = append(slice.Endpoints, discovery.Endpoint{Addresses: []string{ip},
			Conditions: discovery.EndpointConditions{Ready: ptr.To(true)}, NodeName: ptr.To("node-b")})
	}
	return slice
}

func churnIP(rng *rand.Rand) string {
	return fmt.Sprintf("10.%d.%d.%d", 64+rng.IntN(64), rng.IntN(256), 1+rng.IntN(254))
}

// savedOwnRules is our chains and their rules in both tables, each chain's rules in
// kernel order and the chains sorted, with the dispatch rules of the shared chains sorted
// too (partial syncs insert them at the top, a full sync writes them in name order).
func savedOwnRules(t *testing.T, flavor Flavor) string {
	t.Helper()
	var lines []string
	for _, table := range []Table{TableNAT, TableFilter} {
		chains := map[string][]string{}
		for line := range strings.Lines(iptablesSave(t, flavor, table)) {
			f := strings.Fields(line)
			switch {
			case len(f) >= 1 && strings.HasPrefix(f[0], ":"+ChainPrefix):
				if _, ok := chains[f[0][1:]]; !ok {
					chains[f[0][1:]] = nil
				}
			case len(f) >= 2 && f[0] == "-A" && strings.HasPrefix(f[1], ChainPrefix):
				chains[f[1]] = append(chains[f[1]], strings.TrimSpace(line))
			}
		}
		for _, name := range slices.Sorted(maps.Keys(chains)) {
			rules := chains[name]
			if name == ServicesChain || name == NodePortsChain {
				slices.Sort(rules)
			}
			lines = append(lines, fmt.Sprintf("%s %s", table, name))
			lines = append(lines, rules...)
		}
	}
	return strings.Join(lines, "\n")
}

// onlyInOne lists the lines that only one of a and b holds, sorted, at most 40.
func onlyInOne(a, b string) string {
	count := map[string]int{}
	for _, l := range strings.Split(a, "\n") {
		count[l]++
	}
	for _, l := range strings.Split(b, "\n") {
		count[l]--
	}
	var out []string
	for l, n := range count {
		if n > 0 {
			out = append(out, "- "+l)
		} else if n < 0 {
			out = append(out, "+ "+l)
		}
	}
	slices.Sort(out)
	if len(out) > 40 {
		out = append(out[:40], fmt.Sprintf("... and %d more", len(out)-40))
	}
	return "(- after partial syncs, + one full sync)\n" + strings.Join(out, "\n")
}
