package e2e

import (
	"fmt"
	"net"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/switchyard/switchyard/internal/lab"
)

// TestDualStack reaches a dual-stack Service through both of its cluster IPs: each IP
// family is programmed by its own proxier (iptables and ip6tables, or IPVS for both).
// The health check port of a dual-stack Local Service is served in each family by that
// family's proxier, with that family's local endpoints.
func TestDualStack(t *testing.T) {
	forEachMode(t, "TestDualStack", testDualStack)
}

func testDualStack(t *testing.T, mode proxyMode) {
	l, ctx := startProxy(t, mode, "--cluster-cidr="+lab.ClusterCIDR+","+lab.ClusterCIDR6)
	svc := lab.Service("web")
	svc.Spec.IPFamilyPolicy = ptr.To(v1.IPFamilyPolicyRequireDualStack)
	svc.Spec.IPFamilies = []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol}
	svc, err := l.Client.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating the dual-stack Service: %v", err)
	}
	if len(svc.Spec.ClusterIPs) != 2 {
		t.Fatalf("the apiserver gave cluster IPs %v, want one per family", svc.Spec.ClusterIPs)
	}
	for _, slice := range []*discovery.EndpointSlice{lab.EndpointSlice("web", l.Pods), lab.EndpointSliceIPv6("web", l.Pods)} {
		if err := createSlice(ctx, l, slice); err != nil {
			t.Fatal(err)
		}
	}
	gateways := []string{lab.PodGatewayIP, lab.PodGatewayIP6}
	for i, ip := range svc.Spec.ClusterIPs {
		url := fmt.Sprintf("http://%s/", net.JoinHostPort(ip, "80"))
		// The step names the family, not the address the apiserver chose, so that the
		// parity table has one row per family.
		step := fmt.Sprintf("dual-stack Service through its %s cluster IP", svc.Spec.IPFamilies[i])
		expectFlow(ctx, t, step, func() (lab.Result, error) { return l.Get(ctx, url, 30) }, l.Pods, gateways[i], "")
	}

	// Three local endpoints in IPv4, one in IPv6: each family's server answers with its
	// own count (kube-proxy v1.35 answers both families from whichever server bound
	// first, kubernetes#114702; see docs/node-contract.md).
	hc := lab.Service("hc")
	hc.Spec.Type = v1.ServiceTypeLoadBalancer
	hc.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
	hc.Spec.IPFamilyPolicy = ptr.To(v1.IPFamilyPolicyRequireDualStack)
	hc.Spec.IPFamilies = []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol}
	if hc, err = l.Client.CoreV1().Services("default").Create(ctx, hc, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating the dual-stack Local Service: %v", err)
	}
	for _, slice := range []*discovery.EndpointSlice{lab.EndpointSlice("hc", l.Pods), lab.EndpointSliceIPv6("hc", l.Pods[:1])} {
		if err := createSlice(ctx, l, slice); err != nil {
			t.Fatal(err)
		}
	}
	for host, want := range map[string]string{"127.0.0.1": `"localEndpoints": 3`, "::1": `"localEndpoints": 1`} {
		url := fmt.Sprintf("http://%s/", net.JoinHostPort(host, fmt.Sprint(hc.Spec.HealthCheckNodePort)))
		expectHealthCheck(ctx, t, l.NodeOutput, url, "200", want)
	}
}
