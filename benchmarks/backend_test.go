package benchmarks

import (
	"testing"

	"github.com/switchyard/switchyard/modes"
)

// TestEveryProxyModeIsMeasured keeps the rule-refresh benchmark's modes in step with the
// registry: a mode added there fails here until the benchmark can measure it.
func TestEveryProxyModeIsMeasured(t *testing.T) {
	measured := map[string]bool{}
	for _, m := range backendModes {
		if _, err := modes.All.Lookup(m.proxyMode); err != nil {
			t.Errorf("benchmark mode %s: %v", m.name, err)
		}
		measured[m.proxyMode] = true
	}
	for _, name := range modes.All.Names() {
		if !measured[name] {
			t.Errorf("proxy mode %s has no benchmark mode: add one to backendModes", name)
		}
	}
}
