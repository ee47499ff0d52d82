package e2e

import (
	"fmt"
	"net"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/switchyard/switchyard/internal/lab"
)

// TestDualStack reaches a dual-stack Service through both of its cluster IPs: each IP
// family is programmed by its own proxier (iptables and ip6tables). IPVS mode programs
// IPv4 only so far (see README), so this runs in the iptables modes.
func TestDualStack(t *testing.T) {
	for _, mode := range proxyModes {
		if mode.kernelLab {
			continue
		}
		t.Run(mode.name, func(t *testing.T) {
			start := time.Now()
			testDualStack(t, mode)
			t.Logf("%s e2e took %s", mode.name, time.Since(start).Round(100*time.Millisecond))
		})
	}
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
	gateways := map[string]string{svc.Spec.ClusterIPs[0]: lab.PodGatewayIP, svc.Spec.ClusterIPs[1]: lab.PodGatewayIP6}
	for _, ip := range svc.Spec.ClusterIPs {
		url := fmt.Sprintf("http://%s/", net.JoinHostPort(ip, "80"))
		expectFlow(ctx, t, "dual-stack Service through "+ip, func() (lab.Result, error) { return l.Get(ctx, url, 30) }, l.Pods, gateways[ip], "")
	}
}
