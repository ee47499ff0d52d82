package proxier

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the loop's Prometheus metrics. Names are kube-proxy's, so existing
// dashboards and alerts keep working; every series also carries a "backend" label
// (iptables or ipvs) so the two modes can be compared side by side.
type Metrics struct {
	SyncDuration               prometheus.Histogram
	FullSyncDuration           prometheus.Histogram
	PartialSyncDuration        prometheus.Histogram
	NetworkProgrammingDuration prometheus.Histogram
	LastSyncTimestamp          prometheus.Gauge
	LastQueuedTimestamp        prometheus.Gauge
	ServiceChangesPending      prometheus.Gauge
	EndpointChangesPending     prometheus.Gauge
	ServiceChangesTotal        prometheus.Counter
	EndpointChangesTotal       prometheus.Counter
	SyncFailuresTotal          prometheus.Counter
	InvalidObjectFieldsTotal   prometheus.Counter
	// ServicePortFailing is 1 for each ServicePort whose rules the kernel refused in the
	// last sync, by IP family (one Metrics serves both families' proxiers). Only ports
	// failing now have a series, so the labels stay as few as the failures; the kernel's
	// error, free text, is in the Service's Event and the log instead.
	ServicePortFailing *prometheus.GaugeVec
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
func NewMetrics(reg prometheus.Registerer, backend string) *Metrics {
	labels := prometheus.Labels{"backend": backend}
	histogram := func(name, help string, buckets []float64) prometheus.Histogram {
		return prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: "kubeproxy", Name: name, Help: help, Buckets: buckets, ConstLabels: labels})
	}
	gauge := func(name, help string) prometheus.Gauge {
		return prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "kubeproxy", Name: name, Help: help, ConstLabels: labels})
	}
	counter := func(namespace, name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: name, Help: help, ConstLabels: labels})
	}
	m := &Metrics{
		SyncDuration:               histogram("sync_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds", syncBuckets),
		FullSyncDuration:           histogram("sync_full_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds for full resyncs", syncBuckets),
		PartialSyncDuration:        histogram("sync_partial_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds for partial resyncs", syncBuckets),
		NetworkProgrammingDuration: histogram("network_programming_duration_seconds", "In Cluster Network Programming Latency in seconds", programmingBuckets()),
		LastSyncTimestamp:          gauge("sync_proxy_rules_last_timestamp_seconds", "The last time proxy rules were successfully synced"),
		LastQueuedTimestamp:        gauge("sync_proxy_rules_last_queued_timestamp_seconds", "The last time a sync of proxy rules was queued"),
		ServiceChangesPending:      gauge("sync_proxy_rules_service_changes_pending", "Pending proxy rules Service changes"),
		EndpointChangesPending:     gauge("sync_proxy_rules_endpoint_changes_pending", "Pending proxy rules Endpoint changes"),
		ServiceChangesTotal:        counter("kubeproxy", "sync_proxy_rules_service_changes_total", "Cumulative proxy rules Service changes"),
		EndpointChangesTotal:       counter("kubeproxy", "sync_proxy_rules_endpoint_changes_total", "Cumulative proxy rules Endpoint changes"),
		SyncFailuresTotal:          counter("switchyard", "sync_proxy_rules_failures_total", "Syncs that failed and were retried"),
		InvalidObjectFieldsTotal:   counter("switchyard", "invalid_object_fields_total", "Unusable Service and EndpointSlice field values skipped, counted each time the object is translated"),
		ServicePortFailing: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "switchyard", Name: "sync_proxy_rules_service_port_failing",
			Help:        "1 for each Service port whose rules the kernel refused at the last sync; every other Service is programmed, and this port is retried with backoff (its Service has a " + FailedToProgramReason + " Warning Event with the kernel's error)",
			ConstLabels: labels}, []string{"ip_family", "namespace", "service", "port"}),
	}
	reg.MustRegister(m.SyncDuration, m.FullSyncDuration, m.PartialSyncDuration, m.NetworkProgrammingDuration,
		m.LastSyncTimestamp, m.LastQueuedTimestamp, m.ServiceChangesPending, m.EndpointChangesPending,
		m.ServiceChangesTotal, m.EndpointChangesTotal, m.SyncFailuresTotal, m.InvalidObjectFieldsTotal, m.ServicePortFailing)
	return m
}
