package testenv

import (
	"context"
	"os"
	"os/exec"
	"testing"
	"time"
)

// TestNetnsVethPing links two test namespaces with a veth pair and pings across it, then
// checks that the cleanup registered by the helpers removed both namespaces. It needs root
// (CAP_NET_ADMIN and CAP_SYS_ADMIN), iproute2 and iputils-ping, and fails without them.
func TestNetnsVethPing(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root to create network namespaces (run the tests as root)")
	}
	if _, err := exec.LookPath("ping"); err != nil {
		t.Fatalf("ping not found (install the Debian package iputils-ping): %v", err)
	}

	const nsA, nsB = "swydt-a", "swydt-b"

	// The subtest's t.Cleanup runs when it ends, even if it fails half-way, so the check
	// afterwards sees the state cleanup left behind.
	t.Run("ping", func(t *testing.T) {
		a, err := NewNetns(nsA)
		if err != nil {
			t.Fatal(err)
		}
		a.Cleanup(t)
		b, err := NewNetns(nsB)
		if err != nil {
			t.Fatal(err)
		}
		b.Cleanup(t)

		if err := VethPair("swydt-va", nsA, "swydt-vb", nsB); err != nil {
			t.Fatal(err)
		}
		if err := a.Run("addr", "add", "10.253.0.1/30", "dev", "swydt-va"); err != nil {
			t.Fatal(err)
		}
		if err := b.Run("addr", "add", "10.253.0.2/30", "dev", "swydt-vb"); err != nil {
			t.Fatal(err)
		}

		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		// The first packet can race the link coming up (and duplicate address
		// detection); retry briefly instead of flaking.
		var out []byte
		for i := 0; i < 5; i++ {
			out, err = a.Exec(ctx, "ping", "-c1", "-W1", "10.253.0.2").CombinedOutput()
			if err == nil {
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		if err != nil {
			t.Fatalf("ping 10.253.0.2 from %s: %v\n%s", nsA, err, out)
		}

		// The test subnet must exist only inside the test's namespaces.
		if out, err := exec.Command("ip", "-br", "addr", "show", "to", "10.253.0.0/30").CombinedOutput(); err != nil || len(out) > 0 {
			t.Errorf("10.253.0.0/30 visible in the host namespace (err %v):\n%s", err, out)
		}

		// Names outside the prefix are refused, so cleanup can never hit a host object.
		if _, err := NewNetns("eth0"); err == nil {
			t.Errorf("NewNetns(%q) succeeded, want an error about the %q prefix", "eth0", NamePrefix)
		}
		if err := VethPair("eth9", "", "swydt-x", ""); err == nil {
			t.Errorf("VethPair with a non-prefixed name succeeded")
		}
	})

	for _, ns := range []string{nsA, nsB} {
		if _, err := os.Stat((&Netns{Name: ns}).Path()); !os.IsNotExist(err) {
			t.Errorf("network namespace %s still exists after cleanup (stat: %v)", ns, err)
		}
	}
}
