package proxier

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	testingclock "k8s.io/utils/clock/testing"
)

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
			name:        "idle proxy that never synced is healthy",
			actions:     []action{step(time.Hour)},
			wantHealthy: true,
		},
		{
			name:            "idle proxy stays healthy long after its last sync",
			actions:         []action{updated, step(24 * time.Hour)},
			wantHealthy:     true,
			wantLastUpdated: ptr(time.Duration(0)),
		},
		{
			name:        "queued update still within the timeout is healthy",
			actions:     []action{queued, step(timeout)},
			wantHealthy: true,
		},
		{
			name:        "queued update not applied within the timeout is unhealthy",
			actions:     []action{queued, step(timeout + time.Nanosecond)},
			wantHealthy: false,
		},
		{
			name:            "after a sync, a queued update not applied within the timeout is unhealthy",
			actions:         []action{updated, step(time.Second), queued, step(timeout + time.Nanosecond)},
			wantHealthy:     false,
			wantLastUpdated: ptr(time.Duration(0)),
		},
		{
			name:            "healthy again once the update is applied",
			actions:         []action{queued, step(timeout + time.Second), updated},
			wantHealthy:     true,
			wantLastUpdated: ptr(timeout + time.Second),
		},
		{
			name:            "applied update keeps the proxy healthy long after",
			actions:         []action{queued, step(time.Second), updated, step(time.Hour)},
			wantHealthy:     true,
			wantLastUpdated: ptr(time.Second),
		},
		{
			name: "a stream of queued updates does not postpone the deadline",
			actions: []action{
				queued, step(timeout / 2), queued, step(timeout / 2), queued, step(time.Nanosecond),
			},
			wantHealthy: false,
		},
		{
			name: "a new queued update after a sync starts a new deadline",
			actions: []action{
				queued, step(timeout - time.Second), updated,
				step(time.Second), queued, step(timeout),
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
			h := NewHealth(clk, timeout)
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

			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
			wantCode := http.StatusOK
			if !tc.wantHealthy {
				wantCode = http.StatusServiceUnavailable
			}
			if rec.Code != wantCode {
				t.Errorf("ServeHTTP status = %d, want %d", rec.Code, wantCode)
			}
			if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type = %q, want application/json", ct)
			}
			var body struct {
				LastUpdated *time.Time `json:"lastUpdated"`
				CurrentTime *time.Time `json:"currentTime"`
			}
			if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
				t.Fatalf("body %q is not JSON: %v", rec.Body.String(), err)
			}
			if body.LastUpdated == nil || body.CurrentTime == nil {
				t.Fatalf("body %q lacks lastUpdated or currentTime", rec.Body.String())
			}
			if !body.LastUpdated.Equal(wantLast) {
				t.Errorf("body lastUpdated = %v, want %v", *body.LastUpdated, wantLast)
			}
			if !body.CurrentTime.Equal(clk.Now()) {
				t.Errorf("body currentTime = %v, want %v", *body.CurrentTime, clk.Now())
			}
		})
	}
}
