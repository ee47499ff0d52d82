package e2e

import (
	"context"
	"errors"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/switchyard/switchyard/internal/lab"
)

// TestExplain runs `switchyard explain` next to a running proxy: it reports a Service as
// programmed while it is, and names what differs once part of it is removed behind the
// proxy's back (before the next full sync repairs it).
func TestExplain(t *testing.T) {
	forEachMode(t, "TestExplain", testExplain)
}

func testExplain(t *testing.T, mode proxyMode) {
	// No full sync during the test: the drift must still be there when explain looks.
	l, ctx := startProxy(t, mode, "--sync-period=10m")
	svc, _ := serveWeb(ctx, t, l, l.Pods)

	out, code := runExplain(ctx, t, l, mode, "default/web")
	if code != 0 || !strings.Contains(out, "The kernel holds the desired state.") {
		t.Fatalf("explain of a programmed Service: exit %d, want 0:\n%s", code, out)
	}
	for _, pod := range l.Pods {
		if !strings.Contains(out, pod.IP) {
			t.Errorf("explain does not show endpoint %s:\n%s", pod.IP, out)
		}
	}

	// Drift: the Service's balancing chain flushed, or its virtual server deleted.
	if mode.flag == "ipvs" {
		if _, err := l.NodeOutput(ctx, "ipvsadm", "-D", "-t", svc.Spec.ClusterIP+":80"); err != nil {
			t.Fatal(err)
		}
	} else {
		dump, err := l.NodeOutput(ctx, "iptables-"+mode.flavor+"-save", "-t", "nat")
		if err != nil {
			t.Fatal(err)
		}
		m := regexp.MustCompile(`(?m)^-A SWYD-SERVICES .*default/web cluster IP.* -j (SWYD-SVC-[A-Z0-9]+)`).FindStringSubmatch(dump)
		if m == nil {
			t.Fatalf("no dispatch rule for default/web:\n%s", dump)
		}
		if _, err := l.NodeOutput(ctx, "iptables-"+mode.flavor, "-t", "nat", "-F", m[1]); err != nil {
			t.Fatal(err)
		}
	}
	out, code = runExplain(ctx, t, l, mode, "default/web")
	wantVerdict := "DIFFERS"
	if mode.flag == "ipvs" {
		wantVerdict = "MISSING"
	}
	if code != 1 || !strings.Contains(out, wantVerdict) {
		t.Errorf("explain after drift: exit %d, want 1 and %s:\n%s", code, wantVerdict, out)
	}

	if out, code := runExplain(ctx, t, l, mode, "default/no-such-service"); code != 1 || !strings.Contains(out, "no Service default/no-such-service") {
		t.Errorf("explain of a missing Service: exit %d, want 1 and the reason:\n%s", code, out)
	}
	if out, code := runExplain(ctx, t, l, mode, "web"); code != 2 {
		t.Errorf("explain without a namespace: exit %d, want 2:\n%s", code, out)
	}
}

// runExplain runs switchyard explain on the node with the proxy's flags and returns its
// output and exit status.
func runExplain(ctx context.Context, t *testing.T, l *lab.Lab, mode proxyMode, service string) (string, int) {
	t.Helper()
	cmd := l.NodeCommand(ctx, filepath.Join(binDir, "switchyard"), "explain",
		"--proxy-mode="+mode.flag, "--kubeconfig="+l.Kubeconfig, "--hostname-override="+lab.NodeName,
		"--cluster-cidr="+lab.ClusterCIDR, service)
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		return string(out), exit.ExitCode()
	case err != nil:
		t.Fatalf("running switchyard explain: %v", err)
	}
	return string(out), 0
}
