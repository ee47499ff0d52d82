package e2e

import (
	"fmt"
	"testing"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/switchyard/switchyard/internal/lab"
)

// sctpModes run SCTP in the kernel lab only: the host kernel has no SCTP, the lab's has.
// iptables mode runs there too (legacy flavor), so both modes are proven in one kernel.
var sctpModes = []proxyMode{
	{name: "iptables-legacy-lab", flag: "iptables", flavor: "legacy", kernelLab: true},
	{name: "ipvs", flag: "ipvs", flavor: "legacy", kernelLab: true},
}

// TestSCTP reaches an SCTP Service: associations are balanced over its endpoints. Once it
// has none, new associations are rejected with ICMP port unreachable like any other
// protocol, but the Linux SCTP client does not give up on that (it retransmits its INIT
// until its own timeout), so what the client sees is a timeout rather than a refusal.
func TestSCTP(t *testing.T) {
	forModes(t, "TestSCTP", sctpModes, testSCTP)
}

func testSCTP(t *testing.T, mode proxyMode) {
	l, ctx := startProxy(t, mode)
	svc := lab.Service("assoc")
	svc.Spec.Ports[0].Protocol = v1.ProtocolSCTP
	svc, err := l.Client.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating the Service: %v", err)
	}
	addr := fmt.Sprintf("%s:80", svc.Spec.ClusterIP)
	sctpSlice := func(pods []*lab.Pod) { writeProtocolEndpoints(ctx, t, l, "assoc", v1.ProtocolSCTP, pods) }
	associate := func(n int) func() (lab.Result, error) {
		return func() (lab.Result, error) { return l.SCTP(ctx, addr, n) }
	}
	sctpSlice(l.Pods)
	expectFlow(ctx, t, "SCTP to a cluster IP", associate(30), l.Pods, "", "")
	sctpSlice(nil)
	expectFlow(ctx, t, "SCTP to a cluster IP without endpoints (ICMP-rejected, but the SCTP client retries until it times out)", associate(2), nil, "", "timeout")
}
