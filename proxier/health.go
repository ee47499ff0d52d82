package proxier

import (
	"encoding/json"
	"net/http"
	"sync"
	"time"

	"k8s.io/utils/clock"
)

// Health tracks whether syncs keep succeeding, with kube-proxy's semantics: the proxy is
// unhealthy when an update was queued (an event arrived, or a periodic resync came due)
// and no sync has succeeded for longer than the timeout since then. An idle proxy with
// nothing to do stays healthy. A sync in which the kernel refused the rules of some
// Service ports only (PortErrors) succeeded: the node programs every other Service, and
// those ports are reported on their Services and in metrics instead (see Proxier.sync).
type Health struct {
	clock   clock.PassiveClock
	timeout time.Duration

	mu sync.Mutex
	// oldestPending is when the oldest update not yet applied was queued; zero when
	// every queued update has been applied.
	oldestPending time.Time
	lastUpdated   time.Time
}

// NewHealth makes a health tracker; kube-proxy uses twice the sync period as timeout.
func NewHealth(clk clock.PassiveClock, timeout time.Duration) *Health {
	return &Health{clock: clk, timeout: timeout}
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

// Updated records a successful sync.
func (h *Health) Updated() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.lastUpdated = h.clock.Now()
	h.oldestPending = time.Time{}
}

// Healthy reports the current verdict and the time of the last successful sync.
func (h *Health) Healthy() (bool, time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.oldestPending.IsZero() || h.clock.Since(h.oldestPending) <= h.timeout, h.lastUpdated
}

// ServeHTTP answers /healthz and /livez for one proxier (see Healths).
func (h *Health) ServeHTTP(w http.ResponseWriter, r *http.Request) { Healths{h}.ServeHTTP(w, r) }

// Healths is the health of a proxier per IP family: healthy only when every family is.
type Healths []*Health

// Healthy reports whether every family's proxier is healthy.
func (hs Healths) Healthy() bool {
	for _, h := range hs {
		if ok, _ := h.Healthy(); !ok {
			return false
		}
	}
	return true
}

// ServeHTTP answers /healthz and /livez like kube-proxy: 200 when healthy, 503 when not,
// with a small JSON body either way. lastUpdated is the oldest of the families'.
func (hs Healths) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	healthy := true
	var lastUpdated time.Time
	for i, h := range hs {
		ok, updated := h.Healthy()
		healthy = healthy && ok
		if i == 0 || updated.Before(lastUpdated) {
			lastUpdated = updated
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	if !healthy {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_ = json.NewEncoder(w).Encode(struct {
		LastUpdated  time.Time `json:"lastUpdated"`
		CurrentTime  time.Time `json:"currentTime"`
		NodeEligible bool      `json:"nodeEligible"`
	}{lastUpdated, hs[0].clock.Now(), true})
}
