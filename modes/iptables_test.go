package modes

import (
	"context"
	"errors"
	"io"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"

	"github.com/switchyard/switchyard/config"
	"github.com/switchyard/switchyard/iptables/iptablestest"
	"github.com/switchyard/switchyard/proxier"
)

// sysctlCalls replaces ensureSysctl for a test: it records each parameter set and
// fails with err.
func sysctlCalls(t *testing.T, err error) *[]string {
	t.Helper()
	var calls []string
	old := ensureSysctl
	ensureSysctl = func(path, value string, _ klog.Logger) error {
		calls = append(calls, path+"="+value)
		return err
	}
	t.Cleanup(func() { ensureSysctl = old })
	return &calls
}

// TestRouteLocalnet: as kube-proxy's iptables NewProxier, the proxy sets route_localnet
// when NodePorts are served on 127.0.0.1 (IPv4, the flag, loopback among the node-port
// addresses), and does not start without it; --init-only sets it too; explain changes
// nothing.
func TestRouteLocalnet(t *testing.T) {
	tests := []struct {
		name   string
		args   []string
		family proxier.Family
		use    Use
		// byBackend and byInit say whether making the backend and --init-only set it.
		byBackend, byInit bool
	}{
		{name: "default", family: proxier.IPv4, use: ForProxy, byBackend: true, byInit: true},
		{name: "IPv6", family: proxier.IPv6, use: ForProxy},
		{name: "flag off", args: []string{"--iptables-localhost-nodeports=false"}, family: proxier.IPv4, use: ForProxy},
		{name: "node-port addresses without loopback", args: []string{"--nodeport-addresses=192.168.0.0/16"}, family: proxier.IPv4, use: ForProxy},
		{name: "node-port addresses with loopback", args: []string{"--nodeport-addresses=192.168.0.0/16,127.0.0.1/32"}, family: proxier.IPv4, use: ForProxy, byBackend: true, byInit: true},
		{name: "explain", family: proxier.IPv4, use: ForInspection, byInit: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			parsed, err := config.Parse(append(tc.args, "--hostname-override=node-a"), All.Names(), io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			check := func(step string, calls []string, want bool) {
				t.Helper()
				if got := len(calls) == 1 && calls[0] == routeLocalnet+"=1"; got != want || len(calls) > 1 {
					t.Errorf("%s set %q; want route_localnet=1 set: %t", step, calls, want)
				}
			}
			env := Env{Family: tc.family, IPTables: iptablestest.NewFake(), Use: tc.use, Registerer: prometheus.NewRegistry(), Logger: klog.Background()}
			calls := sysctlCalls(t, nil)
			if _, err := newIPTablesBackend(context.Background(), parsed.Config, env); err != nil {
				t.Fatal(err)
			}
			check("making the backend", *calls, tc.byBackend)
			*calls = nil
			if err := initIPTablesNode(parsed.Config, tc.family, klog.Background()); err != nil {
				t.Fatal(err)
			}
			check("--init-only", *calls, tc.byInit)
		})
	}

	t.Run("a failure stops the proxy", func(t *testing.T) {
		refused := errors.New("read-only file system")
		sysctlCalls(t, refused)
		env := Env{Family: proxier.IPv4, IPTables: iptablestest.NewFake(), Use: ForProxy, Registerer: prometheus.NewRegistry(), Logger: klog.Background()}
		if _, err := newIPTablesBackend(context.Background(), config.Defaults(), env); !errors.Is(err, refused) {
			t.Errorf("newIPTablesBackend = %v, want the sysctl's error", err)
		}
		if err := initIPTablesNode(config.Defaults(), proxier.IPv4, klog.Background()); !errors.Is(err, refused) {
			t.Errorf("initIPTablesNode = %v, want the sysctl's error", err)
		}
	})
}
