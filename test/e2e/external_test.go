package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/switchyard/switchyard/internal/lab"
)

// Addresses the external scenario gives its Service (inside lab.ExternalRange).
const (
	externalIP     = "10.253.0.10"
	loadBalancerIP = "10.253.0.20"
	// proxyModeIP is a load-balancer ingress with ipMode Proxy: the load balancer proxies
	// to the node itself, so the node must leave the address alone.
	proxyModeIP = "10.253.0.30"
)

// TestExternalEntryPoints sends traffic from a client outside the cluster to a
// LoadBalancer Service's NodePort, external IP and load-balancer IP, under both external
// traffic policies, as service-semantics.md describes.
func TestExternalEntryPoints(t *testing.T) {
	forEachMode(t, "TestExternalEntryPoints", testExternalEntryPoints)
}

func testExternalEntryPoints(t *testing.T, mode proxyMode) {
	l, ctx := startProxy(t, mode)
	svc := lab.Service("ext")
	svc.Spec.Type = v1.ServiceTypeLoadBalancer
	svc.Spec.ExternalIPs = []string{externalIP}
	svc, err := l.Client.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating the Service: %v", err)
	}
	// No cloud controller runs here: publish the load balancer's address ourselves.
	svc.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: loadBalancerIP}, {IP: proxyModeIP, IPMode: ptr.To(v1.LoadBalancerIPModeProxy)}}
	if svc, err = l.Client.CoreV1().Services("default").UpdateStatus(ctx, svc, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("setting the load balancer status: %v", err)
	}
	nodePort := svc.Spec.Ports[0].NodePort
	entryPoints := map[string]string{
		"nodePort":         fmt.Sprintf("http://%s:%d/", lab.NodeIP, nodePort),
		"external IP":      fmt.Sprintf("http://%s:80/", externalIP),
		"load-balancer IP": fmt.Sprintf("http://%s:80/", loadBalancerIP),
	}
	// Batches are small where requests are expected to time out (2 s each).
	fromClient := func(url string) func() (lab.Result, error) {
		return func() (lab.Result, error) { return l.ClientGet(ctx, url, 12) }
	}
	fromClientOnce := func(url string) func() (lab.Result, error) {
		return func() (lab.Result, error) { return l.ClientGet(ctx, url, 2) }
	}
	local, remote := l.Pods[:1], l.Pods[1:]
	for _, p := range remote {
		p.NodeName = lab.OtherNodeName
	}

	// externalTrafficPolicy Cluster: any endpoint, and the client is masqueraded so the
	// reply comes back through this node.
	writeEndpoints(ctx, t, l, "ext", l.Pods)
	for kind, url := range entryPoints {
		expectFlow(ctx, t, "Cluster policy, "+kind, fromClient(url), l.Pods, lab.PodGatewayIP, "")
	}

	expectUntouched(ctx, t, l, mode, proxyModeIP)

	// externalTrafficPolicy Local: only this node's endpoint, client address preserved.
	svc.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
	if svc, err = l.Client.CoreV1().Services("default").Update(ctx, svc, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("setting externalTrafficPolicy Local: %v", err)
	}
	for kind, url := range entryPoints {
		expectFlow(ctx, t, "Local policy, "+kind, fromClient(url), local, lab.ClientIP, "")
	}
	// The load balancer's health check asks the node whether it has endpoints.
	healthURL := fmt.Sprintf("http://%s:%d/", lab.NodeIP, svc.Spec.HealthCheckNodePort)
	expectHealthCheck(ctx, t, l.ClientOutput, healthURL, "200", `"localEndpoints": 1`)

	// No endpoint on this node: external clients are dropped (the load balancer's health
	// check steers them away), while a pod on this node still reaches the Service through
	// its external addresses (short-circuit to any endpoint).
	writeEndpoints(ctx, t, l, "ext", remote)
	expectHealthCheck(ctx, t, l.ClientOutput, healthURL, "503", `"localEndpoints": 0`)
	expectFlow(ctx, t, "Local policy without a local endpoint, nodePort", fromClientOnce(entryPoints["nodePort"]), nil, "", "timeout")
	expectFlow(ctx, t, "Local policy without a local endpoint, load-balancer IP", fromClientOnce(entryPoints["load-balancer IP"]), nil, "", "timeout")
	// Both modes: iptables mode short-circuits pods to any endpoint; in IPVS mode the
	// virtual server takes the cluster's endpoints, and only off-node clients are dropped
	// before IPVS (kube-proxy's IPVS mode forwards them all, kubernetes#97081).
	fromPod := func() (lab.Result, error) { return l.PodGet(ctx, l.Pods[0], entryPoints["load-balancer IP"], 12) }
	expectFlow(ctx, t, "a pod to a Local Service's load-balancer IP", fromPod, remote, "", "")

	// loadBalancerSourceRanges: a client outside them is dropped at the load-balancer IP
	// only; NodePorts are not subject to the ranges (as in kube-proxy).
	svc.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyCluster
	svc.Spec.LoadBalancerSourceRanges = []string{"10.99.0.0/16"}
	if _, err = l.Client.CoreV1().Services("default").Update(ctx, svc, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("setting loadBalancerSourceRanges: %v", err)
	}
	expectFlow(ctx, t, "outside loadBalancerSourceRanges, load-balancer IP", fromClientOnce(entryPoints["load-balancer IP"]), nil, "", "timeout")
	expectFlow(ctx, t, "outside loadBalancerSourceRanges, nodePort", fromClient(entryPoints["nodePort"]), remote, lab.PodGatewayIP, "")
}

// expectHealthCheck waits until the healthCheckNodePort answers a curl run by run (the
// lab's client or its node) with the status and a body containing want.
func expectHealthCheck(ctx context.Context, t *testing.T, run func(context.Context, string, ...string) (string, error), url, status, want string) {
	t.Helper()
	err := lab.Eventually(ctx, 30*time.Second, 250*time.Millisecond, func() error {
		out, err := run(ctx, "curl", "-g", "-s", "--max-time", "2", "-w", " %{http_code}", url)
		if err != nil {
			return err
		}
		if !strings.HasSuffix(strings.TrimSpace(out), " "+status) || !strings.Contains(out, want) {
			return fmt.Errorf("GET %s answered %q, want status %s and %s", url, out, status, want)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("health check: %v", err)
	}
	t.Logf("health check %s: %s with %s", url, status, want)
}

// expectUntouched fails if anything the proxy programmed mentions the address.
func expectUntouched(ctx context.Context, t *testing.T, l *lab.Lab, mode proxyMode, addr string) {
	t.Helper()
	dumps := [][]string{{"iptables-" + mode.flavor + "-save"}}
	if mode.flag == "ipvs" {
		dumps = append(dumps, []string{"ipvsadm", "-Ln"}, []string{"ip", "addr", "show", "dev", "kube-ipvs0"})
	}
	for _, cmd := range dumps {
		out, err := l.NodeOutput(ctx, cmd[0], cmd[1:]...)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(out, addr) {
			t.Fatalf("%v mentions %s, which must be left untouched:\n%s", cmd, addr, out)
		}
	}
	t.Logf("load-balancer IP with ipMode Proxy: untouched")
	recordParity(t, "load-balancer IP with ipMode Proxy", nil, "", "untouched")
}
