package benchmarks

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/switchyard/switchyard/internal/lab"
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

// TestChurnAndTarget drives Churn and EnsureTarget against a real apiserver: churn
// patches the workload's EndpointSlices at its rate, each to a whole Service (ten
// endpoints) or none, and reports a write the apiserver refuses; the target is created
// once and found again.
func TestChurnAndTarget(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cp, err := testenv.StartControlPlane(ctx, testenv.ControlPlaneOptions{Dir: t.TempDir()})
	if err != nil {
		t.Fatalf("starting the control plane: %v", err)
	}
	t.Cleanup(cp.Stop)
	w := &Workload{Endpoints: 10, Seed: 1}
	if err := Populate(ctx, cp.Client, w, 0, 20); err != nil {
		t.Fatal(err)
	}

	churn := &Churn{Client: cp.Client, Workload: w, Services: 20, PerSecond: 20, Seed: 1}
	writes, err := churn.Run(ctx, time.Second)
	if err != nil {
		t.Fatalf("churn: %v", err)
	}
	if writes < 10 || writes > 21 {
		t.Errorf("churn made %d writes in 1 s at 20/s, want about 20", writes)
	}
	slices, err := cp.Client.DiscoveryV1().EndpointSlices(Namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	changed := 0
	for _, s := range slices.Items {
		if n := len(s.Endpoints); n != 0 && n != 10 {
			t.Errorf("EndpointSlice %s has %d endpoints after churn, want 10 or 0", s.Name, n)
		}
		fresh := (&Workload{Endpoints: 10, Seed: 1}).Spec(sliceIndex(t, s.Name))
		if len(s.Endpoints) != 10 || s.Endpoints[0].Addresses[0] != fresh.Endpoints[0].String() ||
			s.Endpoints[9].Addresses[0] != fresh.Endpoints[9].String() {
			changed++
		}
	}
	if changed == 0 {
		t.Errorf("no EndpointSlice changed after %d writes", writes)
	}

	// Services 20 to 24 have no EndpointSlice: a write to one must fail the churn.
	broken := &Churn{Client: cp.Client, Workload: w, Services: 25, PerSecond: 20, Seed: 1}
	if _, err := broken.Run(ctx, 3*time.Second); err == nil || !strings.Contains(err.Error(), "patching EndpointSlice svc-0002") {
		t.Errorf("churn over missing EndpointSlices: got error %v, want one naming the slice", err)
	}

	pods := []*lab.Pod{{Name: "pod-1", IP: "10.244.0.11"}, {Name: "pod-2", IP: "10.244.0.12"}}
	for range 2 {
		if err := EnsureTarget(ctx, cp.Client, pods); err != nil {
			t.Fatalf("EnsureTarget: %v", err)
		}
	}
	svc, err := cp.Client.CoreV1().Services(TargetNamespace).Get(ctx, targetName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if svc.Spec.ClusterIP != TargetClusterIP {
		t.Errorf("target's cluster IP %s, want %s", svc.Spec.ClusterIP, TargetClusterIP)
	}
	slice, err := cp.Client.DiscoveryV1().EndpointSlices(TargetNamespace).Get(ctx, targetName+"-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(slice.Endpoints) != 2 || slice.Endpoints[1].Addresses[0] != "10.244.0.12" {
		t.Errorf("target's endpoints %+v, want the two pods", slice.Endpoints)
	}
}

func sliceIndex(t *testing.T, name string) int {
	var i int
	if _, err := fmt.Sscanf(name, "svc-%05d-1", &i); err != nil {
		t.Fatalf("unexpected EndpointSlice %s: %v", name, err)
	}
	return i
}
