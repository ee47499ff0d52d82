package iptables

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"

	"github.com/switchyard/switchyard/proxier"
)

// recordingIPTables keeps the restore inputs it is given: enough for tests of what the
// backend writes. Whether the kernel accepts it is proven in kernel_test.go.
type recordingIPTables struct {
	restores []string
	saved    map[Table]string
}

func (r *recordingIPTables) Restore(_ context.Context, data []byte) error {
	r.restores = append(r.restores, string(data))
	return nil
}
func (r *recordingIPTables) Save(_ context.Context, t Table) ([]byte, error) {
	return []byte(r.saved[t]), nil
}
func (r *recordingIPTables) Flavor() Flavor { return Nft }

func spn(ns, name, port string) proxier.ServicePortName {
	return proxier.ServicePortName{NamespacedName: types.NamespacedName{Namespace: ns, Name: name}, Port: port, Protocol: v1.ProtocolTCP}
}

func clusterIPService(name proxier.ServicePortName, ip string, port int32) *proxier.ServicePort {
	return &proxier.ServicePort{Name: name, ClusterIP: netip.MustParseAddr(ip), Port: port, Protocol: name.Protocol}
}

func readyEndpoints(ips ...string) []proxier.Endpoint {
	var eps []proxier.Endpoint
	for _, ip := range ips {
		eps = append(eps, proxier.Endpoint{IP: netip.MustParseAddr(ip), Port: 8080, Ready: true, Serving: true})
	}
	return eps
}

// resolve resolves sp with endpoints on node-a, as the backend does before rendering.
func resolve(cfg *RenderConfig, sp *proxier.ServicePort, endpoints []proxier.Endpoint) *proxier.Resolution {
	state := &proxier.State{NodeName: "node-a", Endpoints: map[proxier.ServicePortName][]proxier.Endpoint{sp.Name: endpoints}}
	return proxier.Resolve(&cfg.ResolveConfig, state, sp, nil)
}

// testRenderConfig is kube-proxy's defaults, NodePorts on 127.0.0.1 included.
var testRenderConfig = RenderConfig{ResolveConfig: proxier.ResolveConfig{ClusterCIDR: netip.MustParsePrefix("10.244.0.0/16")}, MasqueradeMark: "0x00004000", NodeName: "node-a", LocalhostNodePorts: true}

// sampleState has two Services: web:http (10.96.0.10:80) with two ready endpoints, and
// empty (10.96.0.11:80) with none.
func sampleState() (state *proxier.State, web, empty proxier.ServicePortName) {
	web, empty = spn("default", "web", "http"), spn("default", "empty", "")
	return &proxier.State{
		NodeName: "node-a",
		Services: map[proxier.ServicePortName]*proxier.ServicePort{
			web:   clusterIPService(web, "10.96.0.10", 80),
			empty: clusterIPService(empty, "10.96.0.11", 80),
		},
		Endpoints: map[proxier.ServicePortName][]proxier.Endpoint{web: readyEndpoints("10.244.1.2", "10.244.2.3")},
	}, web, empty
}

func TestFullSyncGolden(t *testing.T) {
	state, web, _ := sampleState()
	// The kernel holds someone else's chain, a chain of ours nothing wants any more, and
	// a hook into a chain of the other proxy mode: the last two must go, the first stay.
	ipt := &recordingIPTables{saved: map[Table]string{TableNAT: `*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:SWYD-SVC-STALE - [0:0]
:SWYD-IPVS-OLD - [0:0]
-A OUTPUT -m comment --comment "kube" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "old mode" -j SWYD-IPVS-OLD
COMMIT
`}}
	b := NewBackend(ipt, testRenderConfig, prometheus.NewRegistry(), klog.Background())
	if err := b.Sync(context.Background(), state, proxier.Changes{Full: true}); err != nil {
		t.Fatal(err)
	}
	svc, sep1, sep2 := servicePortChain(web), endpointChain(web, state.Endpoints[web][0]), endpointChain(web, state.Endpoints[web][1])
	want := strings.NewReplacer("{SVC}", svc, "{SEP1}", sep1, "{SEP2}", sep2).Replace(`*filter
:SWYD-SERVICES - [0:0]
:SWYD-EXTERNAL-SERVICES - [0:0]
:SWYD-PROXY-FIREWALL - [0:0]
:SWYD-NODEPORTS - [0:0]
:SWYD-FORWARD - [0:0]
:SWYD-LOCALNET-FIREWALL - [0:0]
-A SWYD-SERVICES -m comment --comment "default/empty has no endpoints" -d 10.96.0.11/32 -p tcp -m tcp --dport 80 -j REJECT
-A SWYD-FORWARD -m conntrack --ctstate INVALID -j DROP
-A SWYD-FORWARD -m comment --comment "switchyard forwarding rules" -m mark --mark 0x00004000/0x00004000 -j ACCEPT
-A SWYD-FORWARD -m comment --comment "switchyard forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A SWYD-LOCALNET-FIREWALL -m comment --comment "block incoming localnet connections" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
-I FORWARD 1 -m comment --comment "switchyard forwarding rules" -j SWYD-FORWARD
-I INPUT 1 -m conntrack --ctstate NEW -m comment --comment "switchyard externally-visible service portals" -j SWYD-EXTERNAL-SERVICES
-I FORWARD 1 -m conntrack --ctstate NEW -m comment --comment "switchyard externally-visible service portals" -j SWYD-EXTERNAL-SERVICES
-I INPUT 1 -m comment --comment "switchyard health check service ports" -j SWYD-NODEPORTS
-I FORWARD 1 -m conntrack --ctstate NEW -m comment --comment "switchyard service portals" -j SWYD-SERVICES
-I OUTPUT 1 -m conntrack --ctstate NEW -m comment --comment "switchyard service portals" -j SWYD-SERVICES
-I INPUT 1 -m conntrack --ctstate NEW -m comment --comment "switchyard load balancer firewall" -j SWYD-PROXY-FIREWALL
-I OUTPUT 1 -m conntrack --ctstate NEW -m comment --comment "switchyard load balancer firewall" -j SWYD-PROXY-FIREWALL
-I FORWARD 1 -m conntrack --ctstate NEW -m comment --comment "switchyard load balancer firewall" -j SWYD-PROXY-FIREWALL
-I INPUT 1 -m comment --comment "switchyard localnet firewall" -j SWYD-LOCALNET-FIREWALL
-I OUTPUT 1 -m comment --comment "switchyard localnet firewall" -j SWYD-LOCALNET-FIREWALL
COMMIT
*nat
:SWYD-SERVICES - [0:0]
:SWYD-NODEPORTS - [0:0]
:SWYD-MARK-MASQ - [0:0]
:SWYD-POSTROUTING - [0:0]
:{SVC} - [0:0]
:{SEP1} - [0:0]
:{SEP2} - [0:0]
:SWYD-SVC-STALE - [0:0]
:SWYD-IPVS-OLD - [0:0]
-A SWYD-SERVICES -m comment --comment "default/web:http cluster IP" -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j {SVC}
-A SWYD-SERVICES -m comment --comment "switchyard service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j SWYD-NODEPORTS
-A SWYD-MARK-MASQ -j MARK --or-mark 0x00004000
-A SWYD-POSTROUTING -m mark ! --mark 0x00004000/0x00004000 -j RETURN
-A SWYD-POSTROUTING -j MARK --xor-mark 0x00004000
-A SWYD-POSTROUTING -m comment --comment "switchyard service traffic requiring SNAT" -j MASQUERADE --random-fully
-A {SVC} -m comment --comment "default/web:http cluster IP" ! -s 10.244.0.0/16 -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j SWYD-MARK-MASQ
-A {SVC} -m comment --comment "default/web:http -> 10.244.1.2:8080" -m statistic --mode random --probability 0.5000000000 -j {SEP1}
-A {SVC} -m comment --comment "default/web:http -> 10.244.2.3:8080" -j {SEP2}
-A {SEP1} -m comment --comment "default/web:http" -s 10.244.1.2/32 -j SWYD-MARK-MASQ
-A {SEP1} -m comment --comment "default/web:http" -p tcp -m tcp -j DNAT --to-destination 10.244.1.2:8080
-A {SEP2} -m comment --comment "default/web:http" -s 10.244.2.3/32 -j SWYD-MARK-MASQ
-A {SEP2} -m comment --comment "default/web:http" -p tcp -m tcp -j DNAT --to-destination 10.244.2.3:8080
-I PREROUTING 1 -m comment --comment "switchyard service portals" -j SWYD-SERVICES
-I OUTPUT 1 -m comment --comment "switchyard service portals" -j SWYD-SERVICES
-I POSTROUTING 1 -m comment --comment "switchyard postrouting rules" -j SWYD-POSTROUTING
-D OUTPUT -m comment --comment "old mode" -j SWYD-IPVS-OLD
-X SWYD-SVC-STALE
-X SWYD-IPVS-OLD
COMMIT
`)
	if diff := cmp.Diff(want, ipt.restores[0]); diff != "" {
		t.Errorf("full restore input (-want +got):\n%s", diff)
	}
}

// TestPartialSyncIsProportionalToChange builds 10,000 Services and checks that one
// endpoint change, one new Service and one deleted Service each produce a restore input of
// a handful of lines, not one proportional to the number of Services.
func TestPartialSyncIsProportionalToChange(t *testing.T) {
	const n = 10000
	state := &proxier.State{NodeName: "node-a", Services: map[proxier.ServicePortName]*proxier.ServicePort{}, Endpoints: map[proxier.ServicePortName][]proxier.Endpoint{}}
	for i := range n {
		name := spn("ns", fmt.Sprintf("svc-%d", i), "http")
		state.Services[name] = clusterIPService(name, fmt.Sprintf("10.96.%d.%d", i/250, i%250+1), 80)
		state.Endpoints[name] = readyEndpoints(fmt.Sprintf("10.244.%d.%d", i/250, i%250+1), fmt.Sprintf("10.245.%d.%d", i/250, i%250+1))
	}
	ipt := &recordingIPTables{}
	b := NewBackend(ipt, testRenderConfig, prometheus.NewRegistry(), klog.Background())
	if err := b.Sync(context.Background(), state, proxier.Changes{Full: true}); err != nil {
		t.Fatal(err)
	}
	full := b.LastRestoreLines()

	changedName := spn("ns", "svc-42", "http")
	newName := spn("ns", "svc-new", "http")
	deletedName := spn("ns", "svc-7", "http")
	steps := []struct {
		name    string
		mutate  func()
		changed proxier.ServicePortName
		// want lists substrings the restore input must contain.
		want    []string
		maxLine int
	}{
		{"one endpoint changes", func() { state.Endpoints[changedName] = readyEndpoints("10.244.0.43", "10.246.0.1") }, changedName,
			[]string{"--to-destination 10.246.0.1:8080", "-X " + endpointChain(changedName, readyEndpoints("10.245.0.43")[0])}, 12},
		{"one service added", func() {
			state.Services[newName] = clusterIPService(newName, "10.97.0.1", 80)
			state.Endpoints[newName] = readyEndpoints("10.247.0.1")
		}, newName, []string{"-I SWYD-SERVICES 1 ", "--to-destination 10.247.0.1:8080"}, 12},
		{"one service deleted", func() { delete(state.Services, deletedName); delete(state.Endpoints, deletedName) }, deletedName,
			[]string{"-D SWYD-SERVICES ", "-X " + servicePortChain(deletedName)}, 12},
		{"endpoints all removed", func() { delete(state.Endpoints, changedName) }, changedName,
			[]string{"*filter", "has no endpoints", "-D SWYD-SERVICES "}, 12},
	}
	for _, step := range steps {
		step.mutate()
		if err := b.Sync(context.Background(), state, proxier.Changes{ServicePorts: map[proxier.ServicePortName]struct{}{step.changed: {}}}); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		got := ipt.restores[len(ipt.restores)-1]
		lines := b.LastRestoreLines()
		t.Logf("%s at %d Services: %d restore lines (full sync: %d)", step.name, n, lines, full)
		if lines > step.maxLine {
			t.Errorf("%s: %d restore lines, want at most %d:\n%s", step.name, lines, step.maxLine, got)
		}
		for _, w := range step.want {
			if !strings.Contains(got, w) {
				t.Errorf("%s: restore input lacks %q:\n%s", step.name, w, got)
			}
		}
	}
}

func TestRenderServicePortPolicies(t *testing.T) {
	name := spn("default", "web", "")
	local := proxier.Endpoint{IP: netip.MustParseAddr("10.244.1.2"), Port: 8080, Ready: true, Serving: true, NodeName: "node-a"}
	remote := proxier.Endpoint{IP: netip.MustParseAddr("10.244.2.2"), Port: 8080, Ready: true, Serving: true, NodeName: "node-b"}
	tests := []struct {
		name          string
		internalLocal bool
		affinity      bool
		masqAll       bool
		endpoints     []proxier.Endpoint
		wantDispatch  string // substring of the nat dispatch rule ("" for none)
		wantFilter    string // substring of the filter rule ("" for none)
		wantChains    int
		wantInChain   string
	}{
		{name: "cluster policy", endpoints: []proxier.Endpoint{local, remote}, wantDispatch: "-j " + servicePortChain(name), wantChains: 3},
		{name: "no endpoints rejects", wantFilter: "-j REJECT"},
		{name: "internal local with a local endpoint", internalLocal: true, endpoints: []proxier.Endpoint{local, remote},
			wantDispatch: "-j " + localPolicyChain(name), wantChains: 2},
		{name: "internal local without local endpoint drops", internalLocal: true, endpoints: []proxier.Endpoint{remote}, wantFilter: "-j DROP"},
		{name: "session affinity", affinity: true, endpoints: []proxier.Endpoint{local}, wantDispatch: "-j " + servicePortChain(name), wantChains: 2,
			wantInChain: "-m recent --name " + endpointChain(name, local) + " --mask 255.255.255.255 --rcheck --seconds 10800 --reap"},
		{name: "masquerade all", masqAll: true, endpoints: []proxier.Endpoint{local}, wantChains: 2, wantDispatch: "cluster IP",
			wantInChain: `--comment "default/web cluster IP" -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j SWYD-MARK-MASQ`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sp := clusterIPService(name, "10.96.0.10", 80)
			sp.InternalPolicyLocal = tc.internalLocal
			if tc.affinity {
				sp.SessionAffinityTimeout = 10800e9
			}
			cfg := testRenderConfig
			cfg.MasqueradeAll = tc.masqAll
			r := renderServicePort(&cfg, resolve(&cfg, sp, tc.endpoints))
			check := func(what string, rules []string, want string) {
				t.Helper()
				joined := strings.Join(rules, "\n")
				if (want == "") != (len(rules) == 0) || !strings.Contains(joined, want) {
					t.Errorf("%s rules %q, want one containing %q", what, rules, want)
				}
			}
			check("nat dispatch", r.dispatch[natServices], tc.wantDispatch)
			check("filter dispatch", r.dispatch[filterServices], tc.wantFilter)
			if len(r.chains) != tc.wantChains {
				t.Errorf("got %d chains, want %d", len(r.chains), tc.wantChains)
			}
			if tc.wantInChain != "" && (len(r.chains) == 0 || !strings.Contains(strings.Join(r.chains[0].Rules, "\n"), tc.wantInChain)) {
				t.Errorf("first chain %v lacks %q", r.chains, tc.wantInChain)
			}
		})
	}
}

// TestNodePortJumps follows kube-proxy's jump to KUBE-NODEPORTS (iptables/proxier.go):
// with every address, one rule, loopback excluded unless localhost NodePorts are served
// (never over IPv6); with ranges, one rule per range, where the loopback addresses of a
// range are left out in the same case, and the range's other addresses kept.
func TestNodePortJumps(t *testing.T) {
	const head = `-m comment --comment "switchyard service nodeports; NOTE: this must be the last rule in this chain" `
	prefixes := func(ss ...string) []netip.Prefix {
		var out []netip.Prefix
		for _, s := range ss {
			out = append(out, netip.MustParsePrefix(s))
		}
		return out
	}
	to := func(p string) string { return head + "-d " + p + " -m addrtype --dst-type LOCAL -j SWYD-NODEPORTS" }
	tests := []struct {
		name      string
		ipv6      bool
		localhost bool
		addresses []netip.Prefix
		want      []string
	}{
		{name: "every address, localhost NodePorts", localhost: true,
			want: []string{head + "-m addrtype --dst-type LOCAL -j SWYD-NODEPORTS"}},
		{name: "every address, no localhost NodePorts",
			want: []string{head + "-m addrtype --dst-type LOCAL ! -d 127.0.0.0/8 -j SWYD-NODEPORTS"}},
		{name: "every address, IPv6", ipv6: true, localhost: true,
			want: []string{head + "-m addrtype --dst-type LOCAL ! -d ::1/128 -j SWYD-NODEPORTS"}},
		{name: "a /0 among ranges is every address", localhost: true, addresses: prefixes("192.168.0.0/16", "0.0.0.0/0"),
			want: []string{head + "-m addrtype --dst-type LOCAL -j SWYD-NODEPORTS"}},
		{name: "a /0 among ranges, no localhost NodePorts", addresses: prefixes("0.0.0.0/0", "127.0.0.1/32"),
			want: []string{head + "-m addrtype --dst-type LOCAL ! -d 127.0.0.0/8 -j SWYD-NODEPORTS"}},
		{name: "ranges with loopback, localhost NodePorts", localhost: true, addresses: prefixes("192.168.0.0/16", "127.0.0.1/32"),
			want: []string{to("192.168.0.0/16"), to("127.0.0.1/32")}},
		{name: "ranges with loopback, no localhost NodePorts", addresses: prefixes("192.168.0.0/16", "127.0.0.1/32"),
			want: []string{to("192.168.0.0/16")}},
		{name: "a range around loopback keeps its other addresses", addresses: prefixes("0.0.0.0/1"),
			want: []string{to("0.0.0.0/2"), to("64.0.0.0/3"), to("96.0.0.0/4"), to("112.0.0.0/5"), to("120.0.0.0/6"), to("124.0.0.0/7"), to("126.0.0.0/8")}},
		{name: "IPv6 ranges never serve loopback", ipv6: true, localhost: true, addresses: prefixes("fd00::/64", "::1/128", "::/127"),
			want: []string{to("fd00::/64"), to("::/128")}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := RenderConfig{IPv6: tc.ipv6, LocalhostNodePorts: tc.localhost, NodePortAddresses: tc.addresses}
			if diff := cmp.Diff(tc.want, nodePortJumps(&cfg)); diff != "" {
				t.Errorf("rules (-want +got):\n%s", diff)
			}
		})
	}
}
