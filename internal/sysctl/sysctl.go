// Package sysctl reads and sets kernel parameters under /proc/sys, the way kube-proxy's
// EnsureSysctl does: a parameter that already has the wanted value is never written, so
// a process without the privilege to write /proc/sys (an unprivileged container, where
// it is read-only) starts fine once a privileged step (--init-only) has set it.
//
// The kernel is reached through Interface, so that what a caller sets can be checked in
// unit tests against the stateful fake of package sysctltest.
package sysctl

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"k8s.io/klog/v2"
)

// Interface is the boundary to the kernel's parameters. A path names a parameter as it
// is under /proc/sys ("net/ipv4/conf/all/route_localnet").
type Interface interface {
	// Get returns the parameter's value as the kernel prints it, without the final
	// newline.
	//
	// Equivalent to: `sysctl -n net.ipv4.conf.all.route_localnet`
	Get(path string) (string, error)
	// Set writes the parameter.
	//
	// Equivalent to: `sysctl -w net.ipv4.conf.all.route_localnet=1`
	Set(path, value string) error
}

// New returns the running kernel's parameters, as the current network namespace sees
// them: many (the conntrack timeouts, ip_forward) are the namespace's own.
func New() Interface { return procSys{root: "/proc/sys"} }

// procSys is the files of /proc/sys, under root.
type procSys struct{ root string }

// Get is part of Interface.
func (p procSys) Get(path string) (string, error) {
	b, err := os.ReadFile(filepath.Join(p.root, path))
	return strings.TrimSpace(string(b)), err
}

// Set is part of Interface.
func (p procSys) Set(path, value string) error {
	return os.WriteFile(filepath.Join(p.root, path), []byte(value), 0o644)
}

// Ensure makes the kernel parameter at path hold value, writing it only when it holds
// something else, and logs the change.
//
// Equivalent to: `sysctl -w net.ipv4.conf.all.route_localnet=1`, when needed.
func Ensure(sys Interface, path, value string, logger klog.Logger) error {
	name := strings.ReplaceAll(path, "/", ".")
	cur, err := sys.Get(path)
	if err != nil {
		return fmt.Errorf("reading %s: %w", name, err)
	}
	if cur == value {
		return nil
	}
	logger.Info("Set sysctl", "entry", path, "value", value, "before", cur)
	if err := sys.Set(path, value); err != nil {
		return fmt.Errorf("setting %s=%s (it is %s): %w", name, value, cur, err)
	}
	return nil
}
