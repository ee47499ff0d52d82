package main

import (
	"context"
	"os"

	"k8s.io/klog/v2"

	"github.com/switchyard/switchyard/dummy"
	"github.com/switchyard/switchyard/ipvs"
	"github.com/switchyard/switchyard/proxier"
)

// withoutIPVSLeftovers wraps iptables mode's backend so that switching from IPVS mode
// leaves nothing behind. A full sync already removes IPVS mode's iptables rules (every
// chain of ours it does not write); after such a sync, this removes what IPVS mode left
// in the kernel: our virtual servers, our addresses on kube-ipvs0 and the device, and
// our ipsets. Until then they do no harm, because the iptables rules DNAT Service traffic
// before IPVS would see it. It retries after each full sync until that succeeds.
type withoutIPVSLeftovers struct {
	proxier.Backend
	logger klog.Logger
	done   bool
}

func (b *withoutIPVSLeftovers) Sync(ctx context.Context, state *proxier.State, changes proxier.Changes) error {
	if err := b.Backend.Sync(ctx, state, changes); err != nil {
		return err
	}
	if changes.Full && !b.done {
		b.done = b.removeLeftovers()
	}
	return nil
}

// removeLeftovers reports whether there is nothing left to remove.
func (b *withoutIPVSLeftovers) removeLeftovers() bool {
	if _, err := os.Stat("/proc/net/ip_vs"); err != nil {
		return true // no IPVS in this kernel: IPVS mode never ran here
	}
	handle, err := ipvs.New()
	if err == nil {
		err = ipvs.CleanupKernel(handle, dummy.DefaultName)
	}
	if err != nil {
		// The IPv6 proxier's first full sync may not have removed IPVS mode's ip6tables
		// rules yet, which keeps the IPv6 sets busy; the next full sync retries.
		b.logger.Info("Could not remove what IPVS mode left on the node yet", "err", err)
		return false
	}
	return true
}
