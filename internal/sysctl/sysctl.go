// Package sysctl reads and sets kernel parameters under /proc/sys, the way kube-proxy's
// EnsureSysctl does: a parameter that already has the wanted value is never written, so
// a process without the privilege to write /proc/sys (an unprivileged container, where
// it is read-only) starts fine once a privileged step (--init-only) has set it.
package sysctl

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// root is where the kernel's parameters are; tests point it elsewhere.
var root = "/proc/sys"

// Ensure makes the kernel parameter at path ("net/ipv4/conf/all/route_localnet", as
// under /proc/sys) hold value, writing it only when it holds something else.
//
// Equivalent to: `sysctl -w net.ipv4.conf.all.route_localnet=1`, when needed.
func Ensure(path, value string) error {
	name := strings.ReplaceAll(path, "/", ".")
	file := filepath.Join(root, path)
	cur, err := os.ReadFile(file)
	if err != nil {
		return fmt.Errorf("reading %s: %w", name, err)
	}
	if strings.TrimSpace(string(cur)) == value {
		return nil
	}
	if err := os.WriteFile(file, []byte(value), 0o644); err != nil {
		return fmt.Errorf("setting %s=%s (it is %s): %w", name, value, strings.TrimSpace(string(cur)), err)
	}
	return nil
}
