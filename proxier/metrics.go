package proxier

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are one IP family's proxier's Prometheus metrics (see MetricVecs.For). Names
// and the ip_family label are kube-proxy's, so existing dashboards and alerts keep
// working; every series also carries a "backend" label (iptables or ipvs) so the two
// modes can be compared side by side.
type Metrics struct {
	SyncDuration               prometheus.Observer
	FullSyncDuration           prometheus.Observer
	PartialSyncDuration        prometheus.Observer
	NetworkProgrammingDuration prometheus.Observer
	LastSyncTimestamp          prometheus.Gauge
	LastQueuedTimestamp        prometheus.Gauge
	ServiceChangesPending      prometheus.Gauge
	EndpointChangesPending     prometheus.Gauge
	ServiceChangesTotal        prometheus.Counter
	EndpointChangesTotal       prometheus.Counter
	SyncFailuresTotal          prometheus.Counter
	InvalidObjectFieldsTotal   prometheus.Counter
	// ServicePortFailing is 1 for each ServicePort whose rules the kernel refused in the
	// last sync, by IP family. Only ports failing now have a series, so the labels stay
	// as few as the failures; the kernel's error, free text, is in the Service's Event
	// and the log instead.
	ServicePortFailing *prometheus.GaugeVec
}

// MetricVecs are the metrics of every IP family, registered once.
type MetricVecs struct {
	syncDuration, fullSyncDuration, partialSyncDuration, networkProgrammingDuration        *prometheus.HistogramVec
	lastSyncTimestamp, lastQueuedTimestamp, serviceChangesPending, endpointChangesPending  *prometheus.GaugeVec
	serviceChangesTotal, endpointChangesTotal, syncFailuresTotal, invalidObjectFieldsTotal *prometheus.CounterVec
	servicePortFailing                                                                     *prometheus.GaugeVec
}

// For returns the metrics of one family's proxier. Each family has its own series, as in
// kube-proxy: with one shared series, a family's quick sync would hide that the other's
// has not finished.
func (v *MetricVecs) For(family Family) *Metrics {
	f := family.String()
	return &Metrics{
		SyncDuration:               v.syncDuration.WithLabelValues(f),
		FullSyncDuration:           v.fullSyncDuration.WithLabelValues(f),
		PartialSyncDuration:        v.partialSyncDuration.WithLabelValues(f),
		NetworkProgrammingDuration: v.networkProgrammingDuration.WithLabelValues(f),
		LastSyncTimestamp:          v.lastSyncTimestamp.WithLabelValues(f),
		LastQueuedTimestamp:        v.lastQueuedTimestamp.WithLabelValues(f),
		ServiceChangesPending:      v.serviceChangesPending.WithLabelValues(f),
		EndpointChangesPending:     v.endpointChangesPending.WithLabelValues(f),
		ServiceChangesTotal:        v.serviceChangesTotal.WithLabelValues(f),
		EndpointChangesTotal:       v.endpointChangesTotal.WithLabelValues(f),
		SyncFailuresTotal:          v.syncFailuresTotal.WithLabelValues(f),
		InvalidObjectFieldsTotal:   v.invalidObjectFieldsTotal.WithLabelValues(f),
		ServicePortFailing:         v.servicePortFailing,
	}
}

// syncBuckets are kube-proxy's: 1 ms doubling up to ~16 s.
var syncBuckets = prometheus.ExponentialBuckets(0.001, 2, 15)

// programmingBuckets are kube-proxy's network-programming buckets: fine below a minute,
// coarse up to several minutes.
func programmingBuckets() []float64 {
	b := prometheus.LinearBuckets(0.25, 0.25, 2)
	b = append(b, prometheus.LinearBuckets(1, 1, 59)...)
	b = append(b, prometheus.LinearBuckets(60, 5, 12)...)
	return append(b, prometheus.LinearBuckets(120, 30, 7)...)
}

// NewMetrics creates the metrics for one backend and registers them with reg.
func NewMetrics(reg prometheus.Registerer, backend string) *MetricVecs {
	labels := prometheus.Labels{"backend": backend}
	family := []string{"ip_family"}
	histogram := func(name, help string, buckets []float64) *prometheus.HistogramVec {
		return prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "kubeproxy", Name: name, Help: help, Buckets: buckets, ConstLabels: labels}, family)
	}
	gauge := func(name, help string) *prometheus.GaugeVec {
		return prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "kubeproxy", Name: name, Help: help, ConstLabels: labels}, family)
	}
	counter := func(namespace, name, help string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: name, Help: help, ConstLabels: labels}, family)
	}
	v := &MetricVecs{
		syncDuration:               histogram("sync_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds", syncBuckets),
		fullSyncDuration:           histogram("sync_full_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds for full resyncs", syncBuckets),
		partialSyncDuration:        histogram("sync_partial_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds for partial resyncs", syncBuckets),
		networkProgrammingDuration: histogram("network_programming_duration_seconds", "In Cluster Network Programming Latency in seconds", programmingBuckets()),
		lastSyncTimestamp:          gauge("sync_proxy_rules_last_timestamp_seconds", "The last time proxy rules were successfully synced"),
		lastQueuedTimestamp:        gauge("sync_proxy_rules_last_queued_timestamp_seconds", "The last time a sync of proxy rules was queued"),
		serviceChangesPending:      gauge("sync_proxy_rules_service_changes_pending", "Pending proxy rules Service changes"),
		endpointChangesPending:     gauge("sync_proxy_rules_endpoint_changes_pending", "Pending proxy rules Endpoint changes"),
		serviceChangesTotal:        counter("kubeproxy", "sync_proxy_rules_service_changes_total", "Cumulative proxy rules Service changes"),
		endpointChangesTotal:       counter("kubeproxy", "sync_proxy_rules_endpoint_changes_total", "Cumulative proxy rules Endpoint changes"),
		syncFailuresTotal:          counter("switchyard", "sync_proxy_rules_failures_total", "Syncs that failed and were retried"),
		invalidObjectFieldsTotal:   counter("switchyard", "invalid_object_fields_total", "Unusable Service and EndpointSlice field values skipped, counted each time the object is translated"),
		servicePortFailing: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "switchyard", Name: "sync_proxy_rules_service_port_failing",
			Help:        "1 for each Service port whose rules the kernel refused at the last sync; every other Service is programmed, and this port is retried with backoff (its Service has a " + FailedToProgramReason + " Warning Event with the kernel's error)",
			ConstLabels: labels}, []string{"ip_family", "namespace", "service", "port"}),
	}
	reg.MustRegister(v.syncDuration, v.fullSyncDuration, v.partialSyncDuration, v.networkProgrammingDuration,
		v.lastSyncTimestamp, v.lastQueuedTimestamp, v.serviceChangesPending, v.endpointChangesPending,
		v.serviceChangesTotal, v.endpointChangesTotal, v.syncFailuresTotal, v.invalidObjectFieldsTotal, v.servicePortFailing)
	return v
}
