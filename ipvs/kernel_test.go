//go:build kernellab

package ipvs

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"

	"github.com/switchyard/switchyard/dummy"
	"github.com/switchyard/switchyard/iptables"
	"github.com/switchyard/switchyard/proxier"
)

// These tests need a kernel with IPVS: `make test` runs them inside the kernel lab
// (go test -tags kernellab -exec hack/kernel-lab/run.sh ./ipvs/).

func requireIPVS(t *testing.T) {
	t.Helper()
	if _, err := os.Stat("/proc/net/ip_vs"); err != nil {
		t.Fatalf("this kernel has no IPVS (%v): run these tests in the kernel lab: go test -tags kernellab -exec hack/kernel-lab/run.sh ./ipvs/", err)
	}
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// ipvsTable is `ipvsadm -Ln` reduced to "VIP:PORT/PROTO -> RIP:RPORT weight W" lines and
// "VIP:PORT/PROTO sched" lines, sorted.
func ipvsTable(t *testing.T) []string {
	t.Helper()
	var out []string
	var vs string
	for _, line := range strings.Split(run(t, "ipvsadm", "-Ln"), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 3 && (f[0] == "TCP" || f[0] == "UDP" || f[0] == "SCTP"):
			vs = f[1] + "/" + f[0]
			out = append(out, vs+" "+strings.Join(f[2:], " "))
		case len(f) >= 4 && f[0] == "->" && f[1] != "RemoteAddress:Port":
			out = append(out, vs+" -> "+f[1]+" weight "+f[3])
		}
	}
	slices.Sort(out)
	return out
}

func svcName(name string, protocol v1.Protocol) proxier.ServicePortName {
	return proxier.ServicePortName{NamespacedName: types.NamespacedName{Namespace: "default", Name: name}, Protocol: protocol}
}

// testNode is the node the backend runs on; onTestNode lists the endpoints it hosts
// (the loopback set must hold those and no others).
const testNode = "node-a"

var onTestNode = map[string]bool{"10.244.1.2": true, "10.244.3.4": true}

func endpoints(ips ...string) []proxier.Endpoint {
	var eps []proxier.Endpoint
	for _, ip := range ips {
		e := proxier.Endpoint{IP: netip.MustParseAddr(ip), Port: 8080, Ready: true, Serving: true}
		if onTestNode[ip] {
			e.NodeName = testNode
		}
		eps = append(eps, e)
	}
	return eps
}

// kernelBackend is a backend over the kernel's IPVS, legacy iptables and dev, with the
// tests' scheduler, pod network and mark; tweak sets the rest of its configuration.
func kernelBackend(t *testing.T, dev *dummy.Device, tweak func(*Config)) (*Backend, Interface, iptables.Interface) {
	t.Helper()
	ipt, err := iptables.New(iptables.Legacy, false)
	if err != nil {
		t.Fatal(err)
	}
	handle, err := New()
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Scheduler: "rr", ResolveConfig: proxier.ResolveConfig{ClusterCIDR: netip.MustParsePrefix("10.244.0.0/16")}, MasqueradeMark: "0x4000"}
	tweak(&cfg)
	return NewBackend(handle, ipt, dev, cfg, prometheus.NewRegistry(), klog.Background()), handle, ipt
}

// TestBackendInKernel drives the IPVS backend through full and partial syncs in a real
// kernel and checks, with the kernel's own tools, that IPVS, kube-ipvs0 and the ipsets
// hold exactly the desired state, while a virtual server and an address that are not ours
// are left alone.
func TestBackendInKernel(t *testing.T) {
	requireIPVS(t)
	ctx := context.Background()
	// Someone else's virtual server and address, which must survive every sync and cleanup.
	run(t, "ipvsadm", "-A", "-t", "10.99.0.1:80", "-s", "rr")
	dev, err := dummy.Ensure(dummy.DefaultName)
	if err != nil {
		t.Fatal(err)
	}
	run(t, "ip", "addr", "add", "10.99.0.2/32", "dev", dummy.DefaultName)
	// An address of ours left behind by a Service deleted while we were down.
	if err := dev.Bind(netip.MustParseAddr("10.96.0.99")); err != nil {
		t.Fatal(err)
	}
	b, handle, ipt := kernelBackend(t, dev, func(c *Config) { c.TerminationGrace = time.Minute })

	web, empty, dns := svcName("web", v1.ProtocolTCP), svcName("empty", v1.ProtocolTCP), svcName("dns", v1.ProtocolUDP)
	state := &proxier.State{
		NodeName: testNode,
		Services: map[proxier.ServicePortName]*proxier.ServicePort{
			web:   {Name: web, ClusterIP: netip.MustParseAddr("10.96.0.10"), Port: 80, Protocol: v1.ProtocolTCP},
			empty: {Name: empty, ClusterIP: netip.MustParseAddr("10.96.0.11"), Port: 80, Protocol: v1.ProtocolTCP, SessionAffinityTimeout: 3 * time.Hour},
			dns:   {Name: dns, ClusterIP: netip.MustParseAddr("10.96.0.10"), Port: 53, Protocol: v1.ProtocolUDP},
		},
		Endpoints: map[proxier.ServicePortName][]proxier.Endpoint{
			web: endpoints("10.244.1.2", "10.244.2.3"),
			dns: endpoints("10.244.1.2"),
		},
	}
	sync := func(full bool, changed ...proxier.ServicePortName) {
		t.Helper()
		c := proxier.Changes{Full: full, ServicePorts: map[proxier.ServicePortName]struct{}{}}
		for _, n := range changed {
			c.ServicePorts[n] = struct{}{}
		}
		if err := b.Sync(ctx, state, c); err != nil {
			t.Fatalf("sync: %v", err)
		}
	}
	expectIPVS := func(step string, want ...string) {
		t.Helper()
		want = append(want, "10.99.0.1:80/TCP rr") // never ours, never touched
		slices.Sort(want)
		if diff := cmp.Diff(want, ipvsTable(t)); diff != "" {
			t.Errorf("%s: ipvsadm -Ln (-want +got):\n%s", step, diff)
		}
	}
	expectAddrs := func(step string, want ...string) {
		t.Helper()
		out := run(t, "ip", "-4", "-o", "addr", "show", "dev", dummy.DefaultName)
		var got []string
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			if f := strings.Fields(line); len(f) >= 4 {
				got = append(got, strings.TrimSuffix(f[3], "/32"))
			}
		}
		want = append(want, "10.99.0.2")
		slices.Sort(got)
		slices.Sort(want)
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("%s: addresses on %s (-want +got):\n%s", step, dummy.DefaultName, diff)
		}
	}
	expectSet := func(step, set string, want ...string) {
		t.Helper()
		var got []string
		members := false
		for _, line := range strings.Split(run(t, "ipset", "list", set), "\n") {
			if members && strings.TrimSpace(line) != "" {
				got = append(got, strings.TrimSpace(line))
			}
			members = members || strings.HasPrefix(line, "Members:")
		}
		slices.Sort(got)
		slices.Sort(want)
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("%s: ipset %s (-want +got):\n%s", step, set, diff)
		}
	}

	sync(true)
	expectIPVS("full sync",
		"10.96.0.10:80/TCP rr",
		"10.96.0.10:80/TCP -> 10.244.1.2:8080 weight 1",
		"10.96.0.10:80/TCP -> 10.244.2.3:8080 weight 1",
		"10.96.0.10:53/UDP rr",
		"10.96.0.10:53/UDP -> 10.244.1.2:8080 weight 1",
		"10.96.0.11:80/TCP rr persistent 10800",
	)
	expectAddrs("full sync", "10.96.0.10", "10.96.0.11")
	expectSet("full sync", clusterIPSet, "10.96.0.10,tcp:80", "10.96.0.10,udp:53", "10.96.0.11,tcp:80")
	// 10.244.2.3 runs on another node: a pod there never reaches itself through us.
	expectSet("full sync", loopbackSet, "10.244.1.2,tcp:8080,10.244.1.2", "10.244.1.2,udp:8080,10.244.1.2")
	nat := run(t, "iptables-legacy-save", "-t", "nat")
	for _, want := range []string{"-A PREROUTING -m comment --comment \"switchyard service portals\" -j SWYD-SERVICES",
		"--match-set SWYD-CLUSTER-IP dst,dst -j SWYD-MARK-MASQ", "--match-set SWYD-LOOP-BACK dst,dst,src -j MASQUERADE"} {
		if !strings.Contains(nat, want) {
			t.Errorf("full sync: nat table lacks %q:\n%s", want, nat)
		}
	}

	// An endpoint replaced: the new one joins at once, the old one drains at weight 0.
	state.Endpoints[web] = endpoints("10.244.1.2", "10.244.3.4")
	state.Endpoints[dns] = endpoints("10.244.3.4")
	sync(false, web, dns)
	expectIPVS("endpoint replaced",
		"10.96.0.10:80/TCP rr",
		"10.96.0.10:80/TCP -> 10.244.1.2:8080 weight 1",
		"10.96.0.10:80/TCP -> 10.244.2.3:8080 weight 0",
		"10.96.0.10:80/TCP -> 10.244.3.4:8080 weight 1",
		"10.96.0.10:53/UDP rr",
		"10.96.0.10:53/UDP -> 10.244.3.4:8080 weight 1", // UDP: removed at once
		"10.96.0.11:80/TCP rr persistent 10800",
	)
	if err := b.DrainTerminating(); err != nil {
		t.Fatal(err)
	}
	expectIPVS("drained",
		"10.96.0.10:80/TCP rr",
		"10.96.0.10:80/TCP -> 10.244.1.2:8080 weight 1",
		"10.96.0.10:80/TCP -> 10.244.3.4:8080 weight 1",
		"10.96.0.10:53/UDP rr",
		"10.96.0.10:53/UDP -> 10.244.3.4:8080 weight 1",
		"10.96.0.11:80/TCP rr persistent 10800",
	)
	expectSet("endpoint replaced", loopbackSet, "10.244.1.2,tcp:8080,10.244.1.2", "10.244.3.4,tcp:8080,10.244.3.4", "10.244.3.4,udp:8080,10.244.3.4")

	// Deleting web keeps its address, which dns still uses; deleting dns too frees it.
	delete(state.Services, web)
	sync(false, web)
	expectAddrs("web deleted", "10.96.0.10", "10.96.0.11")
	delete(state.Services, dns)
	sync(false, dns)
	expectIPVS("web and dns deleted", "10.96.0.11:80/TCP rr persistent 10800")
	expectAddrs("web and dns deleted", "10.96.0.11")
	expectSet("web and dns deleted", clusterIPSet, "10.96.0.11,tcp:80")
	expectSet("web and dns deleted", loopbackSet)

	// Deleting a member that is not there is not an error (a retry after a partial failure).
	if err := (ipsets{}).Del(SetEntry{Set: clusterIPSet, IP: netip.MustParseAddr("10.96.9.9"), Protocol: v1.ProtocolTCP, Port: 9}); err != nil {
		t.Errorf("deleting a missing set member: %v", err)
	}

	// Drift behind our back is repaired by the next full sync.
	run(t, "ipvsadm", "-D", "-t", "10.96.0.11:80")
	run(t, "ip", "addr", "del", "10.96.0.11/32", "dev", dummy.DefaultName)
	sync(true)
	expectIPVS("repaired", "10.96.0.11:80/TCP rr persistent 10800")
	expectAddrs("repaired", "10.96.0.11")

	// A load balancer with a health-check node port and source ranges that do not hold
	// the node's IP: the port goes into the bitmap:port set (and lists back as the member
	// it is), and the kernel takes the rule that drops the node's own connections after
	// IPVS (xt_ipvs), in a partial sync and again in a full one.
	lb := svcName("lb", v1.ProtocolTCP)
	state.NodeIP = netip.MustParseAddr("192.0.2.1")
	state.Services[lb] = &proxier.ServicePort{Name: lb, ClusterIP: netip.MustParseAddr("10.96.0.12"), Port: 80, Protocol: v1.ProtocolTCP,
		LoadBalancerIPs: []netip.Addr{netip.MustParseAddr("198.51.100.12")}, LoadBalancerSourceRanges: []netip.Prefix{netip.MustParsePrefix("198.18.0.0/16")},
		ExternalPolicyLocal: true, HealthCheckNodePort: 32001}
	state.Endpoints[lb] = endpoints("10.244.1.2")
	for _, full := range []bool{false, true} {
		step := fmt.Sprintf("load balancer (full sync %v)", full)
		sync(full, lb)
		expectSet(step, healthCheckNodePortSet, "32001")
		filter := run(t, "iptables-legacy-save", "-t", "filter")
		for _, want := range []string{"-A OUTPUT -m comment --comment \"switchyard ipvs access filter\" -j SWYD-IPVS-OUT-FILTER",
			"-A SWYD-IPVS-OUT-FILTER -s 198.51.100.12/32", "-m ipvs --vproto 6 --vaddr 198.51.100.12 --vport 80 -j DROP", "--match-set SWYD-HEALTH-CHECK-NODE-PORT dst -j ACCEPT"} {
			if !strings.Contains(filter, want) {
				t.Errorf("%s: filter table lacks %q:\n%s", step, want, filter)
			}
		}
	}

	for range 2 { // idempotent
		if err := Cleanup(ctx, handle, ipt, dummy.DefaultName); err != nil {
			t.Fatalf("cleanup: %v", err)
		}
	}
	expectIPVS("cleanup")
	expectAddrs("cleanup") // the device stays: someone else's address is on it
	for _, table := range []string{"nat", "filter"} {
		if dump := run(t, "iptables-legacy-save", "-t", table); strings.Contains(dump, "SWYD-") {
			t.Errorf("cleanup: %s table still has our rules:\n%s", table, dump)
		}
	}
	if out, err := exec.Command("ipset", "list", "-n").CombinedOutput(); err != nil || strings.Contains(string(out), "SWYD-") {
		t.Errorf("cleanup: ipsets left (err %v): %s", err, out)
	}
}

// ipvsTimeouts reads IPVS's connection timeouts back with ipvsadm.
func ipvsTimeouts(t *testing.T) Timeouts {
	t.Helper()
	// "Timeout (tcp tcpfin udp): 900 120 300"
	out := strings.TrimSpace(run(t, "ipvsadm", "-L", "--timeout"))
	var tcp, tcpFin, udp int
	if _, err := fmt.Sscanf(out[strings.LastIndex(out, ":")+1:], "%d %d %d", &tcp, &tcpFin, &udp); err != nil {
		t.Fatalf("ipvsadm -L --timeout: %q: %v", out, err)
	}
	return Timeouts{TCP: time.Duration(tcp) * time.Second, TCPFin: time.Duration(tcpFin) * time.Second, UDP: time.Duration(udp) * time.Second}
}

// TestTimeoutsInKernel sets IPVS's connection timeouts over netlink, as kube-proxy's
// ConfigureTimeouts does, and reads them back with ipvsadm: those given are set in whole
// seconds, and one given as 0 is left as it was.
func TestTimeoutsInKernel(t *testing.T) {
	requireIPVS(t)
	handle, err := New()
	if err != nil {
		t.Fatal(err)
	}
	before := ipvsTimeouts(t)
	t.Cleanup(func() {
		if err := handle.ConfigureTimeouts(before); err != nil {
			t.Errorf("restoring the IPVS timeouts: %v", err)
		}
	})
	if err := handle.ConfigureTimeouts(Timeouts{TCP: 2*time.Hour + 500*time.Millisecond, UDP: 45 * time.Second}); err != nil {
		t.Fatal(err)
	}
	want := Timeouts{TCP: 2 * time.Hour, TCPFin: before.TCPFin, UDP: 45 * time.Second}
	if got := ipvsTimeouts(t); got != want {
		t.Errorf("after setting the TCP and UDP timeouts: ipvsadm shows %+v, want %+v", got, want)
	}
	if err := handle.ConfigureTimeouts(Timeouts{TCPFin: 30 * time.Second}); err != nil {
		t.Fatal(err)
	}
	want.TCPFin = 30 * time.Second
	if got := ipvsTimeouts(t); got != want {
		t.Errorf("after setting the FIN timeout alone: ipvsadm shows %+v, want %+v", got, want)
	}
}

// TestExcludeCIDRsInKernel: the virtual server of a deleted Service whose address is in
// ExcludeCIDRs stays in the kernel with its real server, through partial and full syncs,
// and the Service back takes it over; one outside goes.
func TestExcludeCIDRsInKernel(t *testing.T) {
	requireIPVS(t)
	ctx := context.Background()
	dev, err := dummy.Ensure(dummy.DefaultName)
	if err != nil {
		t.Fatal(err)
	}
	b, handle, ipt := kernelBackend(t, dev, func(c *Config) { c.ExcludeCIDRs = []netip.Prefix{netip.MustParsePrefix("10.96.5.0/24")} })
	t.Cleanup(func() {
		_ = exec.Command("ipvsadm", "-D", "-t", "10.96.5.10:80").Run() // ours no more: Cleanup leaves it
		if err := Cleanup(ctx, handle, ipt, dummy.DefaultName); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	kept, gone := svcName("kept", v1.ProtocolTCP), svcName("gone", v1.ProtocolTCP)
	services := func() map[proxier.ServicePortName]*proxier.ServicePort {
		return map[proxier.ServicePortName]*proxier.ServicePort{
			kept: {Name: kept, ClusterIP: netip.MustParseAddr("10.96.5.10"), Port: 80, Protocol: v1.ProtocolTCP},
			gone: {Name: gone, ClusterIP: netip.MustParseAddr("10.96.6.10"), Port: 80, Protocol: v1.ProtocolTCP},
		}
	}
	state := &proxier.State{NodeName: testNode, Services: services(),
		Endpoints: map[proxier.ServicePortName][]proxier.Endpoint{kept: endpoints("10.244.1.2"), gone: endpoints("10.244.1.2")}}
	both := map[proxier.ServicePortName]struct{}{kept: {}, gone: {}}
	expect := func(step string, want ...string) {
		t.Helper()
		var got []string
		for _, line := range ipvsTable(t) {
			if strings.HasPrefix(line, "10.96.5.") || strings.HasPrefix(line, "10.96.6.") {
				got = append(got, line)
			}
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("%s: ipvsadm -Ln (-want +got):\n%s", step, diff)
		}
	}
	if err := b.Sync(ctx, state, proxier.Changes{Full: true}); err != nil {
		t.Fatalf("full sync: %v", err)
	}
	delete(state.Services, kept)
	delete(state.Services, gone)
	if err := b.Sync(ctx, state, proxier.Changes{ServicePorts: both}); err != nil {
		t.Fatalf("partial sync deleting both: %v", err)
	}
	left := []string{"10.96.5.10:80/TCP -> 10.244.1.2:8080 weight 1", "10.96.5.10:80/TCP rr"}
	expect("both Services deleted", left...)
	if err := b.Sync(ctx, state, proxier.Changes{Full: true}); err != nil {
		t.Fatalf("full sync: %v", err)
	}
	expect("full sync after", left...)

	state.Services = services()
	if err := b.Sync(ctx, state, proxier.Changes{ServicePorts: both}); err != nil {
		t.Fatalf("partial sync of both back: %v", err)
	}
	expect("both Services back",
		"10.96.5.10:80/TCP -> 10.244.1.2:8080 weight 1", "10.96.5.10:80/TCP rr", "10.96.6.10:80/TCP -> 10.244.1.2:8080 weight 1", "10.96.6.10:80/TCP rr")
}
