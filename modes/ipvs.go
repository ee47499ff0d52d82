package modes

import (
	"context"
	"fmt"
	"os"
	"time"

	"k8s.io/klog/v2"

	"github.com/switchyard/switchyard/config"
	"github.com/switchyard/switchyard/dummy"
	"github.com/switchyard/switchyard/internal/sysctl"
	"github.com/switchyard/switchyard/ipvs"
	"github.com/switchyard/switchyard/proxier"
)

// IPVS is IPVS mode: every Service address is an IPVS virtual server bound on the
// kube-ipvs0 dummy device, with a small fixed set of iptables rules that match ipsets.
var IPVS = Mode{
	Name:       "ipvs",
	NewBackend: newIPVSBackend,
	// IPVS mode reconciles the kernel on every periodic sync, as kube-proxy's IPVS mode
	// does: a full sync lists the virtual servers, addresses and sets and fixes what
	// differs, which is how a virtual server or address deleted behind our back comes back.
	FullSyncPeriod:  func(syncPeriod time.Duration) time.Duration { return syncPeriod },
	InitNode:        initIPVSNode,
	RemoveLeftovers: removeIPVSLeftovers,
}

// drainInterval is how often IPVS mode checks whether removed real servers have drained.
const drainInterval = 5 * time.Second

// terminationGrace bounds how long a removed IPVS real server keeps its connections.
const terminationGrace = 2 * time.Minute

func newIPVSBackend(ctx context.Context, cfg config.Config, env Env) (proxier.Backend, error) {
	ipv6 := env.Family == proxier.IPv6
	var handle ipvs.Interface
	var dev *dummy.Device
	var err error
	if env.Use == ForInspection {
		// A missing device stays missing: Explain reports it.
		if handle, err = ipvs.New(); err == nil {
			dev, err = dummy.Lookup(dummy.DefaultName)
		}
	} else if handle, err = prepareIPVS(cfg, ipv6, env.Logger); err == nil {
		dev, err = dummy.Ensure(dummy.DefaultName)
	}
	if err != nil {
		return nil, err
	}
	b := ipvs.NewBackend(handle, env.IPTables, dev, ipvs.Config{
		Scheduler:         cfg.IPVSScheduler,
		ResolveConfig:     env.Resolve,
		MasqueradeMark:    env.MasqueradeMark,
		TerminationGrace:  terminationGrace,
		NodePortAddresses: cfg.NodePortPrefixes(!ipv6),
		IPv6:              ipv6,
		ExcludeCIDRs:      cfg.IPVSExcludeCIDRs,
	}, env.Registerer, env.Logger)
	if env.Use == ForProxy {
		go b.RunDrainer(ctx, drainInterval)
	}
	return b, nil
}

// initIPVSNode loads the ip_vs module, sets the IPVS sysctls of one IP family and the
// IPVS timeouts.
func initIPVSNode(cfg config.Config, family proxier.Family, logger klog.Logger) error {
	_, err := prepareIPVS(cfg, family == proxier.IPv6, logger)
	return err
}

// prepareIPVS opens IPVS, which loads the ip_vs module when it can, then checks the
// scheduler and applies the sysctls and timeouts that exist only once the module is
// loaded; a sysctl that cannot be set stops the proxy, as in kube-proxy.
func prepareIPVS(cfg config.Config, ipv6 bool, logger klog.Logger) (ipvs.Interface, error) {
	handle, err := ipvs.New()
	if err != nil {
		return nil, err
	}
	if err := ipvs.CheckScheduler(cfg.IPVSScheduler); err != nil {
		// The kernel may still load it on first use; if it cannot, adding virtual
		// servers fails and says so on every sync.
		logger.Error(err, "IPVS scheduler may be unavailable")
	}
	node := ipvs.NodeConfig{
		StrictARP: cfg.IPVSStrictARP,
		IPv6:      ipv6,
		Timeouts:  ipvs.Timeouts{TCP: cfg.IPVSTCPTimeout, TCPFin: cfg.IPVSTCPFinTimeout, UDP: cfg.IPVSUDPTimeout},
	}
	if err := ipvs.PrepareNode(sysctl.New(), handle, node, logger); err != nil {
		return nil, fmt.Errorf("IPVS mode's sysctls: %w", err)
	}
	return handle, nil
}

// removeIPVSLeftovers removes IPVS mode's virtual servers, its addresses and the
// kube-ipvs0 device, and its ipsets. The sets can only go once no iptables rule uses
// them, which is why it runs after the other mode's full sync, or after --cleanup has
// removed the iptables rules.
func removeIPVSLeftovers() error {
	if _, err := os.Stat("/proc/net/ip_vs"); err != nil {
		return nil // no IPVS in this kernel: IPVS mode never ran here
	}
	handle, err := ipvs.New()
	if err != nil {
		return err
	}
	return ipvs.CleanupKernel(handle, dummy.DefaultName)
}
