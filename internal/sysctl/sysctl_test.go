package sysctl

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeProc makes root a directory holding the given parameters, each as /proc/sys
// prints it (with a newline), and returns a function that reads one back.
func fakeProc(t *testing.T, params map[string]string) func(path string) string {
	t.Helper()
	dir := t.TempDir()
	for path, value := range params {
		file := filepath.Join(dir, path)
		if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(file, []byte(value+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	old := root
	root = dir
	t.Cleanup(func() { root = old })
	return func(path string) string {
		b, err := os.ReadFile(filepath.Join(dir, path))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
}

func TestEnsureWritesADifferentValue(t *testing.T) {
	const path = "net/ipv4/conf/all/route_localnet"
	read := fakeProc(t, map[string]string{path: "0"})
	if err := Ensure(path, "1"); err != nil {
		t.Fatal(err)
	}
	if got := read(path); got != "1" {
		t.Errorf("%s holds %q, want 1", path, got)
	}
}

// TestEnsureLeavesTheWantedValueAlone: a parameter that already holds the value is not
// written, so a read-only /proc/sys is no error then.
func TestEnsureLeavesTheWantedValueAlone(t *testing.T) {
	const path = "net/ipv4/conf/all/route_localnet"
	read := fakeProc(t, map[string]string{path: "1"})
	if err := os.Chmod(filepath.Join(root, path), 0o444); err != nil {
		t.Fatal(err)
	}
	if err := Ensure(path, "1"); err != nil {
		t.Fatalf("Ensure of the value it holds: %v", err)
	}
	if got := read(path); got != "1\n" {
		t.Errorf("%s holds %q: it was written", path, got)
	}
}

func TestEnsureErrors(t *testing.T) {
	t.Run("missing", func(t *testing.T) {
		fakeProc(t, map[string]string{"net/ipv4/vs/conntrack": "0"})
		err := Ensure("net/ipv4/vs/nope", "1")
		if err == nil || !strings.Contains(err.Error(), "reading net.ipv4.vs.nope") {
			t.Errorf("Ensure of a parameter that does not exist = %v, want an error that names it", err)
		}
	})
	t.Run("read-only", func(t *testing.T) {
		// The kernel lets nobody write this one, root included (its mode is 0444), so
		// the write fails without changing anything.
		if _, err := os.Stat("/proc/sys/kernel/osrelease"); err != nil {
			t.Fatalf("no /proc/sys (the test needs a Linux /proc mounted): %v", err)
		}
		err := Ensure("kernel/osrelease", "0.0.0-switchyard-test")
		if err == nil || !strings.Contains(err.Error(), "setting kernel.osrelease=0.0.0-switchyard-test") {
			t.Errorf("Ensure of a read-only parameter = %v, want an error that names it and the value", err)
		}
	})
}
