package e2e

import (
	"fmt"
	"testing"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/switchyard/switchyard/internal/lab"
)

// TestUDPFlowFollowsEndpoints keeps one UDP flow (same client port) going while a
// Service's endpoints change. The kernel NATs only a flow's first packet, so the flow only
// follows the change if the proxy deletes the stale conntrack entries: those DNATed to a
// removed endpoint, and those created while the Service had no endpoint. As in
// kube-proxy, the flows of a Service left without any endpoint are left alone.
func TestUDPFlowFollowsEndpoints(t *testing.T) {
	forEachMode(t, "TestUDPFlowFollowsEndpoints", testUDPFlowFollowsEndpoints)
}

func testUDPFlowFollowsEndpoints(t *testing.T, mode proxyMode) {
	l, ctx := startProxy(t, mode)
	svc := lab.Service("dns")
	svc.Spec.Ports[0].Protocol = v1.ProtocolUDP
	svc.Spec.Ports[0].Port = 53
	svc, err := l.Client.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating the Service: %v", err)
	}
	addr := fmt.Sprintf("%s:53", svc.Spec.ClusterIP)
	const clientPort = 40053
	flow := func() (lab.Result, error) { return l.UDP(ctx, addr, 3, clientPort) }
	// Each attempt is a new flow (a new client port): a flow that met the old rules keeps
	// its endpoint, which is what the same flow checks below.
	newPort := clientPort
	newFlow := func() (lab.Result, error) { newPort++; return l.UDP(ctx, addr, 3, newPort) }
	udpSlice := func(pods []*lab.Pod) { writeProtocolEndpoints(ctx, t, l, "dns", v1.ProtocolUDP, pods) }

	udpSlice(l.Pods[:1])
	expectFlow(ctx, t, "first endpoint", flow, l.Pods[:1], "", "")
	udpSlice(l.Pods[1:2])
	expectFlow(ctx, t, "endpoint replaced, same flow", flow, l.Pods[1:2], "", "")
	udpSlice(nil)
	// New flows are refused once the proxy has synced the removal...
	expectFlow(ctx, t, "no endpoints, a new flow", newFlow, nil, "", "refused")
	if mode.kernelLab {
		// ...and in IPVS mode the flow's connection goes with its real server
		// (expire_nodest_conn), so the same flow is refused too.
		expectFlow(ctx, t, "no endpoints, same flow", flow, nil, "", "refused")
	} else {
		// ...while kube-proxy's cleanup leaves the flows of a Service without serving
		// endpoints alone (conntrack/cleanup.go): the flow keeps its endpoint.
		expectFlow(ctx, t, "no endpoints, same flow", flow, l.Pods[1:2], "", "")
	}
	udpSlice(l.Pods[2:3])
	expectFlow(ctx, t, "endpoints again, same flow", flow, l.Pods[2:3], "", "")
}
