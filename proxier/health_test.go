package proxier

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	testingclock "k8s.io/utils/clock/testing"

	"github.com/switchyard/switchyard/internal/metricstest"
)

// TestHealth follows kube-proxy's ProxyHealthServer.QueuedUpdate, Updated and Health for
// one family (testProxyHealthUpdater in healthcheck_test.go).
func TestHealth(t *testing.T) {
	const timeout = 30 * time.Second
	type action func(h *Health, clk *testingclock.FakeClock)
	queued := func(h *Health, _ *testingclock.FakeClock) { h.QueuedUpdate() }
	updated := func(h *Health, _ *testingclock.FakeClock) { h.Updated() }
	step := func(d time.Duration) action {
		return func(_ *Health, clk *testingclock.FakeClock) { clk.Step(d) }
	}

	testCases := []struct {
		name    string
		actions []action
		// wantHealthy is the verdict after all actions.
		wantHealthy bool
		// wantLastUpdated is the offset from testTime of the last Updated (nil: never).
		wantLastUpdated *time.Duration
	}{
		{
			name:        "idle proxier that never started is healthy",
			actions:     []action{step(time.Hour)},
			wantHealthy: true,
		},
		{
			// Health only judges the families in lastUpdatedMap.
			name:        "proxier that has not started is healthy whatever is queued",
			actions:     []action{queued, step(timeout + time.Hour)},
			wantHealthy: true,
		},
		{
			name:            "idle proxier stays healthy long after its last sync",
			actions:         []action{updated, step(24 * time.Hour)},
			wantHealthy:     true,
			wantLastUpdated: ptr(time.Duration(0)),
		},
		{
			name:            "queued update still within the timeout is healthy",
			actions:         []action{updated, queued, step(timeout - time.Nanosecond)},
			wantHealthy:     true,
			wantLastUpdated: ptr(time.Duration(0)),
		},
		{
			// Health: currentTime.Sub(oldestPending) < healthTimeout is still healthy.
			name:            "queued update that has waited exactly the timeout is unhealthy",
			actions:         []action{updated, queued, step(timeout)},
			wantHealthy:     false,
			wantLastUpdated: ptr(time.Duration(0)),
		},
		{
			name:            "after a sync, a queued update not applied within the timeout is unhealthy",
			actions:         []action{updated, step(time.Second), queued, step(timeout + time.Nanosecond)},
			wantHealthy:     false,
			wantLastUpdated: ptr(time.Duration(0)),
		},
		{
			name:            "healthy again once the update is applied",
			actions:         []action{updated, queued, step(timeout + time.Second), updated},
			wantHealthy:     true,
			wantLastUpdated: ptr(timeout + time.Second),
		},
		{
			name:            "applied update keeps the proxier healthy long after",
			actions:         []action{updated, queued, step(time.Second), updated, step(time.Hour)},
			wantHealthy:     true,
			wantLastUpdated: ptr(time.Second),
		},
		{
			name: "a stream of queued updates does not postpone the deadline",
			actions: []action{
				updated, queued, step(timeout / 2), queued, step(timeout / 2), queued, step(time.Nanosecond),
			},
			wantHealthy:     false,
			wantLastUpdated: ptr(time.Duration(0)),
		},
		{
			name: "a new queued update after a sync starts a new deadline",
			actions: []action{
				updated, queued, step(timeout - time.Second), updated,
				step(time.Second), queued, step(timeout - time.Nanosecond),
			},
			wantHealthy:     true,
			wantLastUpdated: ptr(timeout - time.Second),
		},
		{
			// An update queued at the same clock reading as the last sync is still
			// pending: "pending" is an explicit timestamp, not a comparison of two times
			// that can tie (kube-proxy does the same).
			name:            "update queued at the same instant as the last sync still has a deadline",
			actions:         []action{step(time.Second), updated, queued, step(timeout + time.Nanosecond)},
			wantHealthy:     false,
			wantLastUpdated: ptr(time.Second),
		},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			clk := testingclock.NewFakeClock(testTime)
			h := NewHealth(IPv4, clk, timeout)
			for _, a := range tc.actions {
				a(h, clk)
			}
			var wantLast time.Time
			if tc.wantLastUpdated != nil {
				wantLast = testTime.Add(*tc.wantLastUpdated)
			}

			healthy, last := h.Healthy()
			if healthy != tc.wantHealthy {
				t.Errorf("Healthy() = %v, want %v", healthy, tc.wantHealthy)
			}
			if !last.Equal(wantLast) {
				t.Errorf("Healthy() last updated = %v, want %v", last, wantLast)
			}
		})
	}
}

// TestHealthHandler follows kube-proxy's TestHealthzServer and TestLivezServer
// (healthcheck_test.go): healthzHandler.ServeHTTP fails while ProxyHealthServer.NodeEligible
// is false and says so in nodeEligible, livezHandler.ServeHTTP reports the proxy's own
// health only, and both report each family (ProxyHealthServer.Health). The bodies are
// json.Marshal's of kube-proxy's ProxyHealth for the same state. Each answer counts in its
// path's counter by status, as kube-proxy's kubeproxy_proxy_healthz_total and
// kubeproxy_proxy_livez_total.
func TestHealthHandler(t *testing.T) {
	const timeout = 30 * time.Second
	node := func(tweak func(*v1.Node)) *v1.Node {
		n := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a"}}
		if tweak != nil {
			tweak(n)
		}
		return n
	}
	taint := func(key string) *v1.Node {
		return node(func(n *v1.Node) {
			n.Spec.Taints = []v1.Taint{{Key: "other"}, {Key: key, Effect: v1.TaintEffectNoSchedule}}
		})
	}
	eligible := node(nil)
	deleting := node(func(n *v1.Node) { n.DeletionTimestamp = &metav1.Time{Time: testTime} })
	// Both families start at testTime and IPv4 syncs again a second later; what the
	// case does next happens after that.
	type proxiers func(v4, v6 *Health, clk *testingclock.FakeClock)
	started := func(v4, v6 *Health, clk *testingclock.FakeClock) {
		v4.Updated()
		v6.Updated()
		clk.Step(time.Second)
		v4.Updated()
		clk.Step(time.Second)
	}
	v6Late := func(v4, v6 *Health, clk *testingclock.FakeClock) {
		started(v4, v6, clk)
		v6.QueuedUpdate()
		clk.Step(timeout)
	}
	notStarted := func(_, _ *Health, clk *testingclock.FakeClock) { clk.Step(2 * time.Second) }
	// The end of the bodies after started and v6Late.
	const (
		startedStatus = `"status":{"IPv4":{"lastUpdated":"2026-01-02T03:04:06Z","healthy":true},"IPv6":{"lastUpdated":"2026-01-02T03:04:05Z","healthy":true}}}`
		v6LateStatus  = `"status":{"IPv4":{"lastUpdated":"2026-01-02T03:04:06Z","healthy":true},"IPv6":{"lastUpdated":"2026-01-02T03:04:05Z","healthy":false}}}`
	)

	testCases := []struct {
		name     string
		proxiers proxiers
		// nodes are the Node's states the informer delivers, in order (none: unknown).
		nodes    []*v1.Node
		path     string
		wantCode int
		wantBody string
	}{
		{
			name:     "/healthz before the Node is known: not eligible",
			proxiers: started,
			path:     "/healthz",
			wantCode: http.StatusServiceUnavailable,
			wantBody: `{"lastUpdated":"2026-01-02T03:04:06Z","currentTime":"2026-01-02T03:04:07Z","nodeEligible":false,"healthy":true,` + startedStatus,
		},
		{
			name:     "/livez before the Node is known",
			proxiers: started,
			path:     "/livez",
			wantCode: http.StatusOK,
			wantBody: `{"lastUpdated":"2026-01-02T03:04:07Z","currentTime":"2026-01-02T03:04:07Z","healthy":true,` + startedStatus,
		},
		{
			name:     "/healthz with an eligible Node",
			proxiers: started,
			nodes:    []*v1.Node{eligible},
			path:     "/healthz",
			wantCode: http.StatusOK,
			wantBody: `{"lastUpdated":"2026-01-02T03:04:07Z","currentTime":"2026-01-02T03:04:07Z","nodeEligible":true,"healthy":true,` + startedStatus,
		},
		{
			name:     "/healthz with a Node tainted otherwise",
			proxiers: started,
			nodes:    []*v1.Node{taint("other-taint")},
			path:     "/healthz",
			wantCode: http.StatusOK,
			wantBody: `{"lastUpdated":"2026-01-02T03:04:07Z","currentTime":"2026-01-02T03:04:07Z","nodeEligible":true,"healthy":true,` + startedStatus,
		},
		{
			name:     "/healthz with a Node the Cluster Autoscaler is about to delete",
			proxiers: started,
			nodes:    []*v1.Node{eligible, taint(toBeDeletedTaint)},
			path:     "/healthz",
			wantCode: http.StatusServiceUnavailable,
			wantBody: `{"lastUpdated":"2026-01-02T03:04:06Z","currentTime":"2026-01-02T03:04:07Z","nodeEligible":false,"healthy":true,` + startedStatus,
		},
		{
			name:     "/healthz once the Cluster Autoscaler's taint is removed again",
			proxiers: started,
			nodes:    []*v1.Node{taint(toBeDeletedTaint), eligible},
			path:     "/healthz",
			wantCode: http.StatusOK,
			wantBody: `{"lastUpdated":"2026-01-02T03:04:07Z","currentTime":"2026-01-02T03:04:07Z","nodeEligible":true,"healthy":true,` + startedStatus,
		},
		{
			name:     "/healthz with a Node being deleted",
			proxiers: started,
			nodes:    []*v1.Node{eligible, deleting},
			path:     "/healthz",
			wantCode: http.StatusServiceUnavailable,
			wantBody: `{"lastUpdated":"2026-01-02T03:04:06Z","currentTime":"2026-01-02T03:04:07Z","nodeEligible":false,"healthy":true,` + startedStatus,
		},
		{
			name:     "/livez with a Node being deleted",
			proxiers: started,
			nodes:    []*v1.Node{eligible, deleting},
			path:     "/livez",
			wantCode: http.StatusOK,
			wantBody: `{"lastUpdated":"2026-01-02T03:04:07Z","currentTime":"2026-01-02T03:04:07Z","healthy":true,` + startedStatus,
		},
		{
			name:     "/healthz with one family late and an eligible Node",
			proxiers: v6Late,
			nodes:    []*v1.Node{eligible},
			path:     "/healthz",
			wantCode: http.StatusServiceUnavailable,
			wantBody: `{"lastUpdated":"2026-01-02T03:04:06Z","currentTime":"2026-01-02T03:04:37Z","nodeEligible":true,"healthy":false,` + v6LateStatus,
		},
		{
			name:     "/livez with one family late",
			proxiers: v6Late,
			nodes:    []*v1.Node{eligible},
			path:     "/livez",
			wantCode: http.StatusServiceUnavailable,
			wantBody: `{"lastUpdated":"2026-01-02T03:04:06Z","currentTime":"2026-01-02T03:04:37Z","healthy":false,` + v6LateStatus,
		},
		{
			name:     "/livez before the proxiers start: healthy, no status",
			proxiers: notStarted,
			path:     "/livez",
			wantCode: http.StatusOK,
			wantBody: `{"lastUpdated":"2026-01-02T03:04:07Z","currentTime":"2026-01-02T03:04:07Z","healthy":true}`,
		},
		{
			name:     "/healthz before the proxiers start and the Node is known",
			proxiers: notStarted,
			path:     "/healthz",
			wantCode: http.StatusServiceUnavailable,
			wantBody: `{"lastUpdated":"0001-01-01T00:00:00Z","currentTime":"2026-01-02T03:04:07Z","nodeEligible":false,"healthy":true}`,
		},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			clk := testingclock.NewFakeClock(testTime)
			v4, v6 := NewHealth(IPv4, clk, timeout), NewHealth(IPv6, clk, timeout)
			tc.proxiers(v4, v6, clk)
			var eligibility NodeEligibility
			for _, n := range tc.nodes {
				eligibility.OnNodeUpdate(n)
			}

			rec := httptest.NewRecorder()
			reg := prometheus.NewRegistry()
			HealthHandler(clk, Healths{v4, v6}, &eligibility, NewMetrics(reg)).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, tc.path, nil))
			counted := map[string]map[string]float64{}
			for _, path := range []string{"healthz", "livez"} {
				if values := metricstest.Values(t, reg, "kubeproxy_proxy_"+path+"_total"); values != nil {
					counted["/"+path] = values
				}
			}
			if diff := cmp.Diff(map[string]map[string]float64{tc.path: {fmt.Sprintf("code=%d", tc.wantCode): 1}}, counted); diff != "" {
				t.Errorf("answers counted (-want +got):\n%s", diff)
			}
			if rec.Code != tc.wantCode {
				t.Errorf("status = %d, want %d", rec.Code, tc.wantCode)
			}
			for header, want := range map[string]string{"Content-Type": "application/json", "X-Content-Type-Options": "nosniff"} {
				if got := rec.Header().Get(header); got != want {
					t.Errorf("%s = %q, want %q", header, got, want)
				}
			}
			if got := rec.Body.String(); got != tc.wantBody {
				t.Errorf("body:\n got %s\nwant %s", got, tc.wantBody)
			}
		})
	}
}

// TestServerHealthz: /healthz on the metrics address answers as kube-proxy's there
// (component-base's healthz with its ping check), whatever the proxy's health.
func TestServerHealthz(t *testing.T) {
	mux := http.NewServeMux()
	InstallServerHealthz(mux)
	for _, tc := range []struct{ path, want string }{
		{"/healthz", "ok"},
		{"/healthz?verbose", "[+]ping ok\nhealthz check passed\n"},
		{"/healthz/ping", "ok"},
	} {
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, tc.path, nil))
		if rec.Code != http.StatusOK || rec.Body.String() != tc.want {
			t.Errorf("GET %s = %d %q, want 200 %q", tc.path, rec.Code, rec.Body.String(), tc.want)
		}
		if got := rec.Header().Get("Content-Type"); got != "text/plain; charset=utf-8" {
			t.Errorf("GET %s: Content-Type %q", tc.path, got)
		}
	}
}
