package iptables

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"k8s.io/klog/v2"
)

// CanaryChain is an empty chain in the mangle table, which no sync writes or deletes.
// When it is gone, something flushed the tables behind our back (a firewall reload,
// `iptables -F; iptables -X`), most likely with our rules, and a full sync must put them
// back at once rather than at the next periodic one. kube-proxy watches for the same
// thing with its KUBE-PROXY-CANARY chains.
const CanaryChain = ChainPrefix + "CANARY"

// MonitorCanary creates the canary chain, then checks for it every interval until ctx
// ends. Each time it finds the chain gone, it creates it again and calls flushed. Errors
// (the xtables lock held, say) are logged and the check is retried at the next interval.
func MonitorCanary(ctx context.Context, ipt Interface, interval time.Duration, flushed func(), logger klog.Logger) {
	if err := ensureCanary(ctx, ipt); err != nil {
		logger.Error(err, "Could not create the canary chain; a flush of the tables is only repaired by the periodic full sync")
	}
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		present, err := canaryPresent(ctx, ipt)
		if err != nil {
			logger.V(2).Info("Could not check the canary chain", "err", err)
			continue
		}
		if present {
			continue
		}
		logger.Info("The canary chain is gone: the iptables tables were flushed behind our back; resyncing everything", "chain", CanaryChain)
		if err := ensureCanary(ctx, ipt); err != nil {
			logger.Error(err, "Could not create the canary chain again")
		}
		flushed()
	}
}

func ensureCanary(ctx context.Context, ipt Interface) error {
	// Declaring an existing chain in a --noflush restore only empties it, and ours is empty.
	input := fmt.Sprintf("*%s\n:%s - [0:0]\nCOMMIT\n", TableMangle, CanaryChain)
	if err := ipt.Restore(ctx, []byte(input)); err != nil {
		return fmt.Errorf("creating %s in the %s table: %w", CanaryChain, TableMangle, err)
	}
	return nil
}

func canaryPresent(ctx context.Context, ipt Interface) (bool, error) {
	dump, err := ipt.Save(ctx, TableMangle)
	if err != nil {
		return false, err
	}
	return strings.Contains(string(dump), "\n:"+CanaryChain+" "), nil
}

// removeCanary deletes the canary chain when it is there (--cleanup). A kernel without
// the mangle table cannot hold it.
func removeCanary(ctx context.Context, ipt Interface) error {
	present, err := canaryPresent(ctx, ipt)
	if errors.Is(err, ErrNoTable) {
		return nil
	}
	if err != nil || !present {
		return err
	}
	input := fmt.Sprintf("*%s\n-X %s\nCOMMIT\n", TableMangle, CanaryChain)
	if err := ipt.Restore(ctx, []byte(input)); err != nil {
		return fmt.Errorf("deleting %s from the %s table: %w", CanaryChain, TableMangle, err)
	}
	return nil
}
