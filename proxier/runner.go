package proxier

import (
	"context"
	"time"

	"k8s.io/utils/clock"
)

// Runner calls a sync function when asked, but never more often than minInterval, at
// least every maxInterval, and after a failure again with exponential backoff. Requests
// that arrive while a sync is pending or running are coalesced into the next one, so a
// burst of events costs one sync.
type Runner struct {
	fn          func() error
	minInterval time.Duration
	maxInterval time.Duration
	retryMin    time.Duration
	clock       clock.WithTicker
	requests    chan struct{}
}

// NewRunner makes a runner. minInterval bounds the sync rate; maxInterval is the periodic
// resync; retries after failures start at retryMin and double up to maxInterval.
func NewRunner(fn func() error, minInterval, maxInterval, retryMin time.Duration, clk clock.WithTicker) *Runner {
	return &Runner{
		fn:          fn,
		minInterval: minInterval,
		maxInterval: maxInterval,
		retryMin:    retryMin,
		clock:       clk,
		requests:    make(chan struct{}, 1),
	}
}

// Run asks for a sync soon. It never blocks, so event handlers can call it freely.
func (r *Runner) Run() {
	select {
	case r.requests <- struct{}{}:
	default: // a sync is already requested
	}
}

// Loop runs syncs until ctx is cancelled. The first sync runs at once.
func (r *Runner) Loop(ctx context.Context) {
	timer := r.clock.NewTimer(0)
	defer timer.Stop()
	var last time.Time
	backoff := time.Duration(0)
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C():
		case <-r.requests:
			timer.Stop()
		}
		if !last.IsZero() {
			if wait := r.minInterval - r.clock.Since(last); wait > 0 {
				select {
				case <-ctx.Done():
					return
				case <-r.clock.After(wait):
				}
			}
		}
		// Whatever was requested up to now is covered by the sync that starts here.
		select {
		case <-r.requests:
		default:
		}
		last = r.clock.Now()
		next := r.maxInterval
		if err := r.fn(); err != nil {
			backoff = min(max(2*backoff, r.retryMin), r.maxInterval)
			next = backoff
		} else {
			backoff = 0
		}
		timer.Reset(next)
	}
}
