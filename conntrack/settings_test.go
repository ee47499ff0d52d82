package conntrack_test

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"k8s.io/klog/v2"

	"github.com/switchyard/switchyard/conntrack"
	"github.com/switchyard/switchyard/conntrack/conntracktest"
	"github.com/switchyard/switchyard/internal/sysctl/sysctltest"
)

// kubeProxyDefaults are kube-proxy's conntrack settings when none is given (its v1alpha1
// defaults.go).
var kubeProxyDefaults = conntrack.Settings{MaxPerCore: 32768, Min: 131072, TCPEstablishedTimeout: 24 * time.Hour, TCPCloseWaitTimeout: time.Hour}

// TestConfigure follows kube-proxy's setupConntrack and realConntracker over a fake node:
// what each setting writes, what it leaves alone, and which failures stop the proxy.
func TestConfigure(t *testing.T) {
	const (
		limit       = "net/netfilter/nf_conntrack_max"
		established = "net/netfilter/nf_conntrack_tcp_timeout_established"
		closeWait   = "net/netfilter/nf_conntrack_tcp_timeout_close_wait"
		liberal     = "net/netfilter/nf_conntrack_tcp_be_liberal"
		udp         = "net/netfilter/nf_conntrack_udp_timeout"
		udpStream   = "net/netfilter/nf_conntrack_udp_timeout_stream"
	)
	tests := []struct {
		name     string
		settings conntrack.Settings
		cpus     int
		// node changes the fake node before Configure runs.
		node func(*conntracktest.Node)
		// sysctls are the sysctls that must differ from the node's start (nil: none),
		// hashSize the hash size it must end with.
		sysctls  map[string]string
		hashSize int
		// wantErr, when set, is what Configure's error must say.
		wantErr string
	}{
		{
			name:     "kube-proxy's defaults: the minimum, 24h established, 1h close-wait",
			settings: kubeProxyDefaults, cpus: 2,
			sysctls:  map[string]string{limit: "131072", established: "86400", closeWait: "3600"},
			hashSize: 65536,
		},
		{
			name:     "per core above the minimum, with the hash size raised to a quarter",
			settings: conntrack.Settings{MaxPerCore: 65536, Min: 131072}, cpus: 8,
			sysctls:  map[string]string{limit: "524288"},
			hashSize: 131072,
		},
		{
			name:     "a higher limit is lowered, and the hash size never shrinks",
			settings: conntrack.Settings{MaxPerCore: 1000, Min: 2000}, cpus: 1,
			node:     func(n *conntracktest.Node) { _ = n.Set(limit, "1048576") },
			sysctls:  map[string]string{limit: "2000"},
			hashSize: 65536,
		},
		{
			name:     "max per core 0 leaves the limit alone, whatever the minimum and however read-only",
			settings: conntrack.Settings{MaxPerCore: 0, Min: 1 << 30, UDPTimeout: 45 * time.Second}, cpus: 4,
			node:     func(n *conntracktest.Node) { n.SetReadOnly(limit); n.MountSysFS(conntracktest.SysFSReadOnly) },
			sysctls:  map[string]string{udp: "45"},
			hashSize: 65536,
		},
		{
			name: "every timeout and liberal mode, in whole seconds",
			settings: conntrack.Settings{TCPEstablishedTimeout: 2*time.Hour + 500*time.Millisecond, TCPCloseWaitTimeout: 90 * time.Second,
				TCPBeLiberal: true, UDPTimeout: 45 * time.Second, UDPStreamTimeout: 5 * time.Minute},
			cpus:     2,
			sysctls:  map[string]string{established: "7200", closeWait: "90", liberal: "1", udp: "45", udpStream: "300"},
			hashSize: 65536,
		},
		{
			name:     "a timeout under a second is truncated to 0, as kube-proxy writes it",
			settings: conntrack.Settings{UDPTimeout: 500 * time.Millisecond}, cpus: 2,
			sysctls:  map[string]string{udp: "0"},
			hashSize: 65536,
		},
		{
			name:     "liberal mode off leaves it on",
			settings: conntrack.Settings{}, cpus: 2,
			node:     func(n *conntracktest.Node) { _ = n.Set(liberal, "1") },
			sysctls:  map[string]string{liberal: "1"},
			hashSize: 65536,
		},
		{
			name:     "a read-only /proc/sys that holds every value already: nothing to write",
			settings: kubeProxyDefaults, cpus: 2,
			node: func(n *conntracktest.Node) {
				_ = n.Set(limit, "131072")
				_ = n.Set(established, "86400")
				_ = n.Set(closeWait, "3600")
				n.SetReadOnly(limit, established, closeWait, liberal, udp, udpStream)
			},
			sysctls:  map[string]string{limit: "131072", established: "86400", closeWait: "3600"},
			hashSize: 65536,
		},
		{
			name:     "a read-only /sys leaves the hash size, is logged, and the timeouts are still set",
			settings: conntrack.Settings{MaxPerCore: 65536, Min: 131072, TCPEstablishedTimeout: time.Hour}, cpus: 8,
			node:     func(n *conntracktest.Node) { n.MountSysFS(conntracktest.SysFSReadOnly) },
			sysctls:  map[string]string{limit: "524288", established: "3600"},
			hashSize: 65536,
		},
		{
			name:     "no /sys: the proxy does not start",
			settings: kubeProxyDefaults, cpus: 2,
			node:    func(n *conntracktest.Node) { n.MountSysFS(conntracktest.NoSysFS) },
			sysctls: map[string]string{limit: "131072"},
			wantErr: "reading the conntrack hash size",
		},
		{
			name:     "a limit that cannot be set (a network namespace): the proxy does not start, and sets nothing else",
			settings: kubeProxyDefaults, cpus: 2,
			node:     func(n *conntracktest.Node) { n.SetReadOnly(limit) },
			hashSize: 65536,
			wantErr:  "setting net.netfilter.nf_conntrack_max=131072 (it is 65536)",
		},
		{
			name:     "nf_conntrack not loaded (no sysctls): the proxy does not start with kube-proxy's defaults",
			settings: kubeProxyDefaults, cpus: 2,
			node:     func(n *conntracktest.Node) { n.Fake = sysctltest.NewFake(nil) },
			hashSize: 65536,
			wantErr:  "reading net.netfilter.nf_conntrack_max",
		},
		{
			name:     "a timeout that cannot be set: the proxy does not start, and the later ones are not tried",
			settings: conntrack.Settings{TCPEstablishedTimeout: time.Hour, UDPTimeout: time.Minute}, cpus: 2,
			node:     func(n *conntracktest.Node) { n.SetReadOnly(established) },
			hashSize: 65536,
			wantErr:  "setting net.netfilter.nf_conntrack_tcp_timeout_established=3600 (it is 432000)",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			node := conntracktest.NewNode(tc.cpus)
			if tc.node != nil {
				tc.node(node)
			}
			want := node.Values()
			for k, v := range tc.sysctls {
				want[k] = v
			}
			err := conntrack.Configure(node, tc.settings, klog.Background())
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Errorf("Configure = %v, want error %q", err, tc.wantErr)
			}
			if diff := cmp.Diff(want, node.Values()); diff != "" {
				t.Errorf("sysctls (-want +got):\n%s", diff)
			}
			if got, _ := node.HashSize(); got != tc.hashSize {
				t.Errorf("hash size %d, want %d", got, tc.hashSize)
			}
		})
	}
}
