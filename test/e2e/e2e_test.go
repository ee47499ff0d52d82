// Package e2e runs the switchyard binary against a real kube-apiserver, in a network
// namespace on the host, with real packets from a client to "pods" through the rules it
// programs. It needs root, iproute2, iptables and the control plane binaries (make
// controlplane); missing pieces fail the tests with what to install.
package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/switchyard/switchyard/internal/lab"
)

var binDir string

// perServiceChain matches the declaration of a per-service or per-endpoint chain.
var perServiceChain = regexp.MustCompile(`(?m)^:(SWYD-(?:SVC|SVL|SEP)-[A-Z0-9]+) `)

func TestMain(m *testing.M) {
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
	for _, tool := range []string{"ip", "iptables-nft-save", "iptables-legacy-save", "sysctl"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found: install the Debian packages iproute2, iptables and procps (make deps)", tool)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	l, err := lab.Start(ctx, lab.Options{Dir: t.TempDir(), Pods: pods, Agent: filepath.Join(binDir, "labagent")})
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

// TestClusterIPLifecycle is the walking skeleton's end-to-end scenario, once per
// iptables flavor: a Service created through the API becomes reachable through its
// cluster IP and balances over every endpoint; scaling down narrows it; without
// endpoints connections are refused at once; deleting the Service removes its chains.
func TestClusterIPLifecycle(t *testing.T) {
	for _, flavor := range []string{"nft", "legacy"} {
		t.Run("iptables-"+flavor, func(t *testing.T) {
			start := time.Now()
			testClusterIPLifecycle(t, flavor)
			t.Logf("iptables-%s e2e took %s", flavor, time.Since(start).Round(100*time.Millisecond))
		})
	}
}

func testClusterIPLifecycle(t *testing.T, flavor string) {
	l := startLab(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if flavor == "legacy" {
		// kubelet leaves this hint in the flavor it uses; switchyard must follow it.
		out, err := exec.Command("ip", "netns", "exec", lab.NodeNetns, "iptables-legacy", "-t", "mangle", "-N", "KUBE-IPTABLES-HINT").CombinedOutput()
		if err != nil {
			t.Fatalf("creating the legacy hint chain: %v: %s", err, out)
		}
	}
	logPath, err := l.StartProxy(filepath.Join(binDir, "switchyard"),
		"--proxy-mode=iptables",
		"--kubeconfig="+l.ControlPlane.Kubeconfig,
		"--hostname-override="+lab.NodeName,
		"--cluster-cidr="+lab.ClusterCIDR,
		"--metrics-bind-address=127.0.0.1:10249",
		"--healthz-bind-address=127.0.0.1:10256",
		"--conntrack-max-per-core=0",
		"-v=2",
	)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := os.ReadFile(logPath)
			t.Logf("switchyard log:\n%s", tail(string(out), 60))
		}
	})

	client := l.ControlPlane.Client
	svc, err := client.CoreV1().Services("default").Create(ctx, lab.Service("web"), metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating the Service: %v", err)
	}
	url := fmt.Sprintf("http://%s:80/", svc.Spec.ClusterIP)
	setEndpoints := func(pods []*lab.Pod) {
		t.Helper()
		slice := lab.EndpointSlice("web", pods)
		_, err := client.DiscoveryV1().EndpointSlices("default").Update(ctx, slice, metav1.UpdateOptions{})
		if err != nil {
			_, err = client.DiscoveryV1().EndpointSlices("default").Create(ctx, slice, metav1.CreateOptions{})
		}
		if err != nil {
			t.Fatalf("writing the EndpointSlice: %v", err)
		}
	}
	// expectAnswers waits until a batch of requests is answered by exactly these pods.
	expectAnswers := func(step string, pods []*lab.Pod, requests int) lab.Result {
		t.Helper()
		var res lab.Result
		err := lab.Eventually(ctx, 30*time.Second, 250*time.Millisecond, func() error {
			var err error
			if res, err = l.Get(ctx, url, requests); err != nil {
				return err
			}
			if n := sum(res.Failures); n > 0 {
				return fmt.Errorf("%d of %d requests failed: %v (last: %s)", n, requests, res.Failures, res.LastError)
			}
			if len(res.Answers) != len(pods) {
				return fmt.Errorf("answered by %v, want exactly %v", res.Answers, podNames(pods))
			}
			for _, p := range pods {
				if res.Answers[p.Name] == 0 {
					return fmt.Errorf("answered by %v, want exactly %v", res.Answers, podNames(pods))
				}
			}
			return nil
		})
		if err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		t.Logf("%s: %d requests answered %v", step, requests, res.Answers)
		return res
	}

	setEndpoints(l.Pods)
	expectAnswers("three endpoints", l.Pods, 60)

	setEndpoints(l.Pods[:1])
	expectAnswers("scaled to one", l.Pods[:1], 60)

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

	checkMetricsAndHealth(ctx, t, l)

	if err := client.CoreV1().Services("default").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatalf("deleting the Service: %v", err)
	}
	err = lab.Eventually(ctx, 30*time.Second, 250*time.Millisecond, func() error {
		for _, table := range []string{"nat", "filter"} {
			dump, err := l.IPTablesSave(ctx, flavor, table)
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
	})
	if err != nil {
		t.Fatalf("service deleted: %v", err)
	}
	l.StopProxy()
	// Shutdown leaves the rules in place so traffic keeps flowing across restarts.
	if dump, err := l.IPTablesSave(ctx, flavor, "nat"); err != nil || !strings.Contains(dump, ":SWYD-SERVICES") {
		t.Errorf("after shutdown the nat table lacks SWYD-SERVICES (err %v):\n%s", err, dump)
	}
}

// checkMetricsAndHealth reads the proxy's metrics and health endpoints from inside the
// node namespace.
func checkMetricsAndHealth(ctx context.Context, t *testing.T, l *lab.Lab) {
	t.Helper()
	for _, c := range []struct{ url, want string }{
		{"http://127.0.0.1:10256/healthz", `"lastUpdated"`},
		{"http://127.0.0.1:10249/proxyMode", "iptables"},
		{"http://127.0.0.1:10249/metrics", `kubeproxy_sync_proxy_rules_duration_seconds_count{backend="iptables"}`},
		{"http://127.0.0.1:10249/metrics", `kubeproxy_network_programming_duration_seconds_count{backend="iptables"}`},
		{"http://127.0.0.1:10249/metrics", `kubeproxy_sync_proxy_rules_iptables_total{backend="iptables",table="nat"}`},
	} {
		out, err := exec.CommandContext(ctx, "ip", "netns", "exec", lab.NodeNetns, "curl", "-sf", c.url).CombinedOutput()
		if err != nil {
			t.Errorf("GET %s: %v: %s", c.url, err, out)
			continue
		}
		if !strings.Contains(string(out), c.want) {
			t.Errorf("GET %s lacks %q:\n%s", c.url, c.want, tail(string(out), 20))
		}
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
