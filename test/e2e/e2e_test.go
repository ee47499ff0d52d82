// Package e2e runs the switchyard binary against a real kube-apiserver, in a network
// namespace on the host, with real packets from a client to "pods" through the rules it
// programs. It needs root, iproute2, iptables and the control plane binaries (make
// controlplane); missing pieces fail the tests with what to install.
package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/switchyard/switchyard/internal/lab"
)

var binDir string

// perServiceChain matches the declaration of a per-service or per-endpoint chain.
var perServiceChain = regexp.MustCompile(`(?m)^:(SWYD-(?:SVC|SVL|SEP)-[A-Z0-9]+) `)

// Environment of a run inside the kernel lab's guest, set by runInKernelLab.
const (
	envGuestKubeconfig = "SWYD_E2E_GUEST_KUBECONFIG"
	envGuestBinDir     = "SWYD_E2E_GUEST_BIN"
)

func TestMain(m *testing.M) {
	if dir := os.Getenv(envGuestBinDir); dir != "" {
		// Inside the guest: the host built the binaries already.
		binDir = dir
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "switchyard-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := 1
	if err := buildBinaries(dir); err != nil {
		fmt.Fprintln(os.Stderr, "building binaries for e2e:", err)
	} else {
		code = m.Run()
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

// buildBinaries builds the binaries under test from this checkout, so the test never runs
// a stale build.
func buildBinaries(dir string) error {
	for _, pkg := range []string{"cmd/switchyard", "hack/labagent"} {
		out, err := exec.Command("go", "build", "-o", filepath.Join(dir, filepath.Base(pkg)), "github.com/switchyard/switchyard/"+pkg).CombinedOutput()
		if err != nil {
			return fmt.Errorf("go build %s: %w: %s", pkg, err, out)
		}
	}
	return nil
}

func startLab(t *testing.T, pods int) *lab.Lab {
	t.Helper()
	return startLabWith(t, lab.Options{Pods: pods})
}

// startLabWith builds a lab with the given options; the scratch directory, the agent and
// (inside the kernel lab) the host's apiserver are filled in.
func startLabWith(t *testing.T, opts lab.Options) *lab.Lab {
	t.Helper()
	for _, tool := range []string{"ip", "iptables-nft-save", "iptables-legacy-save", "sysctl", "curl", "ipvsadm"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found: install the Debian packages iproute2, iptables, procps, curl and ipvsadm (make deps)", tool)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	opts.Dir, opts.Agent, opts.Kubeconfig = t.TempDir(), filepath.Join(binDir, "labagent"), os.Getenv(envGuestKubeconfig)
	l, err := lab.Start(ctx, opts)
	if err != nil {
		t.Fatalf("starting the lab: %v", err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("cleaning up the lab: %v", err)
		}
	})
	return l
}

// proxyMode is one way of running switchyard in the end-to-end table.
type proxyMode struct {
	name      string
	flag      string // --proxy-mode
	flavor    string // the iptables flavor the node uses
	kernelLab bool   // needs IPVS: runs inside the kernel lab's guest
}

var proxyModes = []proxyMode{
	{name: "iptables-nft", flag: "iptables", flavor: "nft"},
	{name: "iptables-legacy", flag: "iptables", flavor: "legacy"},
	// The lab kernel has no nf_tables: its iptables is the legacy flavor.
	{name: "ipvs", flag: "ipvs", flavor: "legacy", kernelLab: true},
}

// forEachMode runs a scenario once per proxy mode; IPVS modes run inside the kernel lab.
func forEachMode(t *testing.T, test string, scenario func(t *testing.T, mode proxyMode)) {
	forModes(t, test, proxyModes, scenario)
}

// forModes runs a scenario once per given mode; kernel-lab modes run inside the guest.
func forModes(t *testing.T, test string, modes []proxyMode, scenario func(t *testing.T, mode proxyMode)) {
	for _, mode := range modes {
		t.Run(mode.name, func(t *testing.T) {
			start := time.Now()
			if mode.kernelLab && os.Getenv(envGuestKubeconfig) == "" {
				runInKernelLab(t, "^"+test+"$/^"+mode.name+"$")
			} else {
				scenario(t, mode)
			}
			t.Logf("%s e2e took %s", mode.name, time.Since(start).Round(100*time.Millisecond))
		})
	}
}

// startProxy builds a lab and runs switchyard there with kube-proxy's flags (extra ones
// are added after, so they win).
func startProxy(t *testing.T, mode proxyMode, extraFlags ...string) (*lab.Lab, context.Context) {
	t.Helper()
	l := startLab(t, 3)
	ctx, _ := startProxyIn(t, l, mode, extraFlags...)
	waitForFullSync(ctx, t, l, 3*time.Minute)
	return l, ctx
}

// waitForFullSync waits until the proxy has finished its first full sync in every IP
// family, so that a test's window for one change starts when the proxy is ready, not
// when its process started (informer lists and the first sync of 1,000 Services take
// tens of seconds in the kernel lab, where the IPv6 proxier, with nothing to program,
// is done long before the IPv4 one).
func waitForFullSync(ctx context.Context, t *testing.T, l *lab.Lab, limit time.Duration) {
	t.Helper()
	err := lab.Eventually(ctx, limit, 250*time.Millisecond, func() error {
		out, err := l.NodeOutput(ctx, "curl", "-sf", "http://127.0.0.1:10249/metrics")
		if err != nil {
			return err
		}
		families := 0
		for _, line := range strings.Split(out, "\n") {
			if !strings.HasPrefix(line, "kubeproxy_sync_full_proxy_rules_duration_seconds_count") {
				continue
			}
			if strings.HasSuffix(line, " 0") {
				return fmt.Errorf("no full sync yet: %s", line)
			}
			families++
		}
		if families == 0 {
			return fmt.Errorf("no full sync series yet")
		}
		return nil
	})
	if err != nil {
		t.Fatalf("waiting for the proxy's first full sync: %v", err)
	}
}

// fullSyncCount is how many full syncs the proxy has completed in IPv4.
func fullSyncCount(ctx context.Context, t *testing.T, l *lab.Lab) int {
	t.Helper()
	out, err := l.NodeOutput(ctx, "curl", "-sf", "http://127.0.0.1:10249/metrics")
	if err != nil {
		t.Fatalf("reading the proxy's metrics: %v", err)
	}
	const series = "kubeproxy_sync_full_proxy_rules_duration_seconds_count{"
	for _, line := range strings.Split(out, "\n") {
		if !strings.HasPrefix(line, series) || !strings.Contains(line, `ip_family="IPv4"`) {
			continue
		}
		count, err := strconv.Atoi(line[strings.LastIndex(line, " ")+1:])
		if err != nil {
			t.Fatalf("the proxy's metrics: %q: %v", line, err)
		}
		return count
	}
	t.Fatalf("the proxy's metrics have no IPv4 %s} series", series)
	return 0
}

// startProxyIn runs switchyard in the lab l, as startProxy does, and returns the path of
// its log.
func startProxyIn(t *testing.T, l *lab.Lab, mode proxyMode, extraFlags ...string) (context.Context, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	if mode.flavor == "legacy" && !mode.kernelLab {
		// kubelet leaves this hint in the flavor it uses; switchyard must follow it.
		// A restarted proxy finds the hint from its first start.
		if _, err := l.NodeOutput(ctx, "iptables-legacy", "-t", "mangle", "-S", "KUBE-IPTABLES-HINT"); err != nil {
			if _, err := l.NodeOutput(ctx, "iptables-legacy", "-t", "mangle", "-N", "KUBE-IPTABLES-HINT"); err != nil {
				t.Fatalf("creating the legacy hint chain: %v", err)
			}
		}
	}
	logPath, err := l.StartProxy(filepath.Join(binDir, "switchyard"), append([]string{
		"--proxy-mode=" + mode.flag,
		"--kubeconfig=" + l.Kubeconfig,
		"--hostname-override=" + lab.NodeName,
		"--cluster-cidr=" + lab.ClusterCIDR,
		"--metrics-bind-address=127.0.0.1:10249",
		"--healthz-bind-address=127.0.0.1:10256",
		"--conntrack-max-per-core=0",
		"-v=2",
	}, extraFlags...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := os.ReadFile(logPath)
			// Each line marked, so that `make test`'s filter of the apiserver's info
			// lines (which look the same) keeps the proxy's.
			t.Logf("switchyard log:\n%s", regexp.MustCompile(`(?m)^`).ReplaceAllString(tail(string(out), 80), "switchyard| "))
			// How busy the node and the proxy's sync loop were: a change waits behind a
			// long full sync.
			diag, err := l.NodeOutput(context.Background(), "sh", "-c", "cat /proc/loadavg; ps -eo pid,pcpu,time,rss,args --sort=-pcpu | head -6 | cut -c1-160; "+
				"curl -s http://127.0.0.1:10249/metrics | grep -E '^kubeproxy_sync_(full_|partial_)?proxy_rules_(duration_seconds_(sum|count)|last_timestamp|last_queued)'")
			t.Logf("the node at the failure (%v):\n%s", err, diag)
		}
	})
	return ctx, logPath
}

// expectFlow waits until a batch of requests gives the wanted outcome: answered by
// exactly the given pods (any pods when pods is nil) and, when wantClient is set, seen by
// them as coming from that address; or all failing with the given kind ("refused" or
// "timeout").
func expectFlow(ctx context.Context, t *testing.T, step string, get func() (lab.Result, error), pods []*lab.Pod, wantClient, wantFailure string) lab.Result {
	t.Helper()
	var res lab.Result
	err := lab.Eventually(ctx, 30*time.Second, 250*time.Millisecond, func() error {
		var err error
		if res, err = get(); err != nil {
			return err
		}
		if wantFailure != "" {
			if len(res.Answers) > 0 || len(res.Failures) != 1 || res.Failures[wantFailure] == 0 {
				return fmt.Errorf("want every request to fail with %q, got answers %v failures %v (last: %s)", wantFailure, res.Answers, res.Failures, res.LastError)
			}
			return nil
		}
		if n := sum(res.Failures); n > 0 {
			return fmt.Errorf("%d requests failed: %v (last: %s)", n, res.Failures, res.LastError)
		}
		if pods == nil && len(res.Answers) > 0 {
			return nil
		}
		if len(res.Answers) != len(pods) {
			return fmt.Errorf("answered by %v, want exactly %v", res.Answers, podNames(pods))
		}
		for _, p := range pods {
			if res.Answers[p.Name] == 0 {
				return fmt.Errorf("answered by %v, want exactly %v", res.Answers, podNames(pods))
			}
		}
		if wantClient != "" && (len(res.Clients) != 1 || res.Clients[wantClient] == 0) {
			return fmt.Errorf("pods saw the clients %v, want only %s", res.Clients, wantClient)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("%s: %v", step, err)
	}
	t.Logf("%s: answers %v clients %v failures %v", step, res.Answers, res.Clients, res.Failures)
	recordParity(t, step, pods, wantClient, wantFailure)
	return res
}

// recordParity appends a passed flow's outcome to $SWYD_PARITY_DIR/flows.jsonl, from which
// hack/parity generates docs/parity.md (make parity).
func recordParity(t *testing.T, step string, pods []*lab.Pod, wantClient, wantFailure string) {
	dir := os.Getenv("SWYD_PARITY_DIR")
	test, rest, perMode := strings.Cut(t.Name(), "/")
	// A test without a subtest per mode (TestXtablesLockHeld runs in one flavor) compares
	// no modes: it has no row in the parity table.
	if dir == "" || !perMode {
		return
	}
	outcome := ""
	switch {
	case wantFailure == "refused":
		outcome = "REJECT (refused at once)"
	case wantFailure == "timeout":
		outcome = "DROP (times out)"
	case wantFailure == "untouched":
		outcome = "untouched (no rule, no virtual server)"
	case pods == nil:
		outcome = "→ an endpoint"
	default:
		outcome = "→ " + strings.Join(podNames(pods), ", ")
	}
	switch wantClient {
	case "":
	case lab.PodGatewayIP:
		outcome += ", masqueraded"
	default:
		outcome += ", client address kept"
	}
	mode, _, _ := strings.Cut(rest, "/")
	line, _ := json.Marshal(map[string]string{"test": test, "flow": step, "mode": mode, "outcome": outcome})
	f, err := os.OpenFile(filepath.Join(dir, "flows.jsonl"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		t.Errorf("recording parity: %v", err)
		return
	}
	defer f.Close()
	fmt.Fprintf(f, "%s\n", line)
}

// writeEndpoints creates or replaces the EndpointSlice of a Service.
func writeEndpoints(ctx context.Context, t *testing.T, l *lab.Lab, service string, pods []*lab.Pod) {
	t.Helper()
	if err := createSlice(ctx, l, lab.EndpointSlice(service, pods)); err != nil {
		t.Fatal(err)
	}
}

// serveWeb creates the Service default/web backed by pods, waits until the proxy balances
// it across them, and returns it with its URL.
func serveWeb(ctx context.Context, t *testing.T, l *lab.Lab, pods []*lab.Pod) (*v1.Service, string) {
	t.Helper()
	svc, err := l.Client.CoreV1().Services("default").Create(ctx, lab.Service("web"), metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating the Service: %v", err)
	}
	writeEndpoints(ctx, t, l, "web", pods)
	url := fmt.Sprintf("http://%s:80/", svc.Spec.ClusterIP)
	expectFlow(ctx, t, "web served", func() (lab.Result, error) { return l.Get(ctx, url, 30) }, pods, "", "")
	return svc, url
}

// writeProtocolEndpoints is writeEndpoints for a Service whose port uses another protocol.
func writeProtocolEndpoints(ctx context.Context, t *testing.T, l *lab.Lab, service string, protocol v1.Protocol, pods []*lab.Pod) {
	t.Helper()
	slice := lab.EndpointSlice(service, pods)
	for i := range slice.Ports {
		slice.Ports[i].Protocol = &protocol
	}
	if err := createSlice(ctx, l, slice); err != nil {
		t.Fatal(err)
	}
}

// createSlice creates an EndpointSlice, or replaces it when it exists.
func createSlice(ctx context.Context, l *lab.Lab, slice *discovery.EndpointSlice) error {
	_, err := l.Client.DiscoveryV1().EndpointSlices("default").Update(ctx, slice, metav1.UpdateOptions{})
	if err != nil {
		_, err = l.Client.DiscoveryV1().EndpointSlices("default").Create(ctx, slice, metav1.CreateOptions{})
	}
	if err != nil {
		return fmt.Errorf("writing EndpointSlice %s: %w", slice.Name, err)
	}
	return nil
}

// TestClusterIPLifecycle is the end-to-end scenario every proxy mode must pass: a Service
// created through the API becomes reachable through its cluster IP and balances over every
// endpoint; scaling down narrows it; without endpoints connections are refused at once;
// deleting the Service removes what was programmed for it.
func TestClusterIPLifecycle(t *testing.T) {
	forEachMode(t, "TestClusterIPLifecycle", testClusterIPLifecycle)
}

func testClusterIPLifecycle(t *testing.T, mode proxyMode) {
	l, ctx := startProxy(t, mode)
	client := l.Client
	svc, err := client.CoreV1().Services("default").Create(ctx, lab.Service("web"), metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating the Service: %v", err)
	}
	url := fmt.Sprintf("http://%s:80/", svc.Spec.ClusterIP)
	setEndpoints := func(pods []*lab.Pod) { writeEndpoints(ctx, t, l, "web", pods) }
	// The node's address is outside the cluster CIDR: its connections are masqueraded.
	expectAnswers := func(step string, pods []*lab.Pod, requests int) {
		t.Helper()
		expectFlow(ctx, t, step, func() (lab.Result, error) { return l.Get(ctx, url, requests) }, pods, lab.PodGatewayIP, "")
	}

	setEndpoints(l.Pods)
	expectAnswers("three endpoints", l.Pods, 60)
	expectIPVS := func(step string, pods []*lab.Pod) {
		t.Helper()
		if mode.flag != "ipvs" {
			return
		}
		if err := checkIPVSRealServers(ctx, l, svc.Spec.ClusterIP, pods); err != nil {
			t.Fatalf("%s: %v", step, err)
		}
	}
	expectIPVS("three endpoints", l.Pods)

	setEndpoints(l.Pods[:1])
	expectAnswers("scaled to one", l.Pods[:1], 60)
	expectIPVS("scaled to one", l.Pods[:1])

	setEndpoints(nil)
	err = lab.Eventually(ctx, 30*time.Second, 250*time.Millisecond, func() error {
		res, err := l.Get(ctx, url, 3)
		if err != nil {
			return err
		}
		if res.Failures["refused"] != 3 {
			return fmt.Errorf("want 3 refused connections, got answers %v failures %v (last: %s)", res.Answers, res.Failures, res.LastError)
		}
		// REJECT answers at once; a black hole would take the client's 2 s timeout.
		if res.MaxFailureSeconds > 1 {
			return fmt.Errorf("refusal took %.2fs, want an immediate reject", res.MaxFailureSeconds)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("no endpoints: %v", err)
	}
	t.Logf("no endpoints: connections refused at once")

	checkMetricsAndHealth(ctx, t, l, mode)

	if err := client.CoreV1().Services("default").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatalf("deleting the Service: %v", err)
	}
	err = lab.Eventually(ctx, 30*time.Second, 250*time.Millisecond, func() error {
		if mode.flag == "ipvs" {
			return checkIPVSForgot(ctx, l, svc.Spec.ClusterIP)
		}
		return checkIPTablesForgot(ctx, l, mode.flavor)
	})
	if err != nil {
		t.Fatalf("service deleted: %v", err)
	}
	l.StopProxy()
	// Shutdown leaves the rules in place so traffic keeps flowing across restarts.
	if dump, err := l.NodeOutput(ctx, "iptables-"+mode.flavor+"-save", "-t", "nat"); err != nil || !strings.Contains(dump, ":SWYD-SERVICES") {
		t.Errorf("after shutdown the nat table lacks SWYD-SERVICES (err %v):\n%s", err, dump)
	}
}

// checkIPTablesForgot fails while the node's iptables still hold anything of default/web.
func checkIPTablesForgot(ctx context.Context, l *lab.Lab, flavor string) error {
	for _, table := range []string{"nat", "filter"} {
		dump, err := l.NodeOutput(ctx, "iptables-"+flavor+"-save", "-t", table)
		if err != nil {
			return err
		}
		if strings.Contains(dump, "default/web") {
			return fmt.Errorf("%s table still mentions default/web after the Service was deleted:\n%s", table, dump)
		}
		// The apiserver's own "kubernetes" Service is the only one left: every
		// per-service chain must belong to it.
		for _, chain := range perServiceChain.FindAllStringSubmatch(dump, -1) {
			if !regexp.MustCompile(`(?m)^-A ` + chain[1] + ` .*default/kubernetes`).MatchString(dump) {
				return fmt.Errorf("%s table still has chain %s, which is not the kubernetes Service's:\n%s", table, chain[1], dump)
			}
		}
		if !strings.Contains(dump, ":SWYD-SERVICES") {
			return fmt.Errorf("%s table lacks SWYD-SERVICES: is switchyard writing to the %s flavor?\n%s", table, flavor, dump)
		}
	}
	return nil
}

// checkIPVSRealServers fails unless the Service's virtual server sends new connections
// to exactly these pods: they have weight 1, and any other real server has weight 0
// (removed, draining its connections).
func checkIPVSRealServers(ctx context.Context, l *lab.Lab, clusterIP string, pods []*lab.Pod) error {
	table, err := l.NodeOutput(ctx, "ipvsadm", "-Ln", "-t", clusterIP+":80")
	if err != nil {
		return err
	}
	var active []string
	for _, line := range strings.Split(table, "\n") {
		if f := strings.Fields(line); len(f) >= 4 && f[0] == "->" && f[2] == "Masq" && f[3] != "0" {
			active = append(active, f[1])
		}
	}
	var want []string
	for _, p := range pods {
		want = append(want, fmt.Sprintf("%s:%d", p.IP, lab.PodPort))
	}
	slices.Sort(active)
	if !slices.Equal(active, want) {
		return fmt.Errorf("real servers with weight > 0 are %v, want %v:\n%s", active, want, table)
	}
	return nil
}

// checkIPVSForgot fails while IPVS or kube-ipvs0 still hold the deleted Service's address,
// or while anything but the kubernetes Service's virtual server is left.
func checkIPVSForgot(ctx context.Context, l *lab.Lab, clusterIP string) error {
	table, err := l.NodeOutput(ctx, "ipvsadm", "-Ln")
	if err != nil {
		return err
	}
	var services []string
	for _, line := range strings.Split(table, "\n") {
		if f := strings.Fields(line); len(f) > 1 && (f[0] == "TCP" || f[0] == "UDP" || f[0] == "SCTP") {
			services = append(services, f[1])
		}
	}
	if len(services) != 1 || !strings.HasPrefix(services[0], "10.96.0.1:") {
		return fmt.Errorf("want only the kubernetes Service's virtual server (10.96.0.1:443), ipvsadm -Ln has %v:\n%s", services, table)
	}
	addrs, err := l.NodeOutput(ctx, "ip", "-4", "-o", "addr", "show", "dev", "kube-ipvs0")
	if err != nil {
		return err
	}
	if strings.Contains(addrs, " "+clusterIP+"/") {
		return fmt.Errorf("kube-ipvs0 still holds %s:\n%s", clusterIP, addrs)
	}
	return nil
}

// checkMetricsAndHealth reads the proxy's metrics and health endpoints on the node.
func checkMetricsAndHealth(ctx context.Context, t *testing.T, l *lab.Lab, mode proxyMode) {
	t.Helper()
	backend := fmt.Sprintf(`{backend=%q`, mode.flag)
	checks := []struct{ url, want string }{
		{"http://127.0.0.1:10256/livez", `"healthy":true`},
		{"http://127.0.0.1:10249/proxyMode", mode.flag},
		{"http://127.0.0.1:10249/metrics", "kubeproxy_sync_proxy_rules_duration_seconds_count" + backend},
		{"http://127.0.0.1:10249/metrics", "kubeproxy_network_programming_duration_seconds_count" + backend},
	}
	if mode.flag == "ipvs" {
		checks = append(checks, struct{ url, want string }{"http://127.0.0.1:10249/metrics", `switchyard_ipvs_operations_total{backend="ipvs",ip_family="IPv4",operation="add_virtual_server"}`})
	} else {
		checks = append(checks, struct{ url, want string }{"http://127.0.0.1:10249/metrics", `kubeproxy_sync_proxy_rules_iptables_total{backend="iptables",ip_family="IPv4",table="nat"}`})
	}
	for _, c := range checks {
		out, err := l.NodeOutput(ctx, "curl", "-sf", c.url)
		if err != nil {
			t.Errorf("GET %s: %v", c.url, err)
			continue
		}
		if !strings.Contains(out, c.want) {
			t.Errorf("GET %s lacks %q:\n%s", c.url, c.want, tail(out, 20))
		}
	}
	// This lab registers no Node: like kube-proxy's, /healthz fails until the proxy has
	// seen its Node, so that load balancers send nothing to a node they cannot judge.
	const healthz = "http://127.0.0.1:10256/healthz"
	out, err := l.NodeOutput(ctx, "curl", "-s", "-w", " %{http_code}", healthz)
	if err != nil {
		t.Errorf("GET %s: %v", healthz, err)
	} else if !strings.Contains(out, `"nodeEligible":false,"healthy":true`) || !strings.HasSuffix(out, " 503") {
		t.Errorf("GET %s: want 503 with nodeEligible false and healthy true, got %s", healthz, out)
	}
}

// runInKernelLab runs the test named by pattern inside the kernel lab's guest (a UML
// kernel with IPVS), with a kube-apiserver on the host that the guest reaches over a tap
// link, and fails if the test fails there.
func runInKernelLab(t *testing.T, pattern string) {
	// The churn soak runs about 10 minutes in the guest; the rest take under one.
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	g, err := lab.StartGuestLink(ctx, t.TempDir(), "../../hack/kernel-lab/run.sh", 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := g.Close(); err != nil {
			t.Errorf("cleaning up the kernel lab link: %v", err)
		}
	})
	var out strings.Builder
	err = g.Run(ctx, &out, []string{envGuestKubeconfig + "=" + g.Kubeconfig, envGuestBinDir + "=" + binDir},
		os.Args[0], "-test.run", pattern, "-test.v", "-test.count=1")
	t.Logf("inside the kernel lab:\n%s", strings.TrimSpace(out.String()))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "--- PASS") {
		t.Fatalf("the kernel lab ran no passing test for %s", pattern)
	}
}
func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

func podNames(pods []*lab.Pod) []string {
	var names []string
	for _, p := range pods {
		names = append(names, p.Name)
	}
	return names
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
