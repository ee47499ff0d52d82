package main

import "testing"

// TestWithoutTimes: two health answers that differ only in their times compare equal;
// anything else still tells them apart.
func TestWithoutTimes(t *testing.T) {
	tests := []struct{ name, body, want string }{
		{"kube-proxy's /healthz",
			`{"lastUpdated":"2026-12-03T17:00:00Z","currentTime":"2026-12-03T17:00:01Z","nodeEligible":true,"healthy":true,"status":{"IPv4":{"lastUpdated":"2026-12-03T17:00:00Z","healthy":true}}}`,
			`{"currentTime":"TIME","healthy":true,"lastUpdated":"TIME","nodeEligible":true,"status":{"IPv4":{"healthy":true,"lastUpdated":"TIME"}}}`},
		{"not eligible", `{"currentTime":"x","nodeEligible":false}`, `{"currentTime":"TIME","nodeEligible":false}`},
		{"not JSON", "ok", "ok"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := withoutTimes([]byte(tc.body)); got != tc.want {
				t.Errorf("withoutTimes(%s) = %s, want %s", tc.body, got, tc.want)
			}
		})
	}
}
