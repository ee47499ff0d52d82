package proxier

import (
	"cmp"
	"context"
	"fmt"
	"net/netip"
	"sync/atomic"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/switchyard/switchyard/conntrack"
)

// Options configures a Proxier.
type Options struct {
	Backend  Backend
	Family   Family
	NodeName string
	// MinSyncPeriod bounds how often the backend is synced; SyncPeriod is the period of
	// the sync that runs when nothing asks for one.
	MinSyncPeriod time.Duration
	SyncPeriod    time.Duration
	// FullSyncPeriod is how long the backend may go without a full sync, the one that
	// rewrites or reconciles everything and so repairs what was changed behind our back;
	// 0 means SyncPeriod. Syncs in between are partial: they apply only what changed.
	FullSyncPeriod time.Duration
	Metrics        *Metrics
	Health         *Health
	// ServiceHealth, when set, serves the healthCheckNodePorts.
	ServiceHealth *ServiceHealth
	// Conntrack, when set, deletes the UDP flows a sync made stale.
	Conntrack conntrack.Interface
	Clock     clock.WithTicker
	Logger    klog.Logger
	// Events, when set, records a Warning Event on each Service or EndpointSlice with a
	// field that had to be skipped.
	Events events.EventRecorder
}

// InvalidFieldReason is the reason of the Event recorded for a skipped field.
const InvalidFieldReason = "InvalidField"

// Proxier is the control loop: informer events go into its Tracker, its Runner decides
// when to sync, and each sync hands the desired state and the changed set to the Backend.
type Proxier struct {
	opts    Options
	logger  klog.Logger
	tracker *Tracker
	runner  *Runner
	ctx     context.Context

	// initialized is set once Services, EndpointSlices and the Node are all listed; until
	// then a sync would program a partial view of the cluster and remove rules of Services
	// not yet seen.
	initialized atomic.Bool
	// fullRequested is set by RequestFullSync, from any goroutine.
	fullRequested atomic.Bool

	// Owned by the sync goroutine.
	needFull        bool
	lastFull        time.Time
	pendingTriggers []time.Time
	pendingStale    []StaleFlows
}

// retryMin is the first retry delay after a failed sync; it doubles up to SyncPeriod.
const retryMin = time.Second

// New makes a Proxier. Call Run to start it and feed it events with the On* methods (or
// Watch, which wires informers).
func New(opts Options) *Proxier {
	p := &Proxier{opts: opts, needFull: true, logger: opts.Logger.WithValues("backend", opts.Backend.Name())}
	p.tracker = NewTracker(opts.Family, opts.NodeName, opts.Clock.Now(), func(e FieldError) {
		opts.Metrics.InvalidObjectFieldsTotal.Inc()
		p.logger.Error(nil, "Skipping unusable field", "object", e.ObjectName(), "field", e.Field, "value", e.Value, "reason", e.Reason)
		if opts.Events != nil {
			// The owner of the object sees this with kubectl describe; the recorder
			// folds repeats of the same Event into one series.
			opts.Events.Eventf(&e.Object, nil, v1.EventTypeWarning, InvalidFieldReason, "Proxy", "%s", e.Message())
		}
	})
	p.runner = NewRunner(p.sync, opts.MinSyncPeriod, opts.SyncPeriod, retryMin, opts.Clock)
	return p
}

// Tracker is the Proxier's change tracker, for event sources.
func (p *Proxier) Tracker() *Tracker { return p.tracker }

// Changed tells the loop that the tracker holds new events: it queues a sync.
func (p *Proxier) Changed() {
	p.opts.Health.QueuedUpdate()
	p.opts.Metrics.LastQueuedTimestamp.SetToCurrentTime()
	svc, eps := p.tracker.Pending()
	p.opts.Metrics.ServiceChangesPending.Set(float64(svc))
	p.opts.Metrics.EndpointChangesPending.Set(float64(eps))
	if p.initialized.Load() {
		p.runner.Run()
	}
}

// SetInitialized marks the initial lists as complete and triggers the first (full) sync.
func (p *Proxier) SetInitialized() {
	p.initialized.Store(true)
	p.Changed()
}

// RequestFullSync asks for a full sync as soon as the minimum sync interval allows, for
// when something outside switchyard removed rules (see iptables.MonitorCanary).
func (p *Proxier) RequestFullSync() {
	p.fullRequested.Store(true)
	p.Changed()
}

// Run runs the sync loop until ctx is cancelled.
func (p *Proxier) Run(ctx context.Context) {
	p.ctx = ctx
	p.runner.Loop(ctx)
}

func (p *Proxier) sync() error {
	if !p.initialized.Load() {
		return nil
	}
	// A sync that is attempted and fails must turn /healthz red even when no events
	// arrive, so every attempt counts as a queued update.
	p.opts.Health.QueuedUpdate()
	start := p.opts.Clock.Now()
	flushed := p.tracker.Flush()
	p.opts.Metrics.ServiceChangesPending.Set(0)
	p.opts.Metrics.EndpointChangesPending.Set(0)
	p.pendingTriggers = append(p.pendingTriggers, flushed.TriggerTimes...)
	p.pendingStale = append(p.pendingStale, flushed.Stale...)

	full := p.fullRequested.Swap(false) || p.needFull || flushed.NodeChanged || p.opts.Clock.Since(p.lastFull) >= p.fullSyncPeriod()
	if !full && len(flushed.Changed) == 0 {
		p.succeeded()
		return nil
	}
	err := p.opts.Backend.Sync(p.ctx, flushed.State, Changes{Full: full, ServicePorts: flushed.Changed})
	elapsed := p.opts.Clock.Since(start).Seconds()
	p.opts.Metrics.SyncDuration.Observe(elapsed)
	if full {
		p.opts.Metrics.FullSyncDuration.Observe(elapsed)
	} else {
		p.opts.Metrics.PartialSyncDuration.Observe(elapsed)
	}
	if err != nil {
		// The changes flushed above are only in the tracker's state now, so the retry
		// must be a full sync to be sure they reach the kernel.
		p.needFull = true
		p.opts.Metrics.SyncFailuresTotal.Inc()
		p.logger.Error(err, "Sync failed; retrying with a full sync", "full", full, "changedServicePorts", len(flushed.Changed))
		return fmt.Errorf("%s sync: %w", p.opts.Backend.Name(), err)
	}
	p.needFull = false
	now := p.opts.Clock.Now()
	if full {
		// From the end: a full sync that outlasts the period would otherwise make every
		// sync after it full, and changes would wait for a full sync each.
		p.lastFull = now
	}
	for _, t := range p.pendingTriggers {
		p.opts.Metrics.NetworkProgrammingDuration.Observe(now.Sub(t).Seconds())
	}
	p.pendingTriggers = p.pendingTriggers[:0]
	if p.opts.ServiceHealth != nil {
		p.updateServiceHealth(flushed.State, full, flushed.Changed)
	}
	// Only now that the new rules are in place: deleted earlier, a flow could be
	// recreated through the old rules.
	p.clearStaleFlows()
	p.logger.V(2).Info("Sync complete", "full", full, "changedServicePorts", len(flushed.Changed),
		"servicePorts", len(flushed.State.Services), "elapsed", time.Duration(elapsed*float64(time.Second)))
	p.succeeded()
	return nil
}

func (p *Proxier) fullSyncPeriod() time.Duration {
	return cmp.Or(p.opts.FullSyncPeriod, p.opts.SyncPeriod)
}

func (p *Proxier) succeeded() {
	p.opts.Health.Updated()
	p.opts.Metrics.LastSyncTimestamp.SetToCurrentTime()
}

// updateServiceHealth tells the health check servers what was just programmed: each
// Service's healthCheckNodePort and how many ready endpoints it has on this node (over all
// its ports, as kube-proxy counts them).
func (p *Proxier) updateServiceHealth(state *State, full bool, changed map[ServicePortName]struct{}) {
	names := map[types.NamespacedName]bool{}
	if full {
		for _, n := range p.opts.ServiceHealth.Services() {
			names[n] = true
		}
		for n := range p.tracker.portNames {
			names[n] = true
		}
	} else {
		for spn := range changed {
			names[spn.NamespacedName] = true
		}
	}
	ports := map[types.NamespacedName]int32{}
	counts := map[types.NamespacedName]int{}
	list := make([]types.NamespacedName, 0, len(names))
	for name := range names {
		list = append(list, name)
		for _, spn := range p.tracker.portNames[name] {
			if sp := state.Services[spn]; sp != nil && sp.HealthCheckNodePort != 0 {
				ports[name] = sp.HealthCheckNodePort
			}
			for _, e := range state.Endpoints[spn] {
				if e.Ready && e.IsLocal(state.NodeName) {
					counts[name]++
				}
			}
		}
	}
	p.opts.ServiceHealth.Update(ports, counts, list)
}

// clearStaleFlows deletes the conntrack entries of UDP flows that the synced changes made
// wrong: those to a changed port's addresses that none of its serving endpoints answers.
// Never a blanket flush: after a restart, every port counts as changed, and the flows
// its endpoints answer keep going.
func (p *Proxier) clearStaleFlows() {
	if p.opts.Conntrack == nil || len(p.pendingStale) == 0 {
		p.pendingStale = p.pendingStale[:0]
		return
	}
	var filters []conntrack.Filter
	for _, s := range p.pendingStale {
		sp := s.Port
		filter := func(ip netip.Addr, port int32) conntrack.Filter {
			return conntrack.Filter{Protocol: sp.Protocol, OrigDst: ip, OrigDstPort: uint16(port), Serving: s.Serving}
		}
		for _, ip := range append(append([]netip.Addr{sp.ClusterIP}, sp.ExternalIPs...), sp.LoadBalancerIPs...) {
			filters = append(filters, filter(ip, sp.Port))
		}
		if sp.NodePort != 0 {
			filters = append(filters, filter(netip.Addr{}, sp.NodePort)) // any node address
		}
	}
	n, err := p.opts.Conntrack.Clear(p.opts.Family == IPv6, filters...)
	if err != nil {
		// Not worth failing the sync: the entries expire by themselves, later.
		p.logger.Error(err, "Deleting stale conntrack entries", "filters", len(filters))
	} else {
		p.logger.V(2).Info("Deleted stale conntrack entries", "entries", n, "filters", len(filters))
	}
	p.pendingStale = p.pendingStale[:0]
}
