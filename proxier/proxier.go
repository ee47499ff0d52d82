package proxier

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"net/netip"
	"strings"
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
	// field that had to be skipped, and on each Service with a port whose rules the
	// kernel refused.
	Events events.EventRecorder
}

// Reasons of the Warning Events the loop records.
const (
	// InvalidFieldReason is the reason of the Event recorded for a skipped field.
	InvalidFieldReason = "InvalidField"
	// FailedToProgramReason is the reason of the Event recorded on a Service when the
	// kernel refused the rules of one of its ports (see PortErrors).
	FailedToProgramReason = "FailedToProgram"
)

// eventNoteLimit is the longest note the API server accepts in an Event (events.k8s.io
// validation); a kernel's error quoting a rule can be longer.
const eventNoteLimit = 1024

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
	// failing are the ServicePorts whose rules the backend could not apply in the last
	// sync that reached it; every sync retries them until they go in.
	failing PortErrors
	// noLocal are the ports kubeproxy_sync_proxy_rules_no_local_endpoints_total counts.
	noLocal noLocalEndpoints
}

// retryMin is the first retry delay after a failed sync; it doubles up to SyncPeriod.
const retryMin = time.Second

// New makes a Proxier. Call Run to start it and feed it events with the On* methods (or
// Watch, which wires informers).
func New(opts Options) *Proxier {
	p := &Proxier{opts: opts, needFull: true, noLocal: noLocalEndpoints{}, logger: opts.Logger.WithValues("backend", opts.Backend.Name())}
	p.tracker = NewTracker(opts.Family, opts.NodeName, opts.Clock.Now(), func(e FieldError) {
		opts.Metrics.InvalidObjectFieldsTotal.Inc()
		p.logger.Error(nil, "Skipping unusable field", "object", e.ObjectName(), "field", e.Field, "value", e.Value, "reason", e.Reason)
		p.warn(&e.Object, InvalidFieldReason, e.Message())
	})
	p.runner = NewRunner(p.sync, opts.MinSyncPeriod, opts.SyncPeriod, retryMin, opts.Clock)
	opts.Metrics.pending.add(p.tracker)
	return p
}

// Tracker is the Proxier's change tracker, for event sources.
func (p *Proxier) Tracker() *Tracker { return p.tracker }

// Changed tells the loop that the tracker holds new events: it queues a sync.
func (p *Proxier) Changed() {
	p.opts.Health.QueuedUpdate()
	p.opts.Metrics.LastQueuedTimestamp.SetToCurrentTime()
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
	p.start(ctx)
	p.runner.Loop(ctx)
}

// start readies the loop. Like kube-proxy's SyncLoop, it counts as an update: a family
// that has never updated is healthy (starting up), so without it a proxier whose syncs
// never succeed would never turn /healthz red; and the family is in /healthz's status
// from now on. Also like SyncLoop, it sets the last queued time, for the informers'
// initial lists that are on their way.
func (p *Proxier) start(ctx context.Context) {
	p.ctx = ctx
	p.opts.Health.Updated()
	p.opts.Metrics.LastQueuedTimestamp.SetToCurrentTime()
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
	p.pendingTriggers = append(p.pendingTriggers, flushed.TriggerTimes...)
	p.pendingStale = append(p.pendingStale, flushed.Stale...)
	// The ports the kernel refused last time go again, as changed, whatever else changed.
	changed := flushed.Changed
	for n := range p.failing {
		changed[n] = struct{}{}
	}

	full := p.fullRequested.Swap(false) || p.needFull || flushed.NodeChanged || p.opts.Clock.Since(p.lastFull) >= p.fullSyncPeriod()
	var err error
	// A sync with nothing to apply leaves the backend alone, but it is a sync all the
	// same, observed as kube-proxy observes its periodic ones: a partial sync that took
	// next to nothing.
	if full || len(changed) > 0 {
		err = p.opts.Backend.Sync(p.ctx, flushed.State, Changes{Full: full, ServicePorts: changed})
	}
	elapsed := p.opts.Clock.Since(start).Seconds()
	p.opts.Metrics.SyncDuration.Observe(elapsed)
	if full {
		p.opts.Metrics.FullSyncDuration.Observe(elapsed)
	} else {
		p.opts.Metrics.PartialSyncDuration.Observe(elapsed)
	}
	failed, onlyPorts := portErrors(err)
	if err != nil && !onlyPorts {
		// The changes flushed above are only in the tracker's state now, so the retry
		// must be a full sync to be sure they reach the kernel.
		p.needFull = true
		p.opts.Metrics.SyncFailuresTotal.Inc()
		p.logger.Error(err, "Sync failed; retrying with a full sync", "full", full, "changedServicePorts", len(changed))
		return fmt.Errorf("%s sync: %w", p.opts.Backend.Name(), err)
	}
	// From here on the sync succeeded, for every port but the failed ones.
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
		p.updateServiceHealth(flushed.State, full, changed)
	}
	if full {
		clear(p.noLocal)
		p.noLocal.update(flushed.State, maps.Keys(flushed.State.Services))
	} else {
		p.noLocal.update(flushed.State, maps.Keys(changed))
	}
	p.noLocal.publish(p.opts.Metrics)
	p.reportFailing(failed)
	// Only now that the new rules are in place: deleted earlier, a flow could be
	// recreated through the old rules.
	p.clearStaleFlows()
	p.logger.V(2).Info("Sync complete", "full", full, "changedServicePorts", len(changed),
		"servicePorts", len(flushed.State.Services), "failedServicePorts", len(failed), "elapsed", time.Duration(elapsed*float64(time.Second)))
	// /healthz stays green while only some ports fail: it answers whether this node
	// programs Services, which it does. A liveness probe that restarted the proxy would
	// not make the kernel accept those rules, and a cloud load balancer that checks the
	// node (kube-proxy's healthz port) would take it out of rotation for every Service,
	// the very blast radius this avoids. The failing ports are in their Services' Events,
	// the log, and switchyard_sync_proxy_rules_service_port_failing.
	p.succeeded()
	if len(failed) > 0 {
		// An error, for the runner to retry the failed ports with its backoff.
		return fmt.Errorf("%s sync: %w", p.opts.Backend.Name(), err)
	}
	return nil
}

// reportFailing publishes which ServicePorts failed in the sync that just ran, and
// forgets those that went in since.
func (p *Proxier) reportFailing(failed PortErrors) {
	family := p.opts.Family.String()
	labels := func(n ServicePortName) []string { return []string{family, n.Namespace, n.Name, n.Port} }
	for n := range p.failing {
		if _, still := failed[n]; !still {
			p.opts.Metrics.ServicePortFailing.DeleteLabelValues(labels(n)...)
		}
	}
	for n, err := range failed {
		p.opts.Metrics.ServicePortFailing.WithLabelValues(labels(n)...).Set(1)
		p.logger.Error(err, "The kernel refused a Service port's rules; retrying it with backoff", "servicePort", n)
		// Every attempt records the Event again, so it stays visible for as long as the
		// port fails; the recorder folds the repeats into one series.
		if ref, ok := p.tracker.serviceReference(n.NamespacedName); ok {
			p.warn(&ref, FailedToProgramReason, fmt.Sprintf("The %s %s rules of port %s/%s could not be applied on node %s, retrying: %v",
				family, p.opts.Backend.Name(), cmp.Or(n.Port, "(unnamed)"), n.Protocol, p.opts.NodeName, err))
		}
	}
	p.failing = failed
}

// warn records a Warning Event about an object, which its owner sees with kubectl
// describe; the recorder folds repeats of the same Event into one series.
func (p *Proxier) warn(object *v1.ObjectReference, reason, note string) {
	if p.opts.Events == nil {
		return
	}
	if len(note) > eventNoteLimit {
		note = strings.ToValidUTF8(note[:eventNoteLimit-3], "") + "..."
	}
	p.opts.Events.Eventf(object, nil, v1.EventTypeWarning, reason, "Proxy", "%s", note)
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
		// Like kube-proxy (EndpointsMap.LocalReadyEndpoints), a pod counts once however
		// many ports of the Service it serves: the count is of local ready addresses.
		local := map[netip.Addr]bool{}
		for _, spn := range p.tracker.portNames[name] {
			if sp := state.Services[spn]; sp != nil && sp.HealthCheckNodePort != 0 {
				ports[name] = sp.HealthCheckNodePort
			}
			for _, e := range state.Endpoints[spn] {
				if e.Ready && e.IsLocal(state.NodeName) {
					local[e.IP] = true
				}
			}
		}
		if len(local) > 0 {
			counts[name] = len(local)
		}
	}
	p.opts.ServiceHealth.Update(ports, counts, list)
}

// clearStaleFlows deletes the conntrack entries of UDP flows that the synced changes made
// wrong: those to a changed port's addresses that none of its serving endpoints answers.
// Never a blanket flush: after a restart, every port counts as changed, and the flows
// its endpoints answer keep going. The flows of a port whose rules failed wait until
// they go in.
func (p *Proxier) clearStaleFlows() {
	var waiting []StaleFlows
	var filters []conntrack.Filter
	for _, s := range p.pendingStale {
		if _, failed := p.failing[s.Port.Name]; failed {
			waiting = append(waiting, s)
			continue
		}
		if p.opts.Conntrack == nil {
			continue
		}
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
	p.pendingStale = append(p.pendingStale[:0], waiting...)
	if len(filters) == 0 {
		return
	}
	start := p.opts.Clock.Now()
	n, err := p.opts.Conntrack.Clear(p.opts.Family == IPv6, filters...)
	// Observed whether or not the deletion failed, as kube-proxy's CleanStaleEntries
	// observes it once the table could be listed; n is what was deleted before.
	p.opts.Metrics.ConntrackReconcileDuration.Observe(p.opts.Clock.Since(start).Seconds())
	p.opts.Metrics.ConntrackDeletedEntries.Add(float64(n))
	if err != nil {
		// Not worth failing the sync: the entries expire by themselves, later.
		p.logger.Error(err, "Deleting stale conntrack entries", "filters", len(filters))
	} else {
		p.logger.V(2).Info("Deleted stale conntrack entries", "entries", n, "filters", len(filters))
	}
}
