package e2e

import (
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/switchyard/switchyard/internal/lab"
)

// TestNodeSettings starts switchyard with kube-proxy's conntrack flags and reads back,
// on the node, the sysctls it must have set at startup as kube-proxy does. The timeouts
// and liberal mode belong to the node's network namespace; nf_conntrack_max and the hash
// size belong to the kernel, so only the kernel lab's guest, a kernel of its own, has the
// proxy change them (elsewhere the flags keep --conntrack-max-per-core=0). In IPVS mode it
// also reads back the IPVS timeouts with ipvsadm. Then --init-only sets them too.
func TestNodeSettings(t *testing.T) {
	forEachMode(t, "TestNodeSettings", testNodeSettings)
}

func testNodeSettings(t *testing.T, mode proxyMode) {
	l := startLab(t, 0)
	// nf_conntrack_tcp_timeout_established is left at kube-proxy's default, 24h.
	flags := []string{"--conntrack-tcp-timeout-close-wait=30m", "--conntrack-tcp-be-liberal",
		"--conntrack-udp-timeout=45s", "--conntrack-udp-timeout-stream=150s"}
	want := map[string]int{
		"net.netfilter.nf_conntrack_tcp_timeout_established": 86400,
		"net.netfilter.nf_conntrack_tcp_timeout_close_wait":  1800,
		"net.netfilter.nf_conntrack_tcp_be_liberal":          1,
		"net.netfilter.nf_conntrack_udp_timeout":             45,
		"net.netfilter.nf_conntrack_udp_timeout_stream":      150,
	}
	const conntrackMin = 65536
	if mode.kernelLab {
		// One per core is below the minimum on any machine: the limit is the minimum.
		flags = append(flags, "--conntrack-max-per-core=1", "--conntrack-min="+strconv.Itoa(conntrackMin),
			"--ipvs-tcp-timeout=2h", "--ipvs-udp-timeout=45s")
		want["net.netfilter.nf_conntrack_max"] = conntrackMin
	}
	ctx, _ := startProxyIn(t, l, mode, flags...)
	waitForFullSync(ctx, t, l, 3*time.Minute)

	number := func(name string, args ...string) int {
		t.Helper()
		out, err := l.NodeOutput(ctx, name, args...)
		if err != nil {
			t.Fatal(err)
		}
		n, err := strconv.Atoi(strings.TrimSpace(out))
		if err != nil {
			t.Fatalf("%s %v: %q: %v", name, args, out, err)
		}
		return n
	}
	for sysctl, value := range want {
		if got := number("sysctl", "-n", sysctl); got != value {
			t.Errorf("%s = %d, want %d", sysctl, got, value)
		}
	}
	if mode.kernelLab {
		// Raised to a quarter of the limit when it was smaller; never lowered.
		if got := number("cat", "/sys/module/nf_conntrack/parameters/hashsize"); got < conntrackMin/4 {
			t.Errorf("nf_conntrack hashsize = %d, want at least %d", got, conntrackMin/4)
		}
		// The guest is new: the FIN timeout, not given, keeps the kernel's 120 s.
		out, err := l.NodeOutput(ctx, "ipvsadm", "-L", "--timeout")
		if err != nil {
			t.Fatal(err)
		}
		if want := "Timeout (tcp tcpfin udp): 7200 120 45"; strings.TrimSpace(out) != want {
			t.Errorf("ipvsadm -L --timeout: %q, want %q", strings.TrimSpace(out), want)
		}
	}

	// --init-only, as the DaemonSet's init container runs it, sets them as well.
	if _, err := l.NodeOutput(ctx, filepath.Join(binDir, "switchyard"), "--init-only", "--proxy-mode="+mode.flag,
		"--hostname-override="+lab.NodeName, "--conntrack-max-per-core=0", "--conntrack-udp-timeout=77s"); err != nil {
		t.Fatalf("switchyard --init-only: %v", err)
	}
	if got := number("sysctl", "-n", "net.netfilter.nf_conntrack_udp_timeout"); got != 77 {
		t.Errorf("after --init-only, nf_conntrack_udp_timeout = %d, want 77", got)
	}
}
