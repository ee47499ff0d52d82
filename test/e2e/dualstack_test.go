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
}
