// Package modes is the registry of proxy modes: for each, the name --proxy-mode takes, how
// its backend is made for one IP family, how often it rewrites everything, what it sets on
// the node under --init-only and how what it leaves behind is removed. The command, the
// configuration's list of valid modes and the benchmarks take the modes from All, so a new
// mode is a backend package, its entry here and one more element of All.
//
// The entries live here rather than in the backend packages so that the backends stay
// usable from tests and benchmarks without the proxy's configuration, and so that one
// mode can remove another's leftovers: iptables mode removes IPVS mode's virtual servers,
// and the ipvs package already imports the iptables one.
package modes

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"

	"github.com/switchyard/switchyard/config"
	"github.com/switchyard/switchyard/iptables"
	"github.com/switchyard/switchyard/proxier"
)

// All is every proxy mode, in the order --help and errors list them. It is an explicit
// list rather than one that init functions of the backend packages fill: what the binary
// can run is written here, and importing a backend package (a test, a benchmark) does
// not change it.
var All = Registry{IPTables, IPVS}

// Mode is one proxy mode.
type Mode struct {
	// Name is the value of --proxy-mode, and of a KubeProxyConfiguration's mode.
	Name string
	// NewBackend makes the mode's backend for one IP family. A goroutine it starts for
	// the proxy ends with ctx.
	NewBackend func(ctx context.Context, cfg config.Config, env Env) (proxier.Backend, error)
	// FullSyncPeriod is how often the mode rewrites all of its rules when nothing asks it
	// to, given --sync-period.
	FullSyncPeriod func(syncPeriod time.Duration) time.Duration
	// InitNode makes the mode's node settings of one IP family that take full root
	// privileges (--init-only). Nil when the mode needs none.
	InitNode func(cfg config.Config, family proxier.Family, logger klog.Logger) error
	// RemoveLeftovers removes what the mode left on the node, in both IP families,
	// besides switchyard's iptables rules. Those are no mode's leftovers: iptables and
	// IPVS mode both write them, a full sync in either rewrites all of them, and
	// --cleanup removes them first. It runs under --cleanup, and after the first full
	// sync of every other mode. It is idempotent, and nil when the mode leaves nothing
	// else.
	RemoveLeftovers func() error
}

// Use is what a backend is made for.
type Use int

const (
	// ForProxy is a backend that runs the proxy: it prepares and changes the node.
	ForProxy Use = iota
	// ForInspection is a backend that only reads the kernel (switchyard explain): it
	// must change nothing.
	ForInspection
)

// Env is what a backend is made with besides the configuration: what the command works
// out for one IP family.
type Env struct {
	Family proxier.Family
	// IPTables writes the family's iptables rules in the node's flavor: all of iptables
	// mode's, and the small fixed set of IPVS mode.
	IPTables iptables.Interface
	// Resolve is the family's part of the configuration that Service semantics depend on.
	Resolve proxier.ResolveConfig
	// MasqueradeMark is the fwmark bit --iptables-masquerade-bit selects, as iptables
	// spells it.
	MasqueradeMark string
	Use            Use
	Registerer     prometheus.Registerer
	Logger         klog.Logger
}

// Registry is a list of proxy modes.
type Registry []Mode

// Names lists the modes' names, in the registry's order.
func (r Registry) Names() []string {
	names := make([]string, len(r))
	for i, m := range r {
		names[i] = m.Name
	}
	return names
}

// Lookup returns the mode called name.
func (r Registry) Lookup(name string) (Mode, error) {
	i := slices.IndexFunc(r, func(m Mode) bool { return m.Name == name })
	if i < 0 {
		return Mode{}, fmt.Errorf("unknown proxy mode %q: valid proxy modes are %s", name, strings.Join(r.Names(), ", "))
	}
	return r[i], nil
}

// NewBackend makes the backend of cfg's proxy mode for one IP family. The proxy's IPv4
// backend also removes, after its first successful full sync, what the registry's other
// modes left on the node; one backend is enough, since RemoveLeftovers covers both
// families.
func (r Registry) NewBackend(ctx context.Context, cfg config.Config, env Env) (proxier.Backend, error) {
	m, err := r.Lookup(cfg.Mode)
	if err != nil {
		return nil, err
	}
	backend, err := m.NewBackend(ctx, cfg, env)
	if err != nil {
		return nil, err
	}
	others := r.without(m.Name)
	if env.Use != ForProxy || env.Family != proxier.IPv4 || len(others) == 0 {
		return backend, nil
	}
	return &withoutLeftovers{Backend: backend, others: others, logger: env.Logger}, nil
}

// RemoveLeftovers removes what every mode of the registry left on the node besides
// iptables rules. It tries them all and reports every failure.
func (r Registry) RemoveLeftovers() error {
	var errs []error
	for _, m := range r {
		if m.RemoveLeftovers == nil {
			continue
		}
		if err := m.RemoveLeftovers(); err != nil {
			errs = append(errs, fmt.Errorf("removing what %s mode left on the node: %w", m.Name, err))
		}
	}
	return errors.Join(errs...)
}

// without returns the modes other than name that leave something to remove.
func (r Registry) without(name string) Registry {
	var out Registry
	for _, m := range r {
		if m.Name != name && m.RemoveLeftovers != nil {
			out = append(out, m)
		}
	}
	return out
}

// withoutLeftovers wraps a mode's backend so that switching from another mode leaves
// nothing behind. A full sync already replaces the other mode's iptables rules (every
// chain of ours it does not write is deleted); after such a sync, this removes what the
// other modes left elsewhere in the kernel, such as IPVS mode's virtual servers, its
// addresses on kube-ipvs0 and its ipsets. Until then they do no harm (iptables mode's
// rules DNAT Service traffic before IPVS would see it). It retries after each full sync
// until that succeeds.
type withoutLeftovers struct {
	proxier.Backend
	others Registry
	logger klog.Logger
	done   bool
}

func (b *withoutLeftovers) Sync(ctx context.Context, state *proxier.State, changes proxier.Changes) error {
	if err := b.Backend.Sync(ctx, state, changes); err != nil {
		return err
	}
	if !changes.Full || b.done {
		return nil
	}
	if err := b.others.RemoveLeftovers(); err != nil {
		// The IPv6 proxier's first full sync may not have replaced the other mode's
		// ip6tables rules yet, and those keep IPVS mode's IPv6 sets busy; the next full
		// sync retries.
		b.logger.Info("Could not remove what another proxy mode left on the node yet", "err", err)
		return nil
	}
	b.done = true
	return nil
}
