package benchmarks

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
)

// Churn is endpoint churn on the workload's Services [0, Services): PerSecond
// EndpointSlice writes a second, mostly one pod replaced (a rolling update), sometimes a
// Service scaled to zero endpoints and back on its next change. The writes are merge
// patches of the endpoints, as an EndpointSlice controller's updates are to a proxy.
type Churn struct {
	Client    kubernetes.Interface
	Workload  *Workload
	Services  int
	PerSecond int
	// Seed picks which Service each write changes.
	Seed  uint64
	specs map[int]*Spec
	empty map[int]bool
	rng   *rand.Rand
}

// churnWriters bounds the writes in flight. One writer cannot keep 10 writes a second
// where a round trip to the apiserver takes 140 ms (from inside the kernel lab's guest).
const churnWriters = 4

// Run writes for d (or until ctx ends) and returns how many writes the apiserver took.
// A Churn can run again; it remembers the state it wrote.
func (c *Churn) Run(ctx context.Context, d time.Duration) (int, error) {
	if c.Services < 1 || c.PerSecond < 1 {
		return 0, fmt.Errorf("churn needs at least one Service and one write a second, got %d and %d", c.Services, c.PerSecond)
	}
	if c.rng == nil {
		c.rng, c.specs, c.empty = rand.New(rand.NewPCG(c.Seed, 0)), map[int]*Spec{}, map[int]bool{}
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	queue := make(chan churnWrite)
	var written atomic.Int64
	var wg sync.WaitGroup
	for range churnWriters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for w := range queue {
				if _, err := c.Client.DiscoveryV1().EndpointSlices(Namespace).Patch(ctx, w.name, types.MergePatchType, w.patch, metav1.PatchOptions{}); err != nil {
					cancel(fmt.Errorf("patching EndpointSlice %s: %w", w.name, err))
					return
				}
				written.Add(1)
			}
		}()
	}
	tick := time.NewTicker(time.Second / time.Duration(c.PerSecond))
	defer tick.Stop()
	err := func() error {
		for end := time.Now().Add(d); time.Now().Before(end); {
			select {
			case <-ctx.Done():
				return context.Cause(ctx)
			case <-tick.C:
			}
			w, err := c.next()
			if err != nil {
				return err
			}
			select {
			case <-ctx.Done():
				return context.Cause(ctx)
			case queue <- w:
			}
		}
		return nil
	}()
	close(queue)
	wg.Wait()
	if err == nil {
		err = context.Cause(ctx)
	}
	return int(written.Load()), err
}

type churnWrite struct {
	name  string
	patch []byte
}

// next draws the next write.
func (c *Churn) next() (churnWrite, error) {
	i := c.rng.IntN(c.Services)
	spec, ok := c.specs[i]
	if !ok {
		spec = c.Workload.Spec(i)
		c.specs[i] = spec
	}
	endpoints := []discovery.Endpoint{}
	if !c.empty[i] && c.rng.IntN(10) == 0 {
		c.empty[i] = true
	} else {
		c.Workload.ChangeEndpoint(spec)
		endpoints = spec.EndpointSlice().Endpoints
		c.empty[i] = false
	}
	patch, err := json.Marshal(map[string]any{"endpoints": endpoints})
	if err != nil {
		return churnWrite{}, err
	}
	return churnWrite{name: spec.EndpointSlice().Name, patch: patch}, nil
}
