package modes

import (
	"context"
	"time"

	"github.com/switchyard/switchyard/config"
	"github.com/switchyard/switchyard/iptables"
	"github.com/switchyard/switchyard/proxier"
)

// IPTables is iptables mode: Service traffic is DNATed by nat-table chains, written with
// iptables-restore. Everything it owns is iptables rules, so it leaves nothing else
// behind, and its node settings are the ones the command makes in every mode.
var IPTables = Mode{
	Name:       "iptables",
	NewBackend: newIPTablesBackend,
	// A full restore of every chain takes seconds at 10,000 Services (minutes with the nft
	// flavor), so at --sync-period every sync would become one and each change would wait
	// for it. kube-proxy does it hourly too; a flush behind its back is caught sooner by
	// the canary chain, which asks for a full sync.
	FullSyncPeriod: func(time.Duration) time.Duration { return iptablesFullSyncPeriod },
}

// iptablesFullSyncPeriod is kube-proxy's FullSyncPeriod.
const iptablesFullSyncPeriod = time.Hour

func newIPTablesBackend(_ context.Context, cfg config.Config, env Env) (proxier.Backend, error) {
	ipv4 := env.Family == proxier.IPv4
	return iptables.NewBackend(env.IPTables, iptables.RenderConfig{
		IPv6:              !ipv4,
		ResolveConfig:     env.Resolve,
		MasqueradeMark:    env.MasqueradeMark,
		NodeName:          cfg.NodeName,
		NodePortAddresses: cfg.NodePortPrefixes(ipv4),
		// Read once, as kube-proxy does.
		ConntrackTCPLiberal: iptables.ConntrackTCPLiberal(),
	}, env.Registerer, env.Logger), nil
}
