package proxier

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"k8s.io/utils/clock"
	testingclock "k8s.io/utils/clock/testing"
)

// runnerHarness runs a Runner's Loop on a fake clock and records each sync with the fake
// time it started at. Tests drive it through runnerActions.
//
// Every action that can wake the loop (a Run, a clock step) is followed by settle, which
// waits until the loop goroutine is parked in a select again (or has returned). The fake
// clock only measures a wait from the moment the loop arms it, so stepping the clock
// while the loop is still computing its next wait would make the test racy; and once the
// loop is parked it cannot act until the test does something, so "no sync happened" is a
// plain non-blocking check instead of a sleep.
type runnerHarness struct {
	t      *testing.T
	clk    *testingclock.FakeClock
	r      *Runner
	start  time.Time
	syncs  chan time.Time
	cancel context.CancelFunc
	done   chan struct{}
	// loopGoroutine is the "goroutine N [" header of the goroutine running Loop.
	loopGoroutine string
}

// longWait bounds every wait for something that must happen; it only matters when a test
// fails (a hang), never for a passing run.
const longWait = 10 * time.Second

func newRunnerHarness(t *testing.T, minInterval, maxInterval, retryMin time.Duration, results []error, runDuring map[int]bool) *runnerHarness {
	t.Helper()
	h := &runnerHarness{
		t:     t,
		clk:   testingclock.NewFakeClock(testTime),
		start: testTime,
		syncs: make(chan time.Time, 100),
		done:  make(chan struct{}),
	}
	calls := 0 // only touched by the Loop goroutine
	h.r = NewRunner(func() error {
		i := calls
		calls++
		if runDuring[i] {
			h.r.Run() // an event arrives while the sync is running
		}
		h.syncs <- h.clk.Now()
		if i < len(results) {
			return results[i]
		}
		return nil
	}, minInterval, maxInterval, retryMin, h.clk)
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	started := make(chan string)
	go func() {
		defer close(h.done)
		started <- currentGoroutine()
		h.r.Loop(ctx)
	}()
	h.loopGoroutine = <-started
	t.Cleanup(func() {
		cancel()
		select {
		case <-h.done:
		case <-time.After(longWait):
			t.Error("Loop did not return after its context was cancelled")
		}
	})
	h.settle()
	return h
}

// currentGoroutine returns "goroutine N [", the header runtime.Stack prints for the caller.
func currentGoroutine() string {
	buf := make([]byte, 64)
	buf = buf[:runtime.Stack(buf, false)]
	id, _, _ := strings.Cut(strings.TrimPrefix(string(buf), "goroutine "), " ")
	return "goroutine " + id + " ["
}

// settle waits until the Loop goroutine is parked in a select or has returned. While the
// loop is parked it must have armed a timer: otherwise no periodic sync could ever happen.
func (h *runnerHarness) settle() {
	h.t.Helper()
	deadline := time.Now().Add(longWait)
	buf := make([]byte, 1<<20)
	for {
		select {
		case <-h.done:
			return
		default:
		}
		stacks := string(buf[:runtime.Stack(buf, true)])
		if i := strings.Index(stacks, h.loopGoroutine); i >= 0 {
			state := stacks[i+len(h.loopGoroutine):]
			if strings.HasPrefix(state, "select") {
				if !h.clk.HasWaiters() {
					h.t.Fatal("the loop is waiting with nothing armed on the clock")
				}
				return
			}
		}
		if time.Now().After(deadline) {
			h.t.Fatal("timed out waiting for the loop to settle")
		}
		runtime.Gosched()
	}
}

// runnerAction is one step of a runner scenario.
type runnerAction struct {
	desc string
	do   func(h *runnerHarness)
}

// advance steps the fake clock.
func advance(d time.Duration) runnerAction {
	return runnerAction{"advance " + d.String(), func(h *runnerHarness) {
		h.clk.Step(d)
		h.settle()
	}}
}

// run calls Runner.Run n times.
func run(n int) runnerAction {
	return runnerAction{fmt.Sprintf("Run() x%d", n), func(h *runnerHarness) {
		for range n {
			h.r.Run()
		}
		h.settle()
	}}
}

// wantSync expects exactly one sync since the last check, started at start+at on the
// fake clock.
func wantSync(at time.Duration) runnerAction {
	return runnerAction{"want sync at +" + at.String(), func(h *runnerHarness) {
		h.t.Helper()
		select {
		case got := <-h.syncs:
			if want := h.start.Add(at); !got.Equal(want) {
				h.t.Errorf("sync ran at +%v, want +%v", got.Sub(h.start), at)
			}
		default:
			h.t.Fatalf("no sync; want one at +%v (fake clock at +%v)", at, h.clk.Since(h.start))
		}
		for len(h.syncs) > 0 {
			h.t.Errorf("extra sync at +%v", (<-h.syncs).Sub(h.start))
		}
	}}
}

// wantNoSync expects no sync since the last check.
func wantNoSync() runnerAction {
	return runnerAction{"want no sync", func(h *runnerHarness) {
		h.t.Helper()
		for len(h.syncs) > 0 {
			h.t.Errorf("unexpected sync at +%v", (<-h.syncs).Sub(h.start))
		}
	}}
}

func cancelLoop() runnerAction {
	return runnerAction{"cancel", func(h *runnerHarness) { h.cancel() }}
}

func wantLoopReturned() runnerAction {
	return runnerAction{"want Loop returned", func(h *runnerHarness) {
		h.t.Helper()
		select {
		case <-h.done:
		case <-time.After(longWait):
			h.t.Fatal("Loop did not return after its context was cancelled")
		}
	}}
}

func TestRunner(t *testing.T) {
	errSync := errors.New("sync failed")
	const (
		ms = time.Millisecond
		s  = time.Second
	)
	testCases := []struct {
		name                            string
		minInterval, maxInterval, retry time.Duration
		results                         []error      // result of each sync in order; nil after
		runDuring                       map[int]bool // syncs (by index) during which Run is called
		actions                         []runnerAction
	}{
		{
			name:        "first sync runs immediately",
			minInterval: s, maxInterval: time.Minute, retry: s,
			actions: []runnerAction{
				advance(0), wantSync(0),
				advance(10 * s), wantNoSync(),
			},
		},
		{
			name:        "Run before the first timer fires gives one first sync, not two",
			minInterval: s, maxInterval: time.Minute, retry: s,
			actions: []runnerAction{
				run(1), wantSync(0),
				advance(0), wantNoSync(),
				advance(30 * s), wantNoSync(),
			},
		},
		{
			name:        "Run calls within minInterval coalesce into one sync at minInterval",
			minInterval: s, maxInterval: time.Minute, retry: s,
			actions: []runnerAction{
				advance(0), wantSync(0),
				advance(100 * ms), run(3), wantNoSync(),
				advance(899 * ms), run(2), wantNoSync(),
				advance(1 * ms), wantSync(s),
				wantNoSync(),
				advance(5 * s), wantNoSync(),
			},
		},
		{
			name:        "Run after minInterval has passed syncs at once",
			minInterval: s, maxInterval: time.Minute, retry: s,
			actions: []runnerAction{
				advance(0), wantSync(0),
				advance(2 * s), run(1), wantSync(2 * s),
				run(1), wantNoSync(),
				advance(s), wantSync(3 * s),
			},
		},
		{
			name:        "a Run during a sync is coalesced into one sync minInterval later",
			minInterval: s, maxInterval: time.Minute, retry: s,
			runDuring: map[int]bool{0: true},
			actions: []runnerAction{
				advance(0), wantSync(0),
				wantNoSync(),
				advance(999 * ms), wantNoSync(),
				advance(1 * ms), wantSync(s),
				advance(10 * s), wantNoSync(),
			},
		},
		{
			name:        "periodic sync at maxInterval without Run",
			minInterval: s, maxInterval: time.Minute, retry: s,
			actions: []runnerAction{
				advance(0), wantSync(0),
				advance(time.Minute - 1), wantNoSync(),
				advance(1), wantSync(time.Minute),
				advance(time.Minute), wantSync(2 * time.Minute),
			},
		},
		{
			name:        "a Run-triggered sync restarts the periodic interval",
			minInterval: s, maxInterval: time.Minute, retry: s,
			actions: []runnerAction{
				advance(0), wantSync(0),
				advance(30 * s), run(1), wantSync(30 * s),
				advance(time.Minute - 1), wantNoSync(),
				advance(1), wantSync(90 * s),
			},
		},
		{
			name:        "after failures retry after retryMin then 2*retryMin, reset after success",
			minInterval: s, maxInterval: time.Minute, retry: 2 * s,
			results: []error{errSync, errSync, nil, errSync, nil},
			actions: []runnerAction{
				advance(0), wantSync(0), // fails
				advance(2*s - 1), wantNoSync(),
				advance(1), wantSync(2 * s), // fails
				advance(4*s - 1), wantNoSync(),
				advance(1), wantSync(6 * s), // succeeds
				advance(time.Minute - 1), wantNoSync(),
				advance(1), wantSync(66 * s), // fails: backoff starts over
				advance(2*s - 1), wantNoSync(),
				advance(1), wantSync(68 * s), // succeeds
				advance(time.Minute - 1), wantNoSync(),
				advance(1), wantSync(128 * s),
			},
		},
		{
			name:        "backoff is capped at maxInterval",
			minInterval: s, maxInterval: 5 * s, retry: 2 * s,
			results: []error{errSync, errSync, errSync, errSync, errSync},
			actions: []runnerAction{
				advance(0), wantSync(0),
				advance(2 * s), wantSync(2 * s),
				advance(4 * s), wantSync(6 * s),
				advance(5*s - 1), wantNoSync(),
				advance(1), wantSync(11 * s),
				advance(5 * s), wantSync(16 * s),
			},
		},
		{
			name:        "a retry still waits for minInterval",
			minInterval: 5 * s, maxInterval: time.Minute, retry: s,
			results: []error{errSync},
			actions: []runnerAction{
				advance(0), wantSync(0),
				advance(s), wantNoSync(),
				advance(4*s - 1), wantNoSync(),
				advance(1), wantSync(5 * s),
			},
		},
		{
			name:        "Loop returns when ctx is cancelled while idle",
			minInterval: s, maxInterval: time.Minute, retry: s,
			actions: []runnerAction{
				advance(0), wantSync(0),
				cancelLoop(), wantLoopReturned(),
				run(1), advance(time.Hour), wantNoSync(),
			},
		},
		{
			name:        "Loop returns when ctx is cancelled while waiting out minInterval",
			minInterval: s, maxInterval: time.Minute, retry: s,
			actions: []runnerAction{
				advance(0), wantSync(0),
				advance(100 * ms), run(1),
				cancelLoop(), wantLoopReturned(),
				advance(time.Hour), wantNoSync(),
			},
		},
		{
			name:        "Loop returns when ctx is cancelled before the first sync",
			minInterval: s, maxInterval: time.Minute, retry: s,
			actions: []runnerAction{
				cancelLoop(), wantLoopReturned(),
				advance(time.Hour), wantNoSync(),
			},
		},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			h := newRunnerHarness(t, tc.minInterval, tc.maxInterval, tc.retry, tc.results, tc.runDuring)
			for i, a := range tc.actions {
				a.do(h)
				if t.Failed() {
					t.Fatalf("failed at action %d (%s)", i, a.desc)
				}
			}
		})
	}
}

// With the real clock the first sync must not wait for anything: no Run, no interval.
func TestRunnerFirstSyncRealClock(t *testing.T) {
	synced := make(chan struct{}, 10)
	r := NewRunner(func() error { synced <- struct{}{}; return nil }, time.Hour, time.Hour, time.Hour, clock.RealClock{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.Loop(ctx)
	}()
	select {
	case <-synced:
	case <-time.After(longWait):
		t.Fatal("first sync did not run")
	}
	cancel()
	select {
	case <-done:
	case <-time.After(longWait):
		t.Fatal("Loop did not return after cancel")
	}
	if n := len(synced); n != 0 {
		t.Errorf("%d extra syncs, want none", n)
	}
}
