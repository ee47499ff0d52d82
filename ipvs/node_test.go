package ipvs_test

import (
	"fmt"
	"maps"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"k8s.io/klog/v2"

	"github.com/switchyard/switchyard/internal/sysctl/sysctltest"
	"github.com/switchyard/switchyard/ipvs"
	"github.com/switchyard/switchyard/ipvs/ipvstest"
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
// two, a sysctl that cannot be set stopping the proxy at once, and the IPVS timeouts.
func TestPrepareNode(t *testing.T) {
	always := map[string]string{vsConntrack: "1", expireNodest: "1", expireQuiescent: "1", ipForward: "1"}
	tests := []struct {
		name     string
		node     ipvs.NodeConfig
		readOnly []string
		// set are the sysctls that must end up changed, timeouts the IPVS timeouts;
		// wantErr, when set, is what the error must say.
		set      map[string]string
		timeouts ipvs.Timeouts
		wantErr  string
	}{
		{name: "IPv4", set: always, timeouts: ipvstest.DefaultTimeouts},
		{name: "strict ARP", node: ipvs.NodeConfig{StrictARP: true}, set: union(always, map[string]string{arpIgnore: "1", arpAnnounce: "2"}), timeouts: ipvstest.DefaultTimeouts},
		{name: "IPv6", node: ipvs.NodeConfig{IPv6: true}, set: union(always, map[string]string{ipv6Forwarding: "1"}), timeouts: ipvstest.DefaultTimeouts},
		{name: "timeouts: those given are set, in whole seconds", node: ipvs.NodeConfig{Timeouts: ipvs.Timeouts{TCP: 2*time.Hour + 300*time.Millisecond, UDP: 45 * time.Second}},
			set: always, timeouts: ipvs.Timeouts{TCP: 2 * time.Hour, TCPFin: ipvstest.DefaultTimeouts.TCPFin, UDP: 45 * time.Second}},
		{name: "a sysctl that cannot be set stops the proxy, and neither the sysctls after it nor the timeouts are set",
			node: ipvs.NodeConfig{Timeouts: ipvs.Timeouts{TCPFin: time.Minute}}, readOnly: []string{expireNodest},
			set: map[string]string{vsConntrack: "1"}, timeouts: ipvstest.DefaultTimeouts, wantErr: "setting net.ipv4.vs.expire_nodest_conn=1 (it is 0)"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sys := sysctltest.NewFake(kernelDefaults())
			sys.SetReadOnly(tc.readOnly...)
			table := ipvstest.NewIPVS()
			err := ipvs.PrepareNode(sys, table, tc.node, klog.Background())
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
			if got := table.Timeouts(); got != tc.timeouts {
				t.Errorf("IPVS timeouts %+v, want %+v", got, tc.timeouts)
			}
		})
	}
}

// refusingTimeouts is an IPVS table whose kernel refuses the timeouts given (above
// INT_MAX/HZ seconds, EINVAL).
type refusingTimeouts struct{ *ipvstest.IPVS }

func (refusingTimeouts) ConfigureTimeouts(ipvs.Timeouts) error {
	return fmt.Errorf("setting the IPVS timeouts: %w", syscall.EINVAL)
}

// TestPrepareNodeTimeoutsRefused: as kube-proxy, timeouts the kernel refuses are only
// logged; the proxy starts.
func TestPrepareNodeTimeoutsRefused(t *testing.T) {
	sys := sysctltest.NewFake(kernelDefaults())
	node := ipvs.NodeConfig{Timeouts: ipvs.Timeouts{TCP: 1 << 62}}
	if err := ipvs.PrepareNode(sys, refusingTimeouts{ipvstest.NewIPVS()}, node, klog.Background()); err != nil {
		t.Errorf("PrepareNode = %v, want the refused timeouts only logged", err)
	}
}

func union(a, b map[string]string) map[string]string {
	out := maps.Clone(a)
	maps.Copy(out, b)
	return out
}
