package proxier

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/utils/clock"
)

// Health tracks whether one IP family's proxier keeps its syncs up, with kube-proxy's
// semantics (ProxyHealthServer.QueuedUpdate, Updated and Health, per family): the proxier
// is unhealthy when an update was queued (an event arrived, or a periodic resync came due)
// and no sync has succeeded for the timeout since then. An idle proxier with nothing to do
// stays healthy. A sync in which the kernel refused the rules of some Service ports only
// (PortErrors) succeeded: the node programs every other Service, and those ports are
// reported on their Services and in metrics instead (see Proxier.sync).
type Health struct {
	family  Family
	clock   clock.PassiveClock
	timeout time.Duration

	mu sync.Mutex
	// oldestPending is when the oldest update not yet applied was queued; zero when
	// every queued update has been applied.
	oldestPending time.Time
	// lastUpdated is when Updated was last called; zero until the proxier starts.
	lastUpdated time.Time
}

// NewHealth makes the health tracker of family's proxier; kube-proxy uses twice the sync
// period as timeout.
func NewHealth(family Family, clk clock.PassiveClock, timeout time.Duration) *Health {
	return &Health{family: family, clock: clk, timeout: timeout}
}

// QueuedUpdate records that a sync is wanted. Only the first of a run of queued updates
// counts, so a steady stream of events cannot keep postponing the deadline.
func (h *Health) QueuedUpdate() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.oldestPending.IsZero() {
		h.oldestPending = h.clock.Now()
	}
}

// Updated records a successful sync, or the start of the proxier (see Proxier.Run).
func (h *Health) Updated() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.lastUpdated = h.clock.Now()
	h.oldestPending = time.Time{}
}

// Healthy reports the current verdict and when Updated was last called (zero: never).
// As in kube-proxy, a proxier that has not started yet is healthy whatever is queued, and
// one whose update has waited exactly the timeout is already late.
func (h *Health) Healthy() (bool, time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.lastUpdated.IsZero() || h.oldestPending.IsZero() {
		return true, h.lastUpdated
	}
	return h.clock.Since(h.oldestPending) < h.timeout, h.lastUpdated
}

// Healths is the health of a proxier per IP family: healthy only when every family is.
type Healths []*Health

// Healthy reports whether every family's proxier is healthy.
func (hs Healths) Healthy() bool { return hs.report().Healthy }

// proxyHealth is the JSON body of /healthz and /livez, kube-proxy's healthcheck.ProxyHealth
// field for field, so that whatever parses kube-proxy's answer parses ours.
type proxyHealth struct {
	// LastUpdated is when the most recently updated family last updated; when the
	// answer is 200 it is the current time instead, as kube-proxy keeps it for
	// clients that read it as "the sync loop is running".
	LastUpdated time.Time `json:"lastUpdated"`
	CurrentTime time.Time `json:"currentTime"`
	// NodeEligible is only in /healthz's answer: whether the node should still get
	// load-balancer traffic (see NodeEligibility).
	NodeEligible *bool `json:"nodeEligible,omitempty"`
	// Healthy is the proxy's own health: every family's, whatever NodeEligible says.
	Healthy bool `json:"healthy"`
	// Status has each family that has started, by kube-proxy's name for it.
	Status map[v1.IPFamily]proxierHealth `json:"status,omitempty"`
}

// proxierHealth is one family's entry of proxyHealth.Status.
type proxierHealth struct {
	LastUpdated time.Time `json:"lastUpdated"`
	Healthy     bool      `json:"healthy"`
}

// report is the proxy's own health, as kube-proxy's ProxyHealthServer.Health, without the
// current time.
func (hs Healths) report() proxyHealth {
	out := proxyHealth{Healthy: true, Status: map[v1.IPFamily]proxierHealth{}}
	for _, h := range hs {
		healthy, last := h.Healthy()
		out.Healthy = out.Healthy && healthy
		if last.IsZero() {
			continue // not started: kube-proxy lists only the families that have updated
		}
		out.Status[v1.IPFamily(h.family.String())] = proxierHealth{LastUpdated: last, Healthy: healthy}
		if last.After(out.LastUpdated) {
			out.LastUpdated = last
		}
	}
	return out
}

// toBeDeletedTaint is the taint the Cluster Autoscaler puts on a node it is about to
// delete (kube-proxy's healthcheck.ToBeDeletedTaint).
const toBeDeletedTaint = "ToBeDeletedByClusterAutoscaler"

// NodeEligibility is whether this node should still get load-balancer traffic, as /healthz
// reports it: not once its Node is being deleted or the Cluster Autoscaler has marked it
// for deletion, so that cloud load balancers drain it before it goes (KEP-3836). Until the
// Node has been seen it is not eligible either, as in kube-proxy. The zero value is ready
// to use; Watch feeds it from the Node informer.
type NodeEligibility struct {
	eligible atomic.Bool
}

// OnNodeUpdate judges the latest state of the Node, as kube-proxy's
// ProxyHealthServer.NodeEligible judges the Node its NodeManager.OnNodeChange last stored.
// A delete leaves the last verdict: kube-proxy's NodeManager.OnNodeDelete keeps the Node.
func (e *NodeEligibility) OnNodeUpdate(node *v1.Node) {
	eligible := node.DeletionTimestamp.IsZero()
	for _, taint := range node.Spec.Taints {
		if taint.Key == toBeDeletedTaint {
			eligible = false
		}
	}
	e.eligible.Store(eligible)
}

// Eligible reports the verdict on the last Node seen; false before any.
func (e *NodeEligibility) Eligible() bool { return e.eligible.Load() }

// HealthHandler serves the healthz address as kube-proxy's ProxyHealthServer does:
// /livez is the proxy's own health, for a liveness probe; /healthz also fails while the
// node is not eligible for load-balancer traffic, for the load balancers. Each answer
// counts in kubeproxy_proxy_healthz_total or kubeproxy_proxy_livez_total by its status.
func HealthHandler(clk clock.PassiveClock, healths Healths, node *NodeEligibility, metrics *MetricVecs) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		eligible := node.Eligible()
		code := writeHealth(w, clk, healths, &eligible)
		metrics.healthzTotal.WithLabelValues(strconv.Itoa(code)).Inc()
	})
	mux.HandleFunc("/livez", func(w http.ResponseWriter, _ *http.Request) {
		code := writeHealth(w, clk, healths, nil)
		metrics.livezTotal.WithLabelValues(strconv.Itoa(code)).Inc()
	})
	return mux
}

// InstallServerHealthz answers /healthz on mux as kube-proxy answers it on its metrics
// address, where component-base's healthz handler has its one check, ping: "ok" for as
// long as the server answers at all, listed by check with ?verbose, and /healthz/ping.
// The proxy's own health is on the healthz address; a probe of this one that turned red
// with it would restart a proxy that kube-proxy's would have left running.
func InstallServerHealthz(mux *http.ServeMux) {
	ok := func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		if _, verbose := r.URL.Query()["verbose"]; verbose && r.URL.Path == "/healthz" {
			fmt.Fprint(w, "[+]ping ok\nhealthz check passed\n")
			return
		}
		fmt.Fprint(w, "ok")
	}
	mux.HandleFunc("/healthz", ok)
	mux.HandleFunc("/healthz/ping", ok)
}

// writeHealth writes kube-proxy's answer (healthzHandler and livezHandler): 200 or 503
// with proxyHealth as compact JSON without a final newline, and returns the status. A nil
// nodeEligible is /livez's answer, which leaves the key out.
func writeHealth(w http.ResponseWriter, clk clock.PassiveClock, healths Healths, nodeEligible *bool) int {
	health := healths.report()
	health.CurrentTime = clk.Now()
	health.NodeEligible = nodeEligible
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	code := http.StatusOK
	if !health.Healthy || (nodeEligible != nil && !*nodeEligible) {
		code = http.StatusServiceUnavailable
	} else {
		health.LastUpdated = health.CurrentTime
	}
	w.WriteHeader(code)
	// Only times, bools and strings: marshalling cannot fail.
	body, _ := json.Marshal(health)
	_, _ = w.Write(body)
	return code
}
