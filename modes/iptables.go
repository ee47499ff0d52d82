package modes

import (
	"context"
	"fmt"
	"time"

	"k8s.io/klog/v2"

	"github.com/switchyard/switchyard/config"
	"github.com/switchyard/switchyard/internal/sysctl"
	"github.com/switchyard/switchyard/iptables"
	"github.com/switchyard/switchyard/proxier"
)

// IPTables is iptables mode: Service traffic is DNATed by nat-table chains, written with
// iptables-restore. Everything it owns is iptables rules, so it leaves nothing else
// behind. Its one node setting of its own is route_localnet, for NodePorts on 127.0.0.1.
var IPTables = Mode{
	Name:       "iptables",
	NewBackend: newIPTablesBackend,
	// A full restore of every chain takes seconds at 10,000 Services (minutes with the nft
	// flavor), so at --sync-period every sync would become one and each change would wait
	// for it. kube-proxy does it hourly too; a flush behind its back is caught sooner by
	// the canary chain, which asks for a full sync.
	FullSyncPeriod: func(time.Duration) time.Duration { return iptablesFullSyncPeriod },
	InitNode:       initIPTablesNode,
}

// iptablesFullSyncPeriod is kube-proxy's FullSyncPeriod.
const iptablesFullSyncPeriod = time.Hour

func newIPTablesBackend(_ context.Context, cfg config.Config, env Env) (proxier.Backend, error) {
	ipv4 := env.Family == proxier.IPv4
	localhost := cfg.LocalhostNodePorts(ipv4)
	if localhost && env.Use == ForProxy {
		// As kube-proxy's NewProxier: the proxy does not start without it. Where /proc/sys
		// is read-only, --init-only has set it already, and nothing is written.
		if err := ensureRouteLocalnet(env.Logger); err != nil {
			return nil, err
		}
	}
	return iptables.NewBackend(env.IPTables, iptables.RenderConfig{
		IPv6:               !ipv4,
		ResolveConfig:      env.Resolve,
		MasqueradeMark:     env.MasqueradeMark,
		NodeName:           cfg.NodeName,
		NodePortAddresses:  cfg.NodePortPrefixes(ipv4),
		LocalhostNodePorts: localhost,
		// Read once, as kube-proxy does.
		ConntrackTCPLiberal: iptables.ConntrackTCPLiberal(),
	}, env.Registerer, env.Logger), nil
}

// initIPTablesNode sets route_localnet when NodePorts are served on 127.0.0.1.
func initIPTablesNode(cfg config.Config, family proxier.Family, logger klog.Logger) error {
	if !cfg.LocalhostNodePorts(family == proxier.IPv4) {
		return nil
	}
	return ensureRouteLocalnet(logger)
}

// routeLocalnet lets the kernel route packets whose source or destination is in
// 127.0.0.0/8 off the loopback device, which a NodePort on 127.0.0.1 DNATed to a pod
// needs (https://issues.k8s.io/90259); LocalnetFirewallChain guards what it opens.
const routeLocalnet = "net/ipv4/conf/all/route_localnet"

// ensureSysctl sets a kernel parameter of the running kernel; tests replace it.
var ensureSysctl = func(path, value string, logger klog.Logger) error {
	return sysctl.Ensure(sysctl.New(), path, value, logger)
}

func ensureRouteLocalnet(logger klog.Logger) error {
	logger.Info("Setting route_localnet=1 to allow NodePorts on localhost; to change this, disable iptables.localhostNodePorts (--iptables-localhost-nodeports) or set nodePortAddresses (--nodeport-addresses) to filter loopback addresses")
	if err := ensureSysctl(routeLocalnet, "1", logger); err != nil {
		return fmt.Errorf("NodePorts on 127.0.0.1 (iptables.localhostNodePorts): %w", err)
	}
	return nil
}
