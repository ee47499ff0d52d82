package testenv

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
)

// NamePrefix starts the name of every network namespace and interface the tests create,
// so that cleanup (and a human tidying up after a crashed run) only ever touches ours.
// The helpers below refuse any other name.
const NamePrefix = "swyd"

// netnsRunDir is where `ip netns add` bind-mounts named namespaces.
const netnsRunDir = "/run/netns"

// maxIfName is the longest Linux interface name (IFNAMSIZ - 1).
const maxIfName = 15

// TB is the part of testing.TB the cleanup helpers use; *testing.T and *testing.B satisfy
// it. Declaring it here keeps the testing package out of this non-test package.
type TB interface {
	Helper()
	Cleanup(func())
	Errorf(format string, args ...any)
}

// Netns is a named network namespace created with `ip netns add`.
//
// The helpers shell out to iproute2 rather than calling netlink: they only set up test
// topology, the commands are what a human would type to reproduce a failure, and they
// keep thread-pinned setns juggling out of test code.
type Netns struct {
	Name string
}

// NewNetns creates the network namespace name (which must start with NamePrefix) and brings
// its loopback up. A namespace of the same name left over from a crashed run is deleted
// first, so a test always starts from a clean one.
func NewNetns(name string) (*Netns, error) {
	if err := checkName("network namespace", name, 0); err != nil {
		return nil, err
	}
	n := &Netns{Name: name}
	if err := n.Delete(); err != nil {
		return nil, fmt.Errorf("removing stale network namespace: %w", err)
	}
	if err := RunIP("", "netns", "add", name); err != nil {
		return nil, err
	}
	// A fresh namespace has lo down; processes in it expect 127.0.0.1 to work.
	if err := n.Run("link", "set", "lo", "up"); err != nil {
		_ = n.Delete()
		return nil, err
	}
	return n, nil
}

// Path is the namespace's bind mount, for code that enters it by file descriptor.
func (n *Netns) Path() string { return filepath.Join(netnsRunDir, n.Name) }

// Exec returns a command that runs name with args inside the namespace (through
// `ip netns exec`), for the caller to configure and start. ctx kills it as in
// exec.CommandContext.
func (n *Netns) Exec(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
}

// Run runs `ip -n <ns> args...`, e.g. n.Run("addr", "add", "10.253.0.1/30", "dev", "swyd0").
// The error includes the command's output.
func (n *Netns) Run(args ...string) error {
	return RunIP(n.Name, args...)
}

// Delete removes the namespace. Interfaces inside it go with it (a veth takes its peer
// along); processes still running inside keep it alive until they exit. Deleting a
// namespace that does not exist is not an error, so Delete is idempotent.
func (n *Netns) Delete() error {
	if err := checkName("network namespace", n.Name, 0); err != nil {
		return err
	}
	out, err := exec.Command("ip", "netns", "delete", n.Name).CombinedOutput()
	if err != nil && !strings.Contains(string(out), "No such file or directory") {
		return cmdError([]string{"ip", "netns", "delete", n.Name}, out, err)
	}
	return nil
}

// Cleanup registers n.Delete with t.Cleanup, reporting a failure to delete as a test error
// (a leaked namespace would break the next run's setup).
func (n *Netns) Cleanup(t TB) {
	t.Helper()
	t.Cleanup(func() {
		if err := n.Delete(); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
}

// RunIP runs `ip args...` in the network namespace netns ("" = the namespace the test
// process runs in, normally the host's root namespace). The error includes the output.
func RunIP(netns string, args ...string) error {
	argv := []string{"ip"}
	if netns != "" {
		if err := checkName("network namespace", netns, 0); err != nil {
			return err
		}
		argv = append(argv, "-n", netns)
	}
	argv = append(argv, args...)
	out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		return cmdError(argv, out, err)
	}
	return nil
}

// VethPair creates a veth pair whose end aName lives in namespace aNetns and end bName in
// bNetns ("" = the test process's own namespace) and sets both ends up. Addresses and
// routes are left to the caller. Leftovers of the same names from a crashed run are
// deleted first. Deleting either end (or the namespace holding it) deletes the pair.
func VethPair(aName, aNetns, bName, bNetns string) error {
	for _, name := range []string{aName, bName} {
		if err := checkName("interface", name, maxIfName); err != nil {
			return err
		}
	}
	if aName == bName && aNetns == bNetns {
		return fmt.Errorf("veth pair: both ends named %q in the same namespace", aName)
	}
	if err := DeleteLink(aName, aNetns); err != nil {
		return err
	}
	if err := DeleteLink(bName, bNetns); err != nil {
		return err
	}
	// One command creates both ends directly in their namespaces, so no temporary
	// interface ever appears in the host namespace. "netns" on the first end makes the
	// kernel create it there; without it, it is created where `ip` runs (ours).
	args := []string{"link", "add", aName}
	if aNetns != "" {
		if err := checkName("network namespace", aNetns, 0); err != nil {
			return err
		}
		args = append(args, "netns", aNetns)
	}
	args = append(args, "type", "veth", "peer", "name", bName)
	if bNetns != "" {
		if err := checkName("network namespace", bNetns, 0); err != nil {
			return err
		}
		args = append(args, "netns", bNetns)
	}
	if err := RunIP("", args...); err != nil {
		return fmt.Errorf("creating veth pair: %w", err)
	}
	if err := RunIP(aNetns, "link", "set", aName, "up"); err != nil {
		_ = DeleteLink(aName, aNetns)
		return err
	}
	if err := RunIP(bNetns, "link", "set", bName, "up"); err != nil {
		_ = DeleteLink(aName, aNetns)
		return err
	}
	return nil
}

// DeleteLink deletes interface name in namespace netns ("" = ours). A missing interface
// is not an error.
func DeleteLink(name, netns string) error {
	if err := checkName("interface", name, maxIfName); err != nil {
		return err
	}
	if err := RunIP(netns, "link", "show", "dev", name); err != nil {
		// Not there (or the namespace itself is gone): nothing to delete.
		return nil
	}
	err := RunIP(netns, "link", "delete", "dev", name)
	if err != nil && strings.Contains(err.Error(), "Cannot find device") {
		// Gone in between: deleting a namespace removes the veth ends in it, and their
		// peers elsewhere, asynchronously.
		return nil
	}
	return err
}

// CleanupLink registers DeleteLink(name, netns) with t.Cleanup. Use it for a veth end in
// the host namespace; ends inside a test namespace go when the namespace is deleted.
func CleanupLink(t TB, name, netns string) {
	t.Helper()
	t.Cleanup(func() {
		if err := DeleteLink(name, netns); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
}

// checkName enforces NamePrefix, and keeps names to characters that are safe as both a
// file name under /run/netns and an interface name. maxLen 0 means no length limit.
func checkName(kind, name string, maxLen int) error {
	if !strings.HasPrefix(name, NamePrefix) {
		return fmt.Errorf("%s name %q must start with %q so that cleanup only touches test objects", kind, name, NamePrefix)
	}
	if maxLen > 0 && len(name) > maxLen {
		return fmt.Errorf("%s name %q is longer than %d characters", kind, name, maxLen)
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return fmt.Errorf("%s name %q: only letters, digits, '-', '_' and '.' are allowed", kind, name)
		}
	}
	return nil
}

func cmdError(argv []string, out []byte, err error) error {
	var ee *exec.Error
	if errors.As(err, &ee) {
		// The binary itself is missing.
		return fmt.Errorf("%s: %w (install iproute2)", strings.Join(argv, " "), err)
	}
	return fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
}
