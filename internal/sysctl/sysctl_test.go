package sysctl_test

import (
	"errors"
	"io/fs"
	"os"
	"strings"
	"testing"

	"k8s.io/klog/v2"

	"github.com/switchyard/switchyard/internal/sysctl"
	"github.com/switchyard/switchyard/internal/sysctl/sysctltest"
)

const routeLocalnet = "net/ipv4/conf/all/route_localnet"

// TestEnsure: a parameter is written only when it holds another value, so a read-only one
// that already holds the value is no error; a missing or read-only one that must change
// is, and the error names it.
func TestEnsure(t *testing.T) {
	tests := []struct {
		name     string
		holds    map[string]string
		readOnly bool
		want     string
		// wantErr, when set, is what the error must say; the parameter is then unchanged.
		wantErr string
	}{
		{name: "a different value is written", holds: map[string]string{routeLocalnet: "0"}, want: "1"},
		{name: "the wanted value is left alone, even read-only", holds: map[string]string{routeLocalnet: "1"}, readOnly: true, want: "1"},
		{name: "read-only and different", holds: map[string]string{routeLocalnet: "0"}, readOnly: true, want: "0",
			wantErr: "setting net.ipv4.conf.all.route_localnet=1 (it is 0)"},
		{name: "missing", holds: map[string]string{}, wantErr: "reading net.ipv4.conf.all.route_localnet"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sys := sysctltest.NewFake(tc.holds)
			if tc.readOnly {
				sys.SetReadOnly(routeLocalnet)
			}
			err := sysctl.Ensure(sys, routeLocalnet, "1", klog.Background())
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Errorf("Ensure = %v, want error %q", err, tc.wantErr)
			}
			if got := sys.Values()[routeLocalnet]; got != tc.want {
				t.Errorf("%s holds %q, want %q", routeLocalnet, got, tc.want)
			}
		})
	}
}

// TestProcSys reads and writes the kernel's own files: a parameter is read without its
// newline, and one the kernel lets nobody write (its mode is 0444, root included) is
// refused without changing anything.
func TestProcSys(t *testing.T) {
	if _, err := os.Stat("/proc/sys/kernel/osrelease"); err != nil {
		t.Fatalf("no /proc/sys (the test needs a Linux /proc mounted): %v", err)
	}
	sys := sysctl.New()
	release, err := sys.Get("kernel/osrelease")
	if err != nil || release == "" || strings.HasSuffix(release, "\n") {
		t.Errorf("Get(kernel/osrelease) = %q, %v; want the release without a newline", release, err)
	}
	if err := sys.Set("kernel/osrelease", "0.0.0-switchyard-test"); !errors.Is(err, fs.ErrPermission) {
		t.Errorf("Set of a read-only parameter = %v, want a permission error", err)
	}
	if _, err := sys.Get("net/ipv4/vs/nope"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Get of a parameter that does not exist = %v, want not-exist", err)
	}
}
