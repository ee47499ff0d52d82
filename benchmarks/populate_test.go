package benchmarks

import (
	"context"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/switchyard/switchyard/internal/testenv"
)

// TestPopulateGrowsInSteps runs Populate the way the harness does, N by N against one
// apiserver: the second call must add the new Services and leave the probe Service, whose
// cluster IP is fixed, as it is.
func TestPopulateGrowsInSteps(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cp, err := testenv.StartControlPlane(ctx, testenv.ControlPlaneOptions{Dir: t.TempDir()})
	if err != nil {
		t.Fatalf("starting the control plane: %v", err)
	}
	t.Cleanup(cp.Stop)

	w := &Workload{Endpoints: 2, Seed: 1}
	for _, step := range []struct{ from, to int }{{0, 3}, {3, 5}} {
		if err := Populate(ctx, cp.Client, w, step.from, step.to); err != nil {
			t.Fatalf("Populate(%d, %d): %v", step.from, step.to, err)
		}
	}
	services, err := cp.Client.CoreV1().Services(Namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	slices, err := cp.Client.DiscoveryV1().EndpointSlices(Namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// Five generated Services and the probe; the probe's EndpointSlice is written by the
	// prober, not by Populate.
	if got, want := len(services.Items), 6; got != want {
		t.Errorf("Services in %s: got %d, want %d", Namespace, got, want)
	}
	if got, want := len(slices.Items), 5; got != want {
		t.Errorf("EndpointSlices in %s: got %d, want %d", Namespace, got, want)
	}
}
