package ipvs_test

import (
	"maps"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"k8s.io/klog/v2"

	"github.com/switchyard/switchyard/internal/sysctl/sysctltest"
	"github.com/switchyard/switchyard/ipvs"
)

// The sysctls IPVS mode sets, as under /proc/sys.
const (
	vsConntrack     = "net/ipv4/vs/conntrack"
	expireNodest    = "net/ipv4/vs/expire_nodest_conn"
	expireQuiescent = "net/ipv4/vs/expire_quiescent_template"
	connReuseMode   = "net/ipv4/vs/conn_reuse_mode"
	ipForward       = "net/ipv4/ip_forward"
	ipv6Forwarding  = "net/ipv6/conf/all/forwarding"
	arpIgnore       = "net/ipv4/conf/all/arp_ignore"
	arpAnnounce     = "net/ipv4/conf/all/arp_announce"
)

// kernelDefaults are the values a node starts with, before IPVS mode sets anything.
func kernelDefaults() map[string]string {
	return map[string]string{
		vsConntrack: "0", expireNodest: "0", expireQuiescent: "0", connReuseMode: "1",
		ipForward: "0", ipv6Forwarding: "0", arpIgnore: "0", arpAnnounce: "0",
	}
}

// TestPrepareNode follows kube-proxy's IPVS NewProxier: the sysctls it sets, strict ARP's
// two, and a sysctl that cannot be set stopping the proxy at once.
func TestPrepareNode(t *testing.T) {
	always := map[string]string{vsConntrack: "1", expireNodest: "1", expireQuiescent: "1", ipForward: "1"}
	tests := []struct {
		name            string
		strictARP, ipv6 bool
		readOnly        []string
		// set are the sysctls that must end up changed; wantErr, when set, is what the
		// error must say.
		set     map[string]string
		wantErr string
	}{
		{name: "IPv4", set: always},
		{name: "strict ARP", strictARP: true, set: union(always, map[string]string{arpIgnore: "1", arpAnnounce: "2"})},
		{name: "IPv6", ipv6: true, set: union(always, map[string]string{ipv6Forwarding: "1"})},
		{name: "a sysctl that cannot be set stops the proxy, and those after it are not tried", readOnly: []string{expireNodest},
			set: map[string]string{vsConntrack: "1"}, wantErr: "setting net.ipv4.vs.expire_nodest_conn=1 (it is 0)"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sys := sysctltest.NewFake(kernelDefaults())
			sys.SetReadOnly(tc.readOnly...)
			err := ipvs.PrepareNode(sys, tc.strictARP, tc.ipv6, klog.Background())
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Errorf("PrepareNode = %v, want error %q", err, tc.wantErr)
			}
			want, got := union(kernelDefaults(), tc.set), sys.Values()
			// conn_reuse_mode is set to 0 only before Linux 5.9, which depends on the
			// kernel the test runs on.
			delete(want, connReuseMode)
			delete(got, connReuseMode)
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("sysctls (-want +got):\n%s", diff)
			}
		})
	}
}

func union(a, b map[string]string) map[string]string {
	out := maps.Clone(a)
	maps.Copy(out, b)
	return out
}
