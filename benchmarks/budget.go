package benchmarks

import (
	"fmt"
	"time"
)

// Budgets keeps, for each series of runs (a backend in one kernel, or a proxy in one mode
// and kernel), what the runs at smaller N took, so that a run at a larger N which cannot
// fit its budget is recorded as not run instead of spending an hour to learn the same.
// Without it a default `make bench` takes many hours on 2 cores: the nft flavor of
// iptables-restore grows faster than linearly with the number of chains, and upstream's
// IPVS mode took 4 minutes for its first sync at 1,000 Services in the kernel lab.
type Budgets struct {
	measured map[string][]measurement
	stopped  map[string]stop
}

// stop is where a series stopped: no N from services on runs, for reason.
type stop struct {
	services int
	reason   string
}

type measurement struct {
	services int
	took     time.Duration
}

// NewBudgets returns an empty record.
func NewBudgets() *Budgets {
	return &Budgets{measured: map[string][]measurement{}, stopped: map[string]stop{}}
}

// Measured records that the series took d at n Services. The estimate extends the
// largest N measured, so a measurement at or below it (the data-plane harness seeds its
// budgets from the rule-refresh run, then measures again from N = 0) is dropped.
func (b *Budgets) Measured(series string, n int, d time.Duration) {
	if ms := b.measured[series]; len(ms) > 0 && n <= ms[len(ms)-1].services {
		return
	}
	b.measured[series] = append(b.measured[series], measurement{n, d})
}

// Exceeded records that the series outlasted its budget at n Services: no larger N runs.
func (b *Budgets) Exceeded(series string, n int) {
	b.NotRun(series, n, fmt.Sprintf("not run: it outlasted its budget at %d Services", n))
}

// NotRun records that the series does not run at n Services or more, for reason: a run
// at n was skipped (its reason carries over, so the report does not claim that a run
// which never happened outlasted anything) or outlasted its budget.
func (b *Budgets) NotRun(series string, n int, reason string) {
	if cur, ok := b.stopped[series]; !ok || n < cur.services {
		b.stopped[series] = stop{n, reason}
	}
}

// Skip says why the series should not run at n Services within limit, or "" to run it.
// The estimate is a lower bound for any cost that grows at least linearly past the
// fixed part: the latest duration, extended along the slope between the last two
// measurements (along none with one measurement).
func (b *Budgets) Skip(series string, n int, limit time.Duration) string {
	if stop, ok := b.stopped[series]; ok && n >= stop.services {
		return stop.reason
	}
	ms := b.measured[series]
	if len(ms) == 0 {
		return ""
	}
	last := ms[len(ms)-1]
	estimate := last.took
	if len(ms) > 1 {
		prev := ms[len(ms)-2]
		if slope := float64(last.took-prev.took) / float64(last.services-prev.services); slope > 0 {
			estimate += time.Duration(slope * float64(n-last.services))
		}
	}
	if estimate <= limit {
		return ""
	}
	if n == last.services {
		return fmt.Sprintf("not run: it took %s at %d Services, beyond the %s limit", FormatSeconds(last.took.Seconds()), n, limit)
	}
	return fmt.Sprintf("not run: %s at %d Services extrapolates to at least %s at %d, beyond the %s limit",
		FormatSeconds(last.took.Seconds()), last.services, FormatSeconds(estimate.Seconds()), n, limit)
}
