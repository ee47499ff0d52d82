package ipvs_test

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/switchyard/switchyard/internal/behaviour"
	"github.com/switchyard/switchyard/internal/metricstest"
	"github.com/switchyard/switchyard/iptables"
	"github.com/switchyard/switchyard/iptables/iptablestest"
	"github.com/switchyard/switchyard/ipvs"
	"github.com/switchyard/switchyard/ipvs/ipvstest"
	"github.com/switchyard/switchyard/proxier"
)

// countingIPTables counts the restores written to the fake.
type countingIPTables struct {
	*iptablestest.Fake
	restores int
}

func (c *countingIPTables) Restore(ctx context.Context, data []byte) error {
	c.restores++
	return c.Fake.Restore(ctx, data)
}

// nodeDropAddrs lists the virtual addresses SWYD-IPVS-OUT-FILTER drops the node's
// connections to, in its order.
func nodeDropAddrs(t *testing.T, ipt *iptablestest.Fake) []string {
	t.Helper()
	dump, err := ipt.Save(context.Background(), iptables.TableFilter)
	if err != nil {
		t.Fatal(err)
	}
	rules, ok := iptables.ParseSaved(string(dump))["filter "+ipvs.OutFilterChain]
	if !ok {
		t.Fatalf("no chain %s:\n%s", ipvs.OutFilterChain, dump)
	}
	addrs := []string{}
	for _, r := range rules {
		fields := iptables.SplitRule(string(r))
		i := slices.Index(fields, "--vaddr")
		if i < 0 || i+1 == len(fields) {
			t.Fatalf("%s holds a rule without --vaddr: %s", ipvs.OutFilterChain, r)
		}
		addrs = append(addrs, fields[i+1])
	}
	return addrs
}

// nodeToLoadBalancer traces the node's connection to a load-balancer IP bound on
// kube-ipvs0 (its source is then that address) and returns the verdict of every way it
// goes.
func nodeToLoadBalancer(t *testing.T, node *ipvstest.Node, dst netip.AddrPort) []string {
	t.Helper()
	results, err := node.Trace(iptablestest.Packet{Protocol: "tcp", Src: dst.Addr(), FromNode: true, Dst: dst, Local: node.Device.Local()})
	if err != nil {
		t.Fatal(err)
	}
	var verdicts []string
	for _, r := range results {
		verdicts = append(verdicts, r.Verdict)
	}
	return verdicts
}

func behaviourName(name string) proxier.ServicePortName {
	return proxier.ServicePortName{NamespacedName: types.NamespacedName{Namespace: "default", Name: name}, Protocol: v1.ProtocolTCP}
}

// TestNodeDropsFollowPartialSyncs: the node drops follow a Service's source ranges
// through partial syncs, which write SWYD-IPVS-OUT-FILTER only when they change.
func TestNodeDropsFollowPartialSyncs(t *testing.T) {
	ctx := context.Background()
	state := behaviour.State()
	node := ipvstest.NewNode(behaviour.NodeIP)
	ipt := &countingIPTables{Fake: node.IPTables}
	b := backendOn(node.IPVS, ipt, node.Device, node.Sets, prometheus.NewRegistry())
	fw, itp := behaviourName("fw"), behaviourName("itp")
	excluding := state.Services[fw]
	including := *excluding
	including.LoadBalancerSourceRanges = append(slices.Clone(excluding.LoadBalancerSourceRanges), netip.PrefixFrom(behaviour.NodeIP, 32))
	lb := netip.AddrPortFrom(excluding.LoadBalancerIPs[0], uint16(excluding.Port))
	delete(state.Services, fw)
	if err := b.Sync(ctx, state, proxier.Changes{Full: true}); err != nil {
		t.Fatal(err)
	}
	// bothlocal's and fwempty's load-balancer IPs are dropped throughout.
	const other, otherEmpty = "198.51.100.21", "198.51.100.14"
	steps := []struct {
		name    string
		mutate  func()
		changed proxier.ServicePortName
		// wantAddrs is the chain's; wantTrace, when set, the verdicts of the node's
		// connection to the load-balancer IP, one per real server.
		wantAddrs []string
		wantTrace []string
		wantWrite bool
	}{
		{name: "a Service whose source ranges do not hold the node's IP comes", mutate: func() { state.Services[fw] = excluding }, changed: fw,
			wantAddrs: []string{lb.Addr().String(), otherEmpty, other}, wantTrace: []string{"DROP", "DROP"}, wantWrite: true},
		{name: "its ranges come to hold it", mutate: func() { state.Services[fw] = &including }, changed: fw,
			wantAddrs: []string{otherEmpty, other}, wantTrace: []string{"ACCEPT", "ACCEPT"}, wantWrite: true},
		{name: "another Service changes", mutate: func() {}, changed: itp,
			wantAddrs: []string{otherEmpty, other}, wantTrace: []string{"ACCEPT", "ACCEPT"}},
		{name: "its ranges do not hold it any more", mutate: func() { state.Services[fw] = excluding }, changed: fw,
			wantAddrs: []string{lb.Addr().String(), otherEmpty, other}, wantTrace: []string{"DROP", "DROP"}, wantWrite: true},
		{name: "the Service goes", mutate: func() { delete(state.Services, fw) }, changed: fw,
			wantAddrs: []string{otherEmpty, other}, wantWrite: true},
	}
	for _, step := range steps {
		step.mutate()
		before := ipt.restores
		if err := b.Sync(ctx, state, proxier.Changes{ServicePorts: map[proxier.ServicePortName]struct{}{step.changed: {}}}); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		if wrote := ipt.restores > before; wrote != step.wantWrite {
			t.Errorf("%s: wrote iptables rules %v, want %v", step.name, wrote, step.wantWrite)
		}
		if diff := cmp.Diff(step.wantAddrs, nodeDropAddrs(t, node.IPTables)); diff != "" {
			t.Errorf("%s: addresses in %s (-want +got):\n%s", step.name, ipvs.OutFilterChain, diff)
		}
		if step.wantTrace != nil {
			if diff := cmp.Diff(step.wantTrace, nodeToLoadBalancer(t, node, lb)); diff != "" {
				t.Errorf("%s: the node's connection to %s (-want +got):\n%s", step.name, lb, diff)
			}
		}
	}
}

// TestNodeDropsRefused: a kernel that refuses the node drops' rules (one without xt_ipvs)
// fails the ports that want them, and only them: everything else is programmed, and the
// drops the kernel took before stay. Once it takes them, the retry of those ports writes
// them. A refusal of the fixed rules still fails the whole sync. Each refused restore
// counts in kubeproxy_sync_proxy_rules_iptables_restore_failures_total, as kube-proxy's
// IPVS mode counts its failed restores.
func TestNodeDropsRefused(t *testing.T) {
	ctx := context.Background()
	fw, fwEmpty, bothLocal, fw2 := behaviourName("fw"), behaviourName("fwempty"), behaviourName("bothlocal"), behaviourName("fw2")
	refuseAll := func(chain string, _ iptables.SavedRule) bool { return chain == ipvs.OutFilterChain }
	refuseFW2 := func(chain string, r iptables.SavedRule) bool {
		return chain == ipvs.OutFilterChain && strings.Contains(string(r), "198.51.100.30")
	}
	addFW2 := func(state *proxier.State) {
		sp := *state.Services[fw]
		sp.Name, sp.ClusterIP, sp.NodePort, sp.LoadBalancerIPs = fw2, netip.MustParseAddr("10.96.0.30"), 0, []netip.Addr{netip.MustParseAddr("198.51.100.30")}
		state.Services[fw2], state.Endpoints[fw2] = &sp, state.Endpoints[fw]
	}
	steps := []struct {
		name       string
		refuse     func(chain string, r iptables.SavedRule) bool
		mutate     func(state *proxier.State)
		full       bool
		changed    []proxier.ServicePortName
		wantFailed []proxier.ServicePortName
		wantAddrs  []string
		// wantRestoreFailures is the count of failed restores after the step.
		wantRestoreFailures float64
	}{
		{name: "no xt_ipvs", refuse: refuseAll, full: true,
			wantFailed: []proxier.ServicePortName{bothLocal, fw, fwEmpty}, wantAddrs: []string{}, wantRestoreFailures: 1},
		{name: "the kernel takes them", changed: []proxier.ServicePortName{bothLocal, fw, fwEmpty},
			wantAddrs: []string{"198.51.100.12", "198.51.100.14", "198.51.100.21"}, wantRestoreFailures: 1},
		{name: "a new one refused in a partial sync", refuse: refuseFW2, mutate: addFW2, changed: []proxier.ServicePortName{fw2},
			wantFailed: []proxier.ServicePortName{fw2}, wantAddrs: []string{"198.51.100.12", "198.51.100.14", "198.51.100.21"}, wantRestoreFailures: 2},
		{name: "and in a full sync", refuse: refuseFW2, full: true,
			wantFailed: []proxier.ServicePortName{fw2}, wantAddrs: []string{"198.51.100.12", "198.51.100.14", "198.51.100.21"}, wantRestoreFailures: 3},
		{name: "the kernel takes it", changed: []proxier.ServicePortName{fw2},
			wantAddrs: []string{"198.51.100.12", "198.51.100.14", "198.51.100.21", "198.51.100.30"}, wantRestoreFailures: 3},
	}
	node := ipvstest.NewNode(behaviour.NodeIP)
	reg := prometheus.NewRegistry()
	b := backendOn(node.IPVS, node.IPTables, node.Device, node.Sets, reg)
	state := behaviour.State()
	for _, step := range steps {
		node.IPTables.RejectRules(step.refuse)
		if step.mutate != nil {
			step.mutate(state)
		}
		changes := proxier.Changes{Full: step.full, ServicePorts: map[proxier.ServicePortName]struct{}{}}
		for _, n := range step.changed {
			changes.ServicePorts[n] = struct{}{}
		}
		err := b.Sync(ctx, state, changes)
		var failed proxier.PortErrors
		if err != nil && !errors.As(err, &failed) {
			t.Fatalf("%s: %v", step.name, err)
		}
		var got []proxier.ServicePortName
		for n := range failed {
			got = append(got, n)
		}
		slices.SortFunc(got, proxier.ServicePortName.Compare)
		if diff := cmp.Diff(step.wantFailed, got); diff != "" {
			t.Errorf("%s: failed ports (-want +got):\n%s", step.name, diff)
		}
		if diff := cmp.Diff(step.wantAddrs, nodeDropAddrs(t, node.IPTables)); diff != "" {
			t.Errorf("%s: addresses in %s (-want +got):\n%s", step.name, ipvs.OutFilterChain, diff)
		}
		failures := metricstest.Values(t, reg, "kubeproxy_sync_proxy_rules_iptables_restore_failures_total")
		if diff := cmp.Diff(map[string]float64{"ip_family=IPv4": step.wantRestoreFailures}, failures); diff != "" {
			t.Errorf("%s: restore failures (-want +got):\n%s", step.name, diff)
		}
		// Everything else is in place: a pod reaches a cluster IP, and an off-node client
		// outside the source ranges is still dropped.
		for _, fl := range []struct {
			src  netip.Addr
			dst  string
			want string
		}{{behaviour.P, "10.96.0.10:80", "ACCEPT"}, {behaviour.Outside, "198.51.100.12:80", "DROP"}} {
			results, err := node.Trace(iptablestest.Packet{Protocol: "tcp", Src: fl.src, Dst: netip.MustParseAddrPort(fl.dst), Local: node.Device.Local()})
			if err != nil {
				t.Fatal(err)
			}
			if len(results) == 0 || slices.ContainsFunc(results, func(r iptablestest.Result) bool { return r.Verdict != fl.want }) {
				t.Errorf("%s: %s to %s: %v, want %s", step.name, fl.src, fl.dst, results, fl.want)
			}
		}
	}

	node.IPTables.RejectRules(func(chain string, _ iptables.SavedRule) bool { return chain == ipvs.FilterChain })
	var failed proxier.PortErrors
	if err := b.Sync(ctx, state, proxier.Changes{Full: true}); err == nil || errors.As(err, &failed) {
		t.Errorf("a refusal of the fixed rules: Sync() = %v, want the whole sync to fail", err)
	}
}
