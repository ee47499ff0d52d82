package ipvs_test

import (
	"context"
	"testing"

	"github.com/switchyard/switchyard/internal/behaviour"
	"github.com/switchyard/switchyard/proxier"
)

// TestBehaviourSuite runs the shared behaviour suite against what this backend puts in
// the kernel's fakes with a full sync: each flow is traced through its iptables rules,
// with its ipsets, and through its virtual servers where the kernel's IPVS hooks take
// the connection. Nothing here decides what a rule, a set or IPVS means: the fakes and
// the tracer do, as the kernel does.
func TestBehaviourSuite(t *testing.T) {
	b, node := fakeBackend()
	if err := b.Sync(context.Background(), behaviour.State(), proxier.Changes{Full: true}); err != nil {
		t.Fatal(err)
	}
	behaviour.CheckTraces(t, "ipvs", node.Device.Local(), node.Trace)
}
