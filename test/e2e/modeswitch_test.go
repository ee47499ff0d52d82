package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/switchyard/switchyard/internal/lab"
)

// TestModeSwitch switches a node from IPVS mode to iptables mode and back, as an operator
// does by changing the ConfigMap and restarting the DaemonSet. Traffic works in each
// mode, and each mode removes what the other left: IPVS mode's virtual servers,
// kube-ipvs0 and ipsets; iptables mode's per-Service chains. Only the kernel lab has both.
func TestModeSwitch(t *testing.T) {
	forModes(t, "TestModeSwitch", []proxyMode{proxyModes[2]}, testModeSwitch)
}

func testModeSwitch(t *testing.T, ipvsMode proxyMode) {
	iptablesMode := proxyMode{name: "iptables-legacy", flag: "iptables", flavor: "legacy", kernelLab: true}
	// Each start has its own deadline (startProxyIn's context): three proxy starts in
	// the kernel lab do not fit in one.
	l, ctx := startProxy(t, ipvsMode)
	svc, url := serveWeb(ctx, t, l, l.Pods)
	expectAnswers := func(ctx context.Context, step string) {
		t.Helper()
		expectFlow(ctx, t, step, func() (lab.Result, error) { return l.Get(ctx, url, 30) }, l.Pods, "", "")
	}
	expectAnswers(ctx, "IPVS mode")

	l.StopProxy()
	ctx, _ = startProxyIn(t, l, iptablesMode)
	expectAnswers(ctx, "switched to iptables mode")
	err := lab.Eventually(ctx, 30*time.Second, 500*time.Millisecond, func() error {
		if table, err := l.NodeOutput(ctx, "ipvsadm", "-Sn"); err != nil || strings.Contains(table, svc.Spec.ClusterIP) {
			return fmt.Errorf("virtual server of %s still there (err %v):\n%s", svc.Spec.ClusterIP, err, table)
		}
		if out, err := l.NodeOutput(ctx, "ip", "link", "show", "kube-ipvs0"); err == nil {
			return fmt.Errorf("kube-ipvs0 still there:\n%s", out)
		}
		if sets, err := l.NodeOutput(ctx, "ipset", "list", "-n"); err != nil || strings.Contains(sets, "SWYD-") {
			return fmt.Errorf("ipsets of IPVS mode still there (err %v):\n%s", err, sets)
		}
		return checkNoChain(ctx, l, "SWYD-IPVS-FILTER")
	})
	if err != nil {
		t.Fatalf("IPVS mode's leftovers after switching to iptables mode: %v", err)
	}

	l.StopProxy()
	ctx, _ = startProxyIn(t, l, ipvsMode)
	expectAnswers(ctx, "switched back to IPVS mode")
	if err := lab.Eventually(ctx, 30*time.Second, 500*time.Millisecond, func() error { return checkNoChain(ctx, l, "SWYD-SVC-") }); err != nil {
		t.Fatalf("iptables mode's leftovers after switching to IPVS mode: %v", err)
	}
}

// checkNoChain fails while a chain whose name starts with prefix is in the nat or filter
// table (the lab's iptables is the legacy flavor).
func checkNoChain(ctx context.Context, l *lab.Lab, prefix string) error {
	for _, table := range []string{"nat", "filter"} {
		dump, err := l.NodeOutput(ctx, "iptables-legacy-save", "-t", table)
		if err != nil {
			return err
		}
		if strings.Contains(dump, ":"+prefix) {
			return fmt.Errorf("%s table still has a %s chain:\n%s", table, prefix, dump)
		}
	}
	return nil
}
