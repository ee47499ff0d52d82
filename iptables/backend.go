package iptables

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"

	"github.com/switchyard/switchyard/proxier"
)

// Backend programs Services as iptables rules. A full sync rewrites every chain it owns in
// one iptables-restore; a partial sync rewrites only the chains of the ServicePorts that
// changed and edits their dispatch rules in place, so its input grows with the change,
// not with the number of Services.
type Backend struct {
	ipt    Interface
	cfg    RenderConfig
	logger klog.Logger

	// written is what the last successful syncs put in the kernel, per ServicePort; a
	// partial sync diffs against it.
	written map[proxier.ServicePortName]*servicePortRules
	// ruleCount is the number of rules in written plus the static rules, per table.
	ruleCount        map[Table]int
	lastRestoreLines int

	restoreFailures        prometheus.Counter
	partialRestoreFailures prometheus.Counter
	rulesTotal             *prometheus.GaugeVec
}

// NewBackend makes an iptables backend and registers its metrics with reg.
func NewBackend(ipt Interface, cfg RenderConfig, reg prometheus.Registerer, logger klog.Logger) *Backend {
	family := "IPv4"
	if cfg.IPv6 {
		family = "IPv6"
	}
	labels := prometheus.Labels{"backend": "iptables", "ip_family": family}
	b := &Backend{
		ipt:     ipt,
		cfg:     cfg,
		logger:  logger.WithValues("flavor", ipt.Flavor(), "ipFamily", family),
		written: map[proxier.ServicePortName]*servicePortRules{},
		restoreFailures: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "kubeproxy",
			Name: "sync_proxy_rules_iptables_restore_failures_total", Help: "Cumulative proxy iptables restore failures", ConstLabels: labels}),
		partialRestoreFailures: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "kubeproxy",
			Name: "sync_proxy_rules_iptables_partial_restore_failures_total", Help: "Cumulative proxy iptables partial restore failures", ConstLabels: labels}),
		rulesTotal: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "kubeproxy",
			Name: "sync_proxy_rules_iptables_total", Help: "Total number of iptables rules owned by the proxy", ConstLabels: labels}, []string{"table"}),
	}
	reg.MustRegister(b.restoreFailures, b.partialRestoreFailures, b.rulesTotal)
	return b
}

// Name is part of proxier.Backend.
func (b *Backend) Name() string { return "iptables" }

// LastRestoreLines is the number of lines of the last iptables-restore input, the
// measure of how much work a sync handed to the kernel.
func (b *Backend) LastRestoreLines() int { return b.lastRestoreLines }

// Sync is part of proxier.Backend.
func (b *Backend) Sync(ctx context.Context, state *proxier.State, changes proxier.Changes) error {
	if changes.Full {
		if err := b.fullSync(ctx, state); err != nil {
			b.restoreFailures.Inc()
			return err
		}
		return nil
	}
	if err := b.partialSync(ctx, state, changes.ServicePorts); err != nil {
		b.partialRestoreFailures.Inc()
		return err
	}
	return nil
}

// render resolves one ServicePort and translates it into rules. iptables mode binds no
// address, so the node's own addresses do not enter the resolution.
func (b *Backend) render(state *proxier.State, sp *proxier.ServicePort) *servicePortRules {
	return renderServicePort(&b.cfg, proxier.Resolve(&b.cfg.ResolveConfig, state, sp, nil))
}

func (b *Backend) fullSync(ctx context.Context, state *proxier.State) error {
	names := make([]proxier.ServicePortName, 0, len(state.Services))
	for n := range state.Services {
		names = append(names, n)
	}
	slices.SortFunc(names, compareNames)

	rendered := make(map[proxier.ServicePortName]*servicePortRules, len(names))
	dispatch := map[chainRef][]string{}
	var serviceChains []Chain
	for _, n := range names {
		r := b.render(state, state.Services[n])
		rendered[n] = r
		for c, rules := range r.dispatch {
			dispatch[c] = append(dispatch[c], rules...)
		}
		serviceChains = append(serviceChains, r.chains...)
	}

	mark := b.cfg.MasqueradeMark
	nat := append([]Chain{
		{Name: ServicesChain, Rules: append(dispatch[natServices], nodePortJumps(&b.cfg)...)},
		{Name: NodePortsChain, Rules: dispatch[natNodePorts]},
	}, MasqueradeChains(mark)...)
	rs := Ruleset{
		Chains: map[Table][]Chain{
			TableFilter: {
				{Name: ServicesChain, Rules: dispatch[filterServices]},
				{Name: ExternalServicesChain, Rules: dispatch[filterExternalServices]},
				{Name: FirewallChain, Rules: dispatch[filterFirewall]},
				{Name: NodePortsChain, Rules: dispatch[filterNodePorts]},
				ForwardChainRules(mark, !b.cfg.ConntrackTCPLiberal),
			},
			TableNAT: append(nat, serviceChains...),
		},
		Hooks: append(CommonHooks(), filterHooks...),
	}
	lines, counts, err := Apply(ctx, b.ipt, rs)
	if err != nil {
		return fmt.Errorf("full sync of %d service ports: %w", len(names), err)
	}
	b.lastRestoreLines = lines
	b.written = rendered
	b.ruleCount = counts
	b.publishRuleCount()
	b.logger.V(2).Info("Full iptables sync", "servicePorts", len(names), "restoreLines", lines)
	return nil
}

func (b *Backend) partialSync(ctx context.Context, state *proxier.State, changed map[proxier.ServicePortName]struct{}) error {
	names := make([]proxier.ServicePortName, 0, len(changed))
	for n := range changed {
		names = append(names, n)
	}
	slices.SortFunc(names, compareNames)

	writers := map[Table]*restoreWriter{TableNAT: {}, TableFilter: {}}
	next := make(map[proxier.ServicePortName]*servicePortRules, len(names))
	delta := map[Table]int{}
	for _, n := range names {
		old := b.written[n]
		if old == nil {
			old = &servicePortRules{}
		}
		cur := &servicePortRules{}
		if sp, ok := state.Services[n]; ok {
			cur = b.render(state, sp)
		}
		next[n] = cur
		for _, c := range sharedChains {
			delta[c.table] += editDispatch(writers[c.table], c.chain, old.dispatch[c], cur.dispatch[c])
		}

		nat := writers[TableNAT]
		for _, c := range cur.chains {
			i := slices.IndexFunc(old.chains, func(o Chain) bool { return o.Name == c.Name })
			if i >= 0 && slices.Equal(old.chains[i].Rules, c.Rules) {
				continue // identical chain already in the kernel
			}
			nat.writeChain(c)
			delta[TableNAT] += len(c.Rules)
			if i >= 0 {
				delta[TableNAT] -= len(old.chains[i].Rules)
			}
		}
		for _, o := range old.chains {
			if !slices.ContainsFunc(cur.chains, func(c Chain) bool { return c.Name == o.Name }) {
				nat.deleteChain(o.Name)
				delta[TableNAT] -= len(o.Rules)
			}
		}
	}

	var out strings.Builder
	lines := writers[TableFilter].writeTo(&out, TableFilter) + writers[TableNAT].writeTo(&out, TableNAT)
	if lines > 0 {
		if err := b.ipt.Restore(ctx, []byte(out.String())); err != nil {
			return fmt.Errorf("partial sync of %d service ports: %w", len(names), err)
		}
	}
	b.lastRestoreLines = lines
	for n, r := range next {
		if len(r.dispatch)+len(r.chains) == 0 {
			delete(b.written, n)
		} else {
			b.written[n] = r
		}
	}
	for t, d := range delta {
		b.ruleCount[t] += d
	}
	b.publishRuleCount()
	b.logger.V(4).Info("Partial iptables sync", "servicePorts", len(names), "restoreLines", lines)
	return nil
}

// editDispatch turns the difference between two versions of a port's rules in a shared
// chain into deletions and insertions, so that the chain, which holds rules for every
// Service, is never rewritten whole for one Service's change. Insertions go to the top:
// these rules match disjoint destinations, so their order does not matter, while the
// catch-all jump to SWYD-NODEPORTS must stay last. It returns the change in the number
// of rules.
func editDispatch(w *restoreWriter, chain string, old, cur []string) int {
	for _, r := range old {
		if !slices.Contains(cur, r) {
			w.rules = append(w.rules, "-D "+chain+" "+r)
		}
	}
	for _, r := range cur {
		if !slices.Contains(old, r) {
			w.rules = append(w.rules, "-I "+chain+" 1 "+r)
		}
	}
	return len(cur) - len(old)
}

func (b *Backend) publishRuleCount() {
	for t, n := range b.ruleCount {
		b.rulesTotal.WithLabelValues(string(t)).Set(float64(n))
	}
}

func compareNames(a, b proxier.ServicePortName) int {
	return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name),
		cmp.Compare(a.Port, b.Port), cmp.Compare(a.Protocol, b.Protocol))
}
