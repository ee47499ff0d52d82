package proxier

import (
	"iter"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// The kubeproxy_* metrics are kube-proxy's (k8s.io/kubernetes pkg/proxy/metrics): its
// names, types, label names, buckets and help texts, so that a dashboard or an alert
// written for kube-proxy reads switchyard unchanged, and each is observed where kube-proxy
// observes it. modes/metrics_test.go holds them to the pinned release; where they differ,
// docs/node-contract.md says why. switchyard's own metrics are named switchyard_*.

// kubeProxySubsystem prefixes kube-proxy's metric names.
const kubeProxySubsystem = "kubeproxy"

// Alpha is the help text of a kube-proxy metric as its /metrics prints it: component-base
// prefixes the help of a metric with its stability level, and all of kube-proxy's are
// ALPHA.
func Alpha(help string) string { return "[ALPHA] " + help }

// syncBuckets are the buckets of kube-proxy's sync duration histograms (and of its conntrack
// reconciler's): 1 ms doubling up to ~16 s.
var syncBuckets = prometheus.ExponentialBuckets(0.001, 2, 15)

// programmingBuckets are kube-proxy's network-programming buckets: fine below a minute,
// coarse up to five. The leading 0 is kube-proxy's too: component-base's MergeBuckets
// starts the list it merges with one.
func programmingBuckets() []float64 {
	b := []float64{0}
	b = append(b, prometheus.LinearBuckets(0.25, 0.25, 2)...)
	b = append(b, prometheus.LinearBuckets(1, 1, 59)...)
	b = append(b, prometheus.LinearBuckets(60, 5, 12)...)
	return append(b, prometheus.LinearBuckets(120, 30, 7)...)
}

// The traffic_policy values of kubeproxy_sync_proxy_rules_no_local_endpoints_total.
const (
	internalPolicy = "internal"
	externalPolicy = "external"
)

// Metrics are one IP family's proxier's metrics (see MetricVecs.For). The series of the
// loop are per family (ip_family), as kube-proxy's, one per proxier; the change counters
// and gauges are the process's, shared by every family, as kube-proxy's have no ip_family.
type Metrics struct {
	SyncDuration               prometheus.Observer
	FullSyncDuration           prometheus.Observer
	PartialSyncDuration        prometheus.Observer
	NetworkProgrammingDuration prometheus.Observer
	LastSyncTimestamp          prometheus.Gauge
	LastQueuedTimestamp        prometheus.Gauge
	// NoLocalEndpoints are the Service ports of this family whose Local traffic policy
	// finds no local endpoint while endpoints exist elsewhere, by policy.
	NoLocalEndpoints map[string]prometheus.Gauge
	// ConntrackReconcileDuration and ConntrackDeletedEntries are observed at each
	// deletion of stale UDP flows.
	ConntrackReconcileDuration prometheus.Observer
	ConntrackDeletedEntries    prometheus.Counter
	SyncFailuresTotal          prometheus.Counter
	InvalidObjectFieldsTotal   prometheus.Counter
	// ServicePortFailing is 1 for each ServicePort whose rules the kernel refused in the
	// last sync, by IP family. Only ports failing now have a series, so the labels stay
	// as few as the failures; the kernel's error, free text, is in the Service's Event
	// and the log instead.
	ServicePortFailing *prometheus.GaugeVec

	// ServiceChangesTotal and EndpointChangesTotal count the events received, once per
	// event whichever families they concern (see Watch).
	ServiceChangesTotal  prometheus.Counter
	EndpointChangesTotal prometheus.Counter
	// pending publishes what the trackers hold unsynced.
	pending *pendingChanges
}

// MetricVecs are the proxy's metrics, registered once for every IP family.
type MetricVecs struct {
	syncDuration, fullSyncDuration, partialSyncDuration, networkProgrammingDuration, conntrackReconcileDuration *prometheus.HistogramVec
	lastSyncTimestamp, lastQueuedTimestamp, noLocalEndpoints, servicePortFailing                                *prometheus.GaugeVec
	conntrackDeletedEntries, syncFailuresTotal, invalidObjectFieldsTotal                                        *prometheus.CounterVec
	serviceChangesTotal, endpointChangesTotal                                                                   prometheus.Counter
	// healthzTotal and livezTotal count the answers of /healthz and /livez by status.
	healthzTotal, livezTotal *prometheus.CounterVec
	pending                  *pendingChanges
}

// For returns the metrics of one family's proxier. Each family has its own series of the
// loop, as in kube-proxy: with one shared series, a family's quick sync would hide that
// the other's has not finished.
func (v *MetricVecs) For(family Family) *Metrics {
	f := family.String()
	return &Metrics{
		SyncDuration:               v.syncDuration.WithLabelValues(f),
		FullSyncDuration:           v.fullSyncDuration.WithLabelValues(f),
		PartialSyncDuration:        v.partialSyncDuration.WithLabelValues(f),
		NetworkProgrammingDuration: v.networkProgrammingDuration.WithLabelValues(f),
		LastSyncTimestamp:          v.lastSyncTimestamp.WithLabelValues(f),
		LastQueuedTimestamp:        v.lastQueuedTimestamp.WithLabelValues(f),
		NoLocalEndpoints: map[string]prometheus.Gauge{
			internalPolicy: v.noLocalEndpoints.WithLabelValues(internalPolicy, f),
			externalPolicy: v.noLocalEndpoints.WithLabelValues(externalPolicy, f),
		},
		ConntrackReconcileDuration: v.conntrackReconcileDuration.WithLabelValues(f),
		ConntrackDeletedEntries:    v.conntrackDeletedEntries.WithLabelValues(f),
		SyncFailuresTotal:          v.syncFailuresTotal.WithLabelValues(f),
		InvalidObjectFieldsTotal:   v.invalidObjectFieldsTotal.WithLabelValues(f),
		ServicePortFailing:         v.servicePortFailing,
		ServiceChangesTotal:        v.serviceChangesTotal,
		EndpointChangesTotal:       v.endpointChangesTotal,
		pending:                    v.pending,
	}
}

// NewMetrics creates the proxy's metrics and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *MetricVecs {
	family := []string{"ip_family"}
	histogram := func(name, help string, buckets []float64) *prometheus.HistogramVec {
		return prometheus.NewHistogramVec(prometheus.HistogramOpts{Subsystem: kubeProxySubsystem, Name: name, Help: Alpha(help), Buckets: buckets}, family)
	}
	gauge := func(name, help string) *prometheus.GaugeVec {
		return prometheus.NewGaugeVec(prometheus.GaugeOpts{Subsystem: kubeProxySubsystem, Name: name, Help: Alpha(help)}, family)
	}
	counterOpts := func(name, help string) prometheus.CounterOpts {
		return prometheus.CounterOpts{Subsystem: kubeProxySubsystem, Name: name, Help: Alpha(help)}
	}
	own := func(name, help string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "switchyard", Name: name, Help: help}, family)
	}
	v := &MetricVecs{
		syncDuration:               histogram("sync_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds", syncBuckets),
		fullSyncDuration:           histogram("sync_full_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds for full resyncs", syncBuckets),
		partialSyncDuration:        histogram("sync_partial_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds for partial resyncs", syncBuckets),
		networkProgrammingDuration: histogram("network_programming_duration_seconds", "In Cluster Network Programming Latency in seconds", programmingBuckets()),
		conntrackReconcileDuration: histogram("conntrack_reconciler_sync_duration_seconds", "ReconcileConntrackFlowsLatency latency in seconds", syncBuckets),
		lastSyncTimestamp:          gauge("sync_proxy_rules_last_timestamp_seconds", "The last time proxy rules were successfully synced"),
		lastQueuedTimestamp:        gauge("sync_proxy_rules_last_queued_timestamp_seconds", "The last time a sync of proxy rules was queued"),
		noLocalEndpoints: prometheus.NewGaugeVec(prometheus.GaugeOpts{Subsystem: kubeProxySubsystem, Name: "sync_proxy_rules_no_local_endpoints_total",
			Help: Alpha("Number of services with a Local traffic policy and no endpoints")}, []string{"traffic_policy", "ip_family"}),
		conntrackDeletedEntries: prometheus.NewCounterVec(counterOpts("conntrack_reconciler_deleted_entries_total", "Cumulative conntrack flows deleted by conntrack reconciler"), family),
		serviceChangesTotal:     prometheus.NewCounter(counterOpts("sync_proxy_rules_service_changes_total", "Cumulative proxy rules Service changes")),
		endpointChangesTotal:    prometheus.NewCounter(counterOpts("sync_proxy_rules_endpoint_changes_total", "Cumulative proxy rules Endpoint changes")),
		healthzTotal:            prometheus.NewCounterVec(counterOpts("proxy_healthz_total", "Cumulative proxy healthz HTTP status"), []string{"code"}),
		livezTotal:              prometheus.NewCounterVec(counterOpts("proxy_livez_total", "Cumulative proxy livez HTTP status"), []string{"code"}),
		syncFailuresTotal:       own("sync_proxy_rules_failures_total", "Syncs that failed and were retried"),
		invalidObjectFieldsTotal: own("invalid_object_fields_total",
			"Unusable Service and EndpointSlice field values skipped, counted each time the object is translated"),
		servicePortFailing: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "switchyard", Name: "sync_proxy_rules_service_port_failing",
			Help: "1 for each Service port whose rules the kernel refused at the last sync; every other Service is programmed, and this port is retried with backoff (its Service has a " + FailedToProgramReason + " Warning Event with the kernel's error)"},
			[]string{"ip_family", "namespace", "service", "port"}),
		pending: &pendingChanges{},
	}
	pendingGauge := func(name, help string, count func(services, endpoints int) int) prometheus.GaugeFunc {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Subsystem: kubeProxySubsystem, Name: name, Help: Alpha(help)},
			func() float64 { return float64(v.pending.most(count)) })
	}
	reg.MustRegister(v.syncDuration, v.fullSyncDuration, v.partialSyncDuration, v.networkProgrammingDuration, v.conntrackReconcileDuration,
		v.lastSyncTimestamp, v.lastQueuedTimestamp, v.noLocalEndpoints, v.conntrackDeletedEntries,
		v.serviceChangesTotal, v.endpointChangesTotal, v.healthzTotal, v.livezTotal,
		pendingGauge("sync_proxy_rules_service_changes_pending", "Pending proxy rules Service changes", func(s, _ int) int { return s }),
		pendingGauge("sync_proxy_rules_endpoint_changes_pending", "Pending proxy rules Endpoint changes", func(_, e int) int { return e }),
		v.syncFailuresTotal, v.invalidObjectFieldsTotal, v.servicePortFailing)
	return v
}

// pendingChanges reports, when scraped, the changes the proxiers' trackers hold that no
// sync has taken yet. kube-proxy's gauges have no ip_family: each family's tracker sets
// the one gauge, the last to write winning; this reports the family furthest behind,
// the same value whichever finished last (both receive every event).
type pendingChanges struct {
	mu       sync.Mutex
	trackers []*Tracker
}

func (p *pendingChanges) add(t *Tracker) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.trackers = append(p.trackers, t)
}

// most is the largest count over the trackers, of what count picks from Tracker.Pending.
func (p *pendingChanges) most(count func(services, endpoints int) int) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, t := range p.trackers {
		n = max(n, count(t.Pending()))
	}
	return n
}

// noLocalEndpoints are the ServicePorts of one family that kube-proxy counts in
// kubeproxy_sync_proxy_rules_no_local_endpoints_total, by traffic_policy: those with
// usable endpoints somewhere whose Local policy (internal or external) finds none on
// this node, so that their traffic under that policy is dropped. kube-proxy's iptables
// mode counts the ports on each sync; a sync here updates the ports it took.
type noLocalEndpoints map[string]map[ServicePortName]bool

// update judges the named ports again against state.
func (n noLocalEndpoints) update(state *State, names iter.Seq[ServicePortName]) {
	for name := range names {
		sp := state.Services[name]
		if sp == nil {
			delete(n[internalPolicy], name)
			delete(n[externalPolicy], name)
			continue
		}
		sel := selectEndpoints(sp, state.Endpoints[name], state.NodeName, state.NodeLabels)
		none := sel.HasAny && len(sel.Local) == 0
		n.set(internalPolicy, name, none && sp.InternalPolicyLocal)
		n.set(externalPolicy, name, none && sp.ExternallyAccessible() && sp.ExternalPolicyLocal)
	}
}

func (n noLocalEndpoints) set(policy string, name ServicePortName, on bool) {
	if n[policy] == nil {
		n[policy] = map[ServicePortName]bool{}
	}
	if on {
		n[policy][name] = true
	} else {
		delete(n[policy], name)
	}
}

// publish sets the gauges to the counts.
func (n noLocalEndpoints) publish(m *Metrics) {
	for policy, g := range m.NoLocalEndpoints {
		g.Set(float64(len(n[policy])))
	}
}
