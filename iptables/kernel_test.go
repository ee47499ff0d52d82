package iptables

import (
	"context"
	"errors"
	"net/netip"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netns"
	"k8s.io/klog/v2"

	"github.com/switchyard/switchyard/proxier"
)

// inFreshNetns runs fn on a goroutine locked to an OS thread that sits in a new, empty
// network namespace, so every iptables command fn starts (children inherit the thread's
// namespace) programs that namespace and never the host's. The namespace disappears when
// the thread leaves it.
func inFreshNetns(t *testing.T, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		// The thread is not unlocked: Go then discards it instead of reusing a thread
		// whose namespace was changed.
		orig, err := netns.Get()
		if err != nil {
			t.Errorf("reading current netns: %v", err)
			return
		}
		defer orig.Close()
		ns, err := netns.New()
		if err != nil {
			t.Errorf("creating netns (needs root): %v", err)
			return
		}
		defer ns.Close()
		defer func() { _ = netns.Set(orig) }()
		fn()
	}()
	<-done
}

func iptablesSave(t *testing.T, flavor Flavor, table Table) string {
	t.Helper()
	out, err := exec.Command("iptables-"+string(flavor)+"-save", "-t", string(table)).CombinedOutput()
	if err != nil {
		t.Fatalf("iptables-%s-save: %v: %s", flavor, err, out)
	}
	return string(out)
}

func mustRun(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
}

// TestBackendInKernel programs a real kernel (a private network namespace on the host)
// through full and partial syncs, with both iptables flavors, and checks the tables hold
// exactly what the desired state says while rules we do not own are left alone.
func TestBackendInKernel(t *testing.T) {
	for _, flavor := range []Flavor{Nft, Legacy} {
		t.Run(string(flavor), func(t *testing.T) {
			if _, err := exec.LookPath("iptables-" + string(flavor) + "-restore"); err != nil {
				t.Fatalf("iptables-%s-restore not found: install the Debian package iptables (make deps)", flavor)
			}
			inFreshNetns(t, func() { testBackendInKernel(t, flavor) })
		})
	}
}

func testBackendInKernel(t *testing.T, flavor Flavor) {
	ctx := context.Background()
	bin := "iptables-" + string(flavor)
	// Someone else's rules, which no sync or cleanup may touch.
	mustRun(t, bin, "-t", "nat", "-N", "KUBE-FOREIGN")
	mustRun(t, bin, "-t", "nat", "-A", "OUTPUT", "-j", "KUBE-FOREIGN")
	mustRun(t, bin, "-t", "nat", "-A", "KUBE-FOREIGN", "-d", "192.0.2.99", "-j", "RETURN")
	// A chain of ours left by an earlier run, and a hook into a chain of the other proxy
	// mode, which the first full sync must both remove.
	mustRun(t, bin, "-t", "nat", "-N", "SWYD-SEP-LEFTOVER")
	mustRun(t, bin, "-t", "filter", "-N", "SWYD-IPVS-FILTER")
	mustRun(t, bin, "-t", "filter", "-A", "INPUT", "-j", "SWYD-IPVS-FILTER")

	ipt, err := New(flavor, false)
	if err != nil {
		t.Fatal(err)
	}
	b := NewBackend(ipt, testRenderConfig, prometheus.NewRegistry(), klog.Background())
	state, web, empty := sampleState()
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
	// present lists rules as fragments separated by "|": some line must hold them all
	// (iptables-save orders a rule's matches its own way).
	expect := func(step string, table Table, present, absent []string) {
		t.Helper()
		dump := iptablesSave(t, flavor, table)
		for _, p := range present {
			if !hasLineWithAll(dump, strings.Split(p, "|")) {
				t.Errorf("%s: %s table lacks %q:\n%s", step, table, p, dump)
			}
		}
		for _, a := range absent {
			if strings.Contains(dump, a) {
				t.Errorf("%s: %s table still has %q:\n%s", step, table, a, dump)
			}
		}
	}
	foreign := []string{":KUBE-FOREIGN", "-A OUTPUT -j KUBE-FOREIGN", "-A KUBE-FOREIGN -d 192.0.2.99/32 -j RETURN"}

	sync(true)
	oldSEP := endpointChain(web, readyEndpoints("10.244.2.3")[0])
	expect("full sync", TableNAT, append([]string{
		"-A PREROUTING -m comment --comment \"switchyard service portals\" -j SWYD-SERVICES",
		"-A POSTROUTING -m comment --comment \"switchyard postrouting rules\" -j SWYD-POSTROUTING",
		"-A SWYD-SERVICES -d 10.96.0.10/32 -p tcp|--dport 80 -j " + servicePortChain(web),
		"-j DNAT --to-destination 10.244.1.2:8080", "-A " + oldSEP,
	}, foreign...), []string{"SWYD-SEP-LEFTOVER"})
	expect("full sync", TableFilter, []string{"-A SWYD-SERVICES -d 10.96.0.11/32 -p tcp|\"default/empty has no endpoints\"|--dport 80 -j REJECT",
		"-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"switchyard service portals\" -j SWYD-SERVICES",
		"-A SWYD-LOCALNET-FIREWALL |! -s 127.0.0.0/8|-d 127.0.0.0/8 |block incoming localnet connections|-m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP",
		"-A INPUT -m comment --comment \"switchyard localnet firewall\" -j SWYD-LOCALNET-FIREWALL",
		"-A OUTPUT -m comment --comment \"switchyard localnet firewall\" -j SWYD-LOCALNET-FIREWALL"}, []string{"SWYD-IPVS-FILTER"})

	state.Endpoints[web] = readyEndpoints("10.244.1.2", "10.244.3.4")
	sync(false, web)
	expect("endpoint replaced", TableNAT, []string{"--to-destination 10.244.3.4:8080"}, []string{oldSEP, "10.244.2.3"})

	state.Endpoints[empty] = readyEndpoints("10.244.5.5")
	sync(false, empty)
	expect("endpoints arrive", TableNAT, []string{"-j " + servicePortChain(empty), "--to-destination 10.244.5.5:8080"}, nil)
	expect("endpoints arrive", TableFilter, nil, []string{"REJECT"})

	delete(state.Services, web)
	delete(state.Endpoints, web)
	sync(false, web)
	expect("service deleted", TableNAT, foreign, []string{servicePortChain(web), "10.96.0.10", "10.244.1.2"})

	// A chain deleted behind our back makes the next partial restore fail (it edits a
	// dispatch rule that is gone); the full sync that follows repairs everything.
	mustRun(t, bin, "-t", "nat", "-F", "SWYD-SERVICES")
	delete(state.Endpoints, empty)
	// Not a PortErrors: the port's rules are not what the kernel refused.
	var refused proxier.PortErrors
	if err := b.Sync(ctx, state, proxier.Changes{ServicePorts: map[proxier.ServicePortName]struct{}{empty: {}}}); err == nil || errors.As(err, &refused) {
		t.Errorf("partial sync over a flushed SWYD-SERVICES returned %v; want an error that triggers a full sync", err)
	}
	sync(true)
	expect("repaired", TableFilter, []string{"default/empty has no endpoints"}, nil)
	expect("repaired", TableNAT, foreign, []string{servicePortChain(empty)})

	for range 2 { // idempotent
		if err := Cleanup(ctx, ipt); err != nil {
			t.Fatalf("cleanup: %v", err)
		}
	}
	expect("cleanup", TableNAT, foreign, []string{"SWYD-"})
	expect("cleanup", TableFilter, nil, []string{"SWYD-"})
}

func hasLineWithAll(dump string, fragments []string) bool {
	for _, line := range strings.Split(dump, "\n") {
		all := true
		for _, f := range fragments {
			all = all && strings.Contains(line, f)
		}
		if all {
			return true
		}
	}
	return false
}

// TestBackendInKernelIPv6 programs an IPv6 Service through ip6tables, in both flavors.
func TestBackendInKernelIPv6(t *testing.T) {
	for _, flavor := range []Flavor{Nft, Legacy} {
		t.Run(string(flavor), func(t *testing.T) {
			inFreshNetns(t, func() {
				ipt, err := New(flavor, true)
				if err != nil {
					t.Fatalf("ip6tables %s: %v (install the Debian package iptables)", flavor, err)
				}
				cfg := RenderConfig{IPv6: true, ResolveConfig: proxier.ResolveConfig{ClusterCIDR: netip.MustParsePrefix("fd00:244::/64")}, MasqueradeMark: "0x4000", NodeName: "node-a"}
				b := NewBackend(ipt, cfg, prometheus.NewRegistry(), klog.Background())
				web, empty := spn("default", "web6", ""), spn("default", "empty6", "")
				state := &proxier.State{NodeName: "node-a",
					Services: map[proxier.ServicePortName]*proxier.ServicePort{
						web:   clusterIPService(web, "fd00:96::10", 80),
						empty: clusterIPService(empty, "fd00:96::11", 80),
					},
					Endpoints: map[proxier.ServicePortName][]proxier.Endpoint{web: readyEndpoints("fd00:244::2")},
				}
				if err := b.Sync(context.Background(), state, proxier.Changes{Full: true}); err != nil {
					t.Fatal(err)
				}
				save := func(table Table) string {
					out, err := exec.Command("ip6tables-"+string(flavor)+"-save", "-t", string(table)).CombinedOutput()
					if err != nil {
						t.Fatalf("ip6tables-save: %v: %s", err, out)
					}
					return string(out)
				}
				for table, want := range map[Table][]string{
					TableNAT:    {"-d fd00:96::10/128 -p tcp|--dport 80 -j " + servicePortChain(web), "-j DNAT --to-destination [fd00:244::2]:8080", "! -d ::1/128 -m comment|-j SWYD-NODEPORTS"},
					TableFilter: {"-d fd00:96::11/128 -p tcp|default/empty6 has no endpoints|-j REJECT"},
				} {
					dump := save(table)
					for _, w := range want {
						if !hasLineWithAll(dump, strings.Split(w, "|")) {
							t.Errorf("%s table lacks %q:\n%s", table, w, dump)
						}
					}
				}
				if err := Cleanup(context.Background(), ipt); err != nil {
					t.Fatal(err)
				}
				if dump := save(TableNAT); strings.Contains(dump, "SWYD-") {
					t.Errorf("cleanup left rules:\n%s", dump)
				}
			})
		})
	}
}

// countingIPTables counts the restores a sync makes.
type countingIPTables struct {
	Interface
	restores int
}

func (c *countingIPTables) Restore(ctx context.Context, data []byte) error {
	c.restores++
	return c.Interface.Restore(ctx, data)
}

// TestFullSyncWritesHooksInItsRestore: a full sync puts its hooks in place in the same
// single restore as its chains, whatever state they are in: missing, present, deleted
// by hand, or duplicated. (Checking them one command at a time would read the whole
// table per hook with the legacy flavor, which dominated full syncs at 10,000 Services.)
func TestFullSyncWritesHooksInItsRestore(t *testing.T) {
	const outputHook = `-A OUTPUT -m comment --comment "switchyard service portals" -j SWYD-SERVICES`
	for _, flavor := range []Flavor{Nft, Legacy} {
		t.Run(string(flavor), func(t *testing.T) {
			inFreshNetns(t, func() {
				ctx := context.Background()
				ipt, err := New(flavor, false)
				if err != nil {
					t.Fatal(err)
				}
				counting := &countingIPTables{Interface: ipt}
				b := NewBackend(counting, testRenderConfig, prometheus.NewRegistry(), klog.Background())
				state, _, _ := sampleState()
				bin := "iptables-" + string(flavor)
				hookArgs := []string{"-t", "nat", "OUTPUT", "-m", "comment", "--comment", "switchyard service portals", "-j", ServicesChain}
				withOp := func(op string) []string { return append([]string{hookArgs[0], hookArgs[1], op}, hookArgs[2:]...) }
				for _, step := range []struct {
					name   string
					before func()
				}{
					{"first sync", func() {}},
					{"hooks in place", func() {}},
					{"a hook deleted by hand", func() { mustRun(t, bin, withOp("-D")...) }},
					{"a hook duplicated by hand", func() { mustRun(t, bin, withOp("-A")...) }},
				} {
					step.before()
					counting.restores = 0
					if err := b.Sync(ctx, state, proxier.Changes{Full: true}); err != nil {
						t.Fatalf("%s: %v", step.name, err)
					}
					if counting.restores != 1 {
						t.Errorf("%s: %d restores, want 1", step.name, counting.restores)
					}
					for _, table := range []Table{TableNAT, TableFilter} {
						dump := iptablesSave(t, flavor, table)
						for _, h := range append(append(CommonHooks(), filterHooks...), localnetHooks...) {
							if h.Table != table {
								continue
							}
							if n := strings.Count(dump, h.saveLine()+"\n"); n != 1 {
								t.Errorf("%s: hook %q is in the %s table %d times, want once:\n%s", step.name, h.saveLine(), table, n, dump)
							}
						}
					}
					if dump := iptablesSave(t, flavor, TableNAT); !strings.Contains(dump, outputHook) {
						t.Errorf("%s: the save format changed: %q not found", step.name, outputHook)
					}
				}
			})
		})
	}
}

// corruptingIPTables rewrites lines of each restore input before the kernel sees them,
// the way a renderer bug or a kernel without some module makes the kernel refuse a rule.
// It only rewrites rules in a port's own chains, which name the port whatever they say.
type corruptingIPTables struct {
	Interface
	corrupt func(line string) string // nil passes every line through
}

func (c *corruptingIPTables) Restore(ctx context.Context, data []byte) error {
	if c.corrupt == nil {
		return c.Interface.Restore(ctx, data)
	}
	lines := strings.Split(string(data), "\n")
	for i, l := range lines {
		lines[i] = c.corrupt(l)
	}
	return c.Interface.Restore(ctx, []byte(strings.Join(lines, "\n")))
}

// TestRefusedServicePortInKernel: the real iptables-restore of each flavor refuses the
// rules of one Service, and the node keeps programming the others, a Service added while
// it fails included, then programs the refused one once the kernel takes it.
func TestRefusedServicePortInKernel(t *testing.T) {
	const badEndpoint = "10.244.9.9"
	faults := []struct {
		name    string
		corrupt func(line string) string
	}{
		{
			// The shape of the defect that stopped whole nodes: iptables-nft-restore
			// blames it on the table's COMMIT, legacy on the rule.
			name: "a jump to a chain nobody writes",
			corrupt: func(l string) string {
				if !strings.HasPrefix(l, "-A "+ChainPrefix+"SVC-") || !strings.Contains(l, "-> "+badEndpoint+":") {
					return l
				}
				i := strings.LastIndex(l, "-j ")
				return l[:i] + "-j " + ChainPrefix + "NOWHERE"
			},
		},
		{
			name: "a match the kernel lacks",
			corrupt: func(l string) string {
				if !strings.Contains(l, "--to-destination "+badEndpoint+":") {
					return l
				}
				return strings.Replace(l, " -j DNAT", " -m nosuchmatch -j DNAT", 1)
			},
		},
	}
	for _, flavor := range []Flavor{Nft, Legacy} {
		for _, fault := range faults {
			t.Run(string(flavor)+"/"+fault.name, func(t *testing.T) {
				inFreshNetns(t, func() { testRefusedServicePortInKernel(t, flavor, fault.corrupt, badEndpoint) })
			})
		}
	}
}

func testRefusedServicePortInKernel(t *testing.T, flavor Flavor, corrupt func(string) string, badEndpoint string) {
	ctx := context.Background()
	ipt, err := New(flavor, false)
	if err != nil {
		t.Fatal(err)
	}
	kernel := &corruptingIPTables{Interface: ipt, corrupt: corrupt}
	b := NewBackend(kernel, testRenderConfig, prometheus.NewRegistry(), klog.Background())
	web, bad, late := spn("default", "web", "http"), spn("default", "bad", "http"), spn("default", "late", "http")
	state := &proxier.State{NodeName: "node-a",
		Services: map[proxier.ServicePortName]*proxier.ServicePort{
			web: clusterIPService(web, "10.96.0.10", 80),
			bad: clusterIPService(bad, "10.96.0.20", 80),
		},
		Endpoints: map[proxier.ServicePortName][]proxier.Endpoint{web: readyEndpoints("10.244.1.2"), bad: readyEndpoints(badEndpoint)},
	}
	webDNAT, badDNAT, lateDNAT := "--to-destination 10.244.1.2:8080", "--to-destination "+badEndpoint+":8080", "--to-destination 10.244.3.3:8080"
	for _, step := range []struct {
		name        string
		changes     proxier.Changes
		kernelTakes bool
		wantRefused bool
		present     []string
		absent      []string
	}{
		{name: "full sync", changes: proxier.Changes{Full: true}, wantRefused: true, present: []string{webDNAT}, absent: []string{badDNAT, "10.96.0.20"}},
		{
			// The loop retries the refused port with every change that follows.
			name:    "a Service added while one is refused",
			changes: proxier.Changes{ServicePorts: map[proxier.ServicePortName]struct{}{bad: {}, late: {}}}, wantRefused: true,
			present: []string{webDNAT, lateDNAT, "-d 10.96.0.30/32"}, absent: []string{badDNAT, "10.96.0.20"},
		},
		{
			name:    "the kernel takes it",
			changes: proxier.Changes{ServicePorts: map[proxier.ServicePortName]struct{}{bad: {}}}, kernelTakes: true,
			present: []string{webDNAT, lateDNAT, badDNAT, "-d 10.96.0.20/32"},
		},
	} {
		if step.name == "a Service added while one is refused" {
			state.Services[late] = clusterIPService(late, "10.96.0.30", 80)
			state.Endpoints[late] = readyEndpoints("10.244.3.3")
		}
		if step.kernelTakes {
			kernel.corrupt = nil
		}
		err := b.Sync(ctx, state, step.changes)
		var refused proxier.PortErrors
		switch {
		case step.wantRefused && (!errors.As(err, &refused) || len(refused) != 1 || refused[bad] == nil):
			t.Fatalf("%s: Sync() = %v, want the rules of %s refused and nothing else", step.name, err, bad)
		case !step.wantRefused && err != nil:
			t.Fatalf("%s: %v", step.name, err)
		}
		if step.wantRefused {
			t.Logf("%s: %v", step.name, refused[bad])
		}
		dump := iptablesSave(t, flavor, TableNAT)
		for _, p := range step.present {
			if !strings.Contains(dump, p) {
				t.Errorf("%s: the nat table lacks %q:\n%s", step.name, p, dump)
			}
		}
		for _, a := range step.absent {
			if strings.Contains(dump, a) {
				t.Errorf("%s: the nat table has %q:\n%s", step.name, a, dump)
			}
		}
	}
}
