package iptables

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchyard/switchyard/proxier"
)

// countingRestores is an Interface whose failed restores are counted.
type countingRestores struct {
	Interface
	failures prometheus.Counter
}

func (c countingRestores) Restore(ctx context.Context, data []byte) error {
	err := c.Interface.Restore(ctx, data)
	if err != nil {
		c.failures.Inc()
	}
	return err
}

// CountRestoreFailures returns ipt with every failed iptables-restore counted in
// kubeproxy_sync_proxy_rules_iptables_restore_failures_total, registered with reg, as
// kube-proxy counts them in both its iptables and its IPVS mode: each restore that fails,
// in a full sync or a partial one. Here that includes a restore that names the one
// Service port whose rules the kernel refused, after which the rest is written again
// without it.
func CountRestoreFailures(ipt Interface, family proxier.Family, reg prometheus.Registerer) Interface {
	failures := prometheus.NewCounter(prometheus.CounterOpts{Subsystem: "kubeproxy", Name: "sync_proxy_rules_iptables_restore_failures_total",
		Help: proxier.Alpha("Cumulative proxy iptables restore failures"), ConstLabels: prometheus.Labels{"ip_family": family.String()}})
	reg.MustRegister(failures)
	return countingRestores{Interface: ipt, failures: failures}
}
