package iptables

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
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

	// partialRestoreFailures counts the partial syncs that failed as a whole, each
	// retried as a full sync.
	partialRestoreFailures prometheus.Counter
	// rulesTotal is ruleCount, and rulesLast the rules the last sync wrote, per table.
	rulesTotal, rulesLast *prometheus.GaugeVec
}

// NewBackend makes an iptables backend and registers its metrics with reg: kube-proxy's
// of its iptables mode, with the restore failures of both modes (CountRestoreFailures).
func NewBackend(ipt Interface, cfg RenderConfig, reg prometheus.Registerer, logger klog.Logger) *Backend {
	family := proxier.IPv4
	if cfg.IPv6 {
		family = proxier.IPv6
	}
	labels := prometheus.Labels{"ip_family": family.String()}
	gauge := func(name, help string) *prometheus.GaugeVec {
		return prometheus.NewGaugeVec(prometheus.GaugeOpts{Subsystem: "kubeproxy", Name: name, Help: proxier.Alpha(help), ConstLabels: labels}, []string{"table"})
	}
	b := &Backend{
		ipt:     CountRestoreFailures(ipt, family, reg),
		cfg:     cfg,
		logger:  logger.WithValues("flavor", ipt.Flavor(), "ipFamily", family.String()),
		written: map[proxier.ServicePortName]*servicePortRules{},
		partialRestoreFailures: prometheus.NewCounter(prometheus.CounterOpts{Subsystem: "kubeproxy", Name: "sync_proxy_rules_iptables_partial_restore_failures_total",
			Help: proxier.Alpha("Cumulative proxy iptables partial restore failures"), ConstLabels: labels}),
		rulesTotal: gauge("sync_proxy_rules_iptables_total", "Total number of iptables rules owned by kube-proxy"),
		rulesLast:  gauge("sync_proxy_rules_iptables_last", "Number of iptables rules written by kube-proxy in last sync"),
	}
	reg.MustRegister(b.partialRestoreFailures, b.rulesTotal, b.rulesLast)
	if cfg.skipsLoopbackRange() {
		// kube-proxy logs this on every sync; the configuration cannot change meanwhile.
		b.logger.Error(nil, "--nodeport-addresses includes localhost, but localhost NodePorts are not served (--iptables-localhost-nodeports=false, or IPv6): NodePorts are left out there", "nodePortAddresses", cfg.NodePortAddresses)
	}
	return b
}

// Name is part of proxier.Backend.
func (b *Backend) Name() string { return "iptables" }

// LastRestoreLines is the number of lines of the last iptables-restore input, the
// measure of how much work a sync handed to the kernel.
func (b *Backend) LastRestoreLines() int { return b.lastRestoreLines }

// maxRefusedPorts bounds how many ServicePorts one sync leaves out because the kernel
// refused their rules. iptables-restore stops at the first line it refuses, so each one
// costs another restore (two in a full sync when what was last written for it is refused
// too), of everything in a full sync; past the bound, the sync fails as a whole and is
// retried as a full sync.
const maxRefusedPorts = 8

// Sync is part of proxier.Backend. When the kernel refuses a line of one ServicePort's
// rules, the restore is written again without that port (see refusedPort), and the port
// is returned in a proxier.PortErrors.
func (b *Backend) Sync(ctx context.Context, state *proxier.State, changes proxier.Changes) error {
	var refused proxier.PortErrors
	var err error
	if changes.Full {
		if refused, err = b.fullSync(ctx, state); err != nil {
			return err
		}
	} else if refused, err = b.partialSync(ctx, state, changes.ServicePorts); err != nil {
		b.partialRestoreFailures.Inc()
		return err
	}
	return refused.ErrorOrNil()
}

// render resolves one ServicePort and translates it into rules. iptables mode binds no
// address, so the node's own addresses do not enter the resolution.
func (b *Backend) render(state *proxier.State, sp *proxier.ServicePort) *servicePortRules {
	return renderServicePort(&b.cfg, proxier.Resolve(&b.cfg.ResolveConfig, state, sp, nil))
}

// fullSync rewrites every chain we own from the desired state. A port whose rules the
// kernel refuses keeps what was last written for it (rewritten as it was, since a full
// sync deletes every chain it does not write), or, if the kernel refuses that too,
// nothing.
func (b *Backend) fullSync(ctx context.Context, state *proxier.State) (proxier.PortErrors, error) {
	rendered := make(map[proxier.ServicePortName]*servicePortRules, len(state.Services))
	for n, sp := range state.Services {
		rendered[n] = b.render(state, sp)
	}
	refused := proxier.PortErrors{}
	for {
		lines, counts, err := Apply(ctx, b.ipt, b.ruleset(rendered))
		if err == nil {
			b.lastRestoreLines = lines
			b.written = rendered
			b.ruleCount = counts
			b.publishWritten(counts)
			break
		}
		owners := &lineOwners{}
		for n, r := range rendered {
			owners.add(n, r)
		}
		r, ok := refusedPort(err, owners)
		if !ok || len(refused) == maxRefusedPorts {
			return nil, fmt.Errorf("full sync of %d service ports: %w", len(state.Services), err)
		}
		if _, again := refused[r.port]; !again && b.written[r.port] != nil {
			rendered[r.port] = b.written[r.port]
			refused[r.port] = r.reason
		} else {
			delete(rendered, r.port)
			refused[r.port] = cmp.Or(refused[r.port], r.reason) // the new rules' reason tells most
		}
	}
	b.publishRuleCount()
	b.logger.V(2).Info("Full iptables sync", "servicePorts", len(state.Services), "refusedServicePorts", len(refused), "restoreLines", b.lastRestoreLines)
	return refused, nil
}

// ruleset is everything we own in iptables, with the given rules for the ServicePorts.
func (b *Backend) ruleset(ports map[proxier.ServicePortName]*servicePortRules) Ruleset {
	names := slices.SortedFunc(maps.Keys(ports), proxier.ServicePortName.Compare)
	dispatch := map[chainRef][]string{}
	var serviceChains []Chain
	for _, n := range names {
		r := ports[n]
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
	filter := []Chain{
		{Name: ServicesChain, Rules: dispatch[filterServices]},
		{Name: ExternalServicesChain, Rules: dispatch[filterExternalServices]},
		{Name: FirewallChain, Rules: dispatch[filterFirewall]},
		{Name: NodePortsChain, Rules: dispatch[filterNodePorts]},
		ForwardChainRules(mark, !b.cfg.ConntrackTCPLiberal),
	}
	hooks := append(CommonHooks(), filterHooks...)
	if b.cfg.servesLoopback() {
		filter = append(filter, localnetFirewall())
		hooks = append(hooks, localnetHooks...)
	}
	return Ruleset{
		Chains: map[Table][]Chain{TableFilter: filter, TableNAT: append(nat, serviceChains...)},
		Hooks:  hooks,
	}
}

// partialSync rewrites the chains of the changed ServicePorts and edits their rules in
// the shared chains. A port whose rules the kernel refuses keeps what it has there.
func (b *Backend) partialSync(ctx context.Context, state *proxier.State, changed map[proxier.ServicePortName]struct{}) (proxier.PortErrors, error) {
	names := slices.SortedFunc(maps.Keys(changed), proxier.ServicePortName.Compare)
	next := make(map[proxier.ServicePortName]*servicePortRules, len(names))
	for _, n := range names {
		next[n] = &servicePortRules{}
		if sp, ok := state.Services[n]; ok {
			next[n] = b.render(state, sp)
		}
	}
	refused := proxier.PortErrors{}
	for {
		input, lines, delta, written := b.partialInput(names, next)
		var err error
		if lines > 0 {
			err = b.ipt.Restore(ctx, []byte(input))
		}
		if err == nil {
			b.lastRestoreLines = lines
			for _, n := range names {
				b.setWritten(n, next[n])
			}
			for t, d := range delta {
				b.ruleCount[t] += d
			}
			b.publishWritten(written)
			break
		}
		owners := &lineOwners{}
		for _, n := range names {
			owners.add(n, b.writtenOrEmpty(n))
			owners.add(n, next[n])
		}
		r, ok := refusedPort(err, owners)
		if !ok || len(refused) == maxRefusedPorts {
			return nil, fmt.Errorf("partial sync of %d service ports: %w", len(changed), err)
		}
		// In the tables committed before the refused line, every port of this attempt
		// has its new rules already.
		for _, n := range names {
			b.setWritten(n, b.writtenOrEmpty(n).withTables(next[n], r.committed))
		}
		for _, t := range r.committed {
			b.ruleCount[t] += delta[t]
		}
		refused[r.port] = r.reason
		names = slices.DeleteFunc(names, func(n proxier.ServicePortName) bool { return n == r.port })
	}
	b.publishRuleCount()
	b.logger.V(4).Info("Partial iptables sync", "servicePorts", len(changed), "refusedServicePorts", len(refused), "restoreLines", b.lastRestoreLines)
	return refused, nil
}

// partialInput is the restore input that moves the named ports from what was written for
// them to next, its number of lines, and per table the change in the number of rules and
// the rules it writes.
func (b *Backend) partialInput(names []proxier.ServicePortName, next map[proxier.ServicePortName]*servicePortRules) (input string, lines int, delta, written map[Table]int) {
	writers := map[Table]*restoreWriter{TableNAT: {}, TableFilter: {}}
	delta, written = map[Table]int{}, map[Table]int{}
	for _, n := range names {
		old, cur := b.writtenOrEmpty(n), next[n]
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
	lines = writers[TableFilter].writeTo(&out, TableFilter) + writers[TableNAT].writeTo(&out, TableNAT)
	for t, w := range writers {
		written[t] = w.additions()
	}
	return out.String(), lines, delta, written
}

// writtenOrEmpty is what the last syncs wrote for a port, empty when nothing.
func (b *Backend) writtenOrEmpty(n proxier.ServicePortName) *servicePortRules {
	if r := b.written[n]; r != nil {
		return r
	}
	return &servicePortRules{}
}

// setWritten records what the kernel holds for a port.
func (b *Backend) setWritten(n proxier.ServicePortName, r *servicePortRules) {
	if len(r.dispatch)+len(r.chains) == 0 {
		delete(b.written, n)
	} else {
		b.written[n] = r
	}
}

// withTables is r with next's rules in the given tables: what a port has in the kernel
// once a restore committed only those tables' sections.
func (r *servicePortRules) withTables(next *servicePortRules, tables []Table) *servicePortRules {
	out := &servicePortRules{dispatch: map[chainRef][]string{}, chains: r.chains}
	if slices.Contains(tables, TableNAT) {
		out.chains = next.chains // the per-port chains are all in nat
	}
	for _, c := range sharedChains {
		from := r
		if slices.Contains(tables, c.table) {
			from = next
		}
		if rules := from.dispatch[c]; len(rules) > 0 {
			out.dispatch[c] = rules
		}
	}
	return out
}

// lineOwners maps the lines of a restore input back to the ServicePorts whose rules they
// write. It is built only once a restore has failed, from the rules the input was written
// from, so that a sync that succeeds pays nothing for it.
type lineOwners struct {
	chains   map[string]proxier.ServicePortName
	dispatch map[chainRef]map[string]proxier.ServicePortName
}

func (o *lineOwners) add(n proxier.ServicePortName, r *servicePortRules) {
	if o.chains == nil {
		o.chains, o.dispatch = map[string]proxier.ServicePortName{}, map[chainRef]map[string]proxier.ServicePortName{}
	}
	for _, c := range r.chains {
		o.chains[c.Name] = n
	}
	for c, rules := range r.dispatch {
		if o.dispatch[c] == nil {
			o.dispatch[c] = map[string]proxier.ServicePortName{}
		}
		for _, rule := range rules {
			o.dispatch[c][rule] = n
		}
	}
}

// owner finds the port whose rules a line of a table's section adds: the declaration of
// one of its chains, a rule appended to one, or its rule appended or inserted (at the
// top, as editDispatch does) in a shared chain.
func (o *lineOwners) owner(table Table, line string) (proxier.ServicePortName, bool) {
	if decl, ok := strings.CutPrefix(line, ":"); ok {
		chain, _, _ := strings.Cut(decl, " ")
		n, ok := o.chains[chain]
		return n, ok
	}
	cmd, rest, _ := strings.Cut(line, " ")
	chain, rule, _ := strings.Cut(rest, " ")
	switch cmd {
	case "-A":
	case "-I":
		rule = strings.TrimPrefix(rule, "1 ")
	default:
		return proxier.ServicePortName{}, false
	}
	if n, ok := o.chains[chain]; ok {
		return n, true
	}
	n, ok := o.dispatch[chainRef{table, chain}][rule]
	return n, ok
}

// refusal is a restore that failed on one ServicePort's rules.
type refusal struct {
	port   proxier.ServicePortName
	reason error
	// committed are the tables whose sections took effect before the refused line.
	committed []Table
}

// refusedPort finds the ServicePort whose rules a restore failed on, from the line
// iptables-restore names. Only a line that adds a port's rules counts: a deletion that
// fails (-D, -X) means the kernel does not hold what we wrote, which only a full sync
// repairs, and a line that is no port's (our fixed chains, the hooks, a stale chain)
// fails the whole sync.
func refusedPort(err error, owners *lineOwners) (refusal, bool) {
	var re *RestoreError
	if !errors.As(err, &re) {
		return refusal{}, false
	}
	line, ok := re.RefusedLine()
	if !ok {
		return refusal{}, false
	}
	name, ok := owners.owner(line.Table, line.Text)
	if !ok {
		return refusal{}, false
	}
	return refusal{port: name, reason: fmt.Errorf("iptables-restore refused %q: %s: %w", line.Text, re.Message(), re.Err), committed: line.Committed}, true
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

// publishWritten publishes the rules a sync wrote per table: the whole of our chains in
// a full sync, as kube-proxy's full sync; in a partial one, the rules of the chains it
// rewrote and those it inserted into the shared chains, where kube-proxy's also counts
// the shared chains it rewrites whole on every sync.
func (b *Backend) publishWritten(written map[Table]int) {
	for _, t := range []Table{TableFilter, TableNAT} {
		b.rulesLast.WithLabelValues(string(t)).Set(float64(written[t]))
	}
}
