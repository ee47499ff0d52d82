package benchmarks

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchyard/switchyard/dummy"
	"github.com/switchyard/switchyard/internal/sysctl"
	"github.com/switchyard/switchyard/iptables"
	"github.com/switchyard/switchyard/ipvs"
	"github.com/switchyard/switchyard/modes"
	"github.com/switchyard/switchyard/proxier"
)

// Modes a backend run can measure.
const (
	ModeIPVS           = "ipvs"
	ModeIPTablesLegacy = "iptables-legacy"
	ModeIPTablesNft    = "iptables-nft"
)

// BackendOptions configures one rule-refresh run.
type BackendOptions struct {
	Mode      string
	Kernel    string
	Services  int
	Endpoints int
	Repeats   int
	Seed      int64
	// FloorNetns is the path of an empty network namespace in which the kernel's own
	// tool replays each change, for the floor.
	FloorNetns string
	Logf       func(format string, args ...any)
}

// nodeName is the node the generated state is for; every endpoint is on another node.
const nodeName = "swyd-bench-node"

// benchMark is the masquerade mark the backends are configured with (kube-proxy's).
const benchMark = "0x4000"

// underTest is one backend with its measuring hooks.
type underTest struct {
	backend proxier.Backend
	// kernel returns the time spent in kernel writes and the kernel operations since the
	// last call.
	kernel func() (time.Duration, float64)
	// afterSync finishes deferred work outside the measured sync (draining real servers).
	afterSync func() error
	// verify checks that the kernel holds exactly the desired state.
	verify func(ctx context.Context, d *Desired) error
	// floor applies the same change with the kernel's own tool in the floor namespace.
	floor     func(ctx context.Context, before, after *Desired) (time.Duration, error)
	floorTool string
}

// RunBackend measures one backend in the current network namespace, which must be empty
// of Services: a full sync of N Services, then Repeats times each of adding a Service,
// changing an endpoint, deleting a Service and changing 10% of the Services at once.
// After every sync it checks that the kernel holds exactly the desired state.
func RunBackend(ctx context.Context, o BackendOptions) (*BackendRun, error) {
	if o.Services+o.Repeats > MaxServices {
		return nil, fmt.Errorf("%d Services do not fit the generator's %d cluster IPs", o.Services+o.Repeats, MaxServices)
	}
	ut, err := newUnderTest(o.Mode, o.FloorNetns)
	if err != nil {
		return nil, err
	}
	w := &Workload{Endpoints: o.Endpoints, Seed: o.Seed}
	d := NewDesired(nodeName)
	live := make([]int, 0, o.Services)
	for i := range o.Services {
		if _, err := d.Set(w.Spec(i)); err != nil {
			return nil, err
		}
		live = append(live, i)
	}
	rng := rand.New(rand.NewPCG(uint64(o.Seed), 1<<41))
	next := o.Services
	pick := func() int { return live[rng.IntN(len(live))] }
	changeEndpoints := func(count int) ([]proxier.ServicePortName, error) {
		var names []proxier.ServicePortName
		for _, k := range rng.Perm(len(live))[:count] {
			s := d.Specs[live[k]]
			w.ChangeEndpoint(s)
			changed, err := d.Set(s)
			if err != nil {
				return nil, err
			}
			names = append(names, changed...)
		}
		return names, nil
	}
	ops := []struct {
		op     string
		runs   int
		change func() ([]proxier.ServicePortName, error)
	}{
		{OpFull, 1, func() ([]proxier.ServicePortName, error) { return nil, nil }},
		{OpAddService, o.Repeats, func() ([]proxier.ServicePortName, error) {
			s := w.Spec(next)
			next++
			live = append(live, s.Index)
			return d.Set(s)
		}},
		{OpChangeEndpoint, o.Repeats, func() ([]proxier.ServicePortName, error) { return changeEndpoints(1) }},
		{OpDeleteService, o.Repeats, func() ([]proxier.ServicePortName, error) {
			i := pick()
			live = slices.DeleteFunc(live, func(v int) bool { return v == i })
			return d.Delete(i), nil
		}},
		{OpBurst, o.Repeats, func() ([]proxier.ServicePortName, error) { return changeEndpoints(max(1, len(live)/10)) }},
	}

	run := &BackendRun{Mode: o.Mode, Kernel: o.Kernel, Services: o.Services, Endpoints: o.Endpoints}
	for _, op := range ops {
		var syncs, writes, floors []time.Duration
		var counts []float64
		for r := range op.runs {
			before := d.snapshot()
			if op.op == OpFull {
				before = &Desired{} // a full sync starts from an empty kernel
			}
			names, err := op.change()
			if err != nil {
				return nil, err
			}
			changes := proxier.Changes{Full: op.op == OpFull, ServicePorts: map[proxier.ServicePortName]struct{}{}}
			for _, n := range names {
				changes.ServicePorts[n] = struct{}{}
			}
			ut.kernel() // discard what setup and the previous verification did
			start := time.Now()
			if err := ut.backend.Sync(ctx, d.State, changes); err != nil {
				return nil, fmt.Errorf("%s %s run %d: %w", o.Mode, op.op, r, err)
			}
			syncs = append(syncs, time.Since(start))
			writing, count := ut.kernel()
			writes, counts = append(writes, writing), append(counts, count)
			if err := ut.afterSync(); err != nil {
				return nil, fmt.Errorf("%s %s run %d: %w", o.Mode, op.op, r, err)
			}
			if err := ut.verify(ctx, d); err != nil {
				return nil, fmt.Errorf("%s %s run %d: the kernel does not hold the desired state: %w", o.Mode, op.op, r, err)
			}
			floor, err := ut.floor(ctx, before, d)
			if err != nil {
				return nil, fmt.Errorf("%s %s run %d: floor: %w", o.Mode, op.op, r, err)
			}
			floors = append(floors, floor)
		}
		step := Step{Op: op.op, Runs: op.runs, Sync: Summarize(Seconds(syncs)), Kernel: Summarize(Seconds(writes)),
			Ops: Summarize(counts), Floor: Summarize(Seconds(floors)), FloorTool: ut.floorTool, RSSBytes: procStatus("VmRSS"), Verified: true}
		run.Steps = append(run.Steps, step)
		if o.Logf != nil {
			o.Logf("%s N=%d %s: sync median %s, floor median %s, %v kernel ops", o.Mode, o.Services, op.op,
				FormatSeconds(step.Sync.Median), FormatSeconds(step.Floor.Median), step.Ops.Median)
		}
	}
	run.PeakRSSBytes = procStatus("VmHWM")
	return run, nil
}

// snapshot copies the part of the desired state the floor diffs: each Service's endpoints.
func (d *Desired) snapshot() *Desired {
	c := &Desired{Specs: make(map[int]*Spec, len(d.Specs))}
	for i, s := range d.Specs {
		c.Specs[i] = &Spec{Index: s.Index, Endpoints: slices.Clone(s.Endpoints)}
	}
	return c
}

// backendModes are the modes a rule-refresh run measures: each proxy mode of the registry
// (modes.All; TestEveryProxyModeIsMeasured), iptables mode in both of its flavors.
// Measuring takes a mode's own kernel interfaces, to time its writes, replay them with the
// kernel's tool and read back what the kernel holds, so each mode has its own constructor
// rather than the registry's.
var backendModes = []struct {
	name      string
	proxyMode string
	build     func(floorNetns string) (*underTest, error)
}{
	{ModeIPVS, modes.IPVS.Name, newIPVSUnderTest},
	{ModeIPTablesLegacy, modes.IPTables.Name, func(floorNetns string) (*underTest, error) {
		return newIPTablesUnderTest(iptables.Legacy, floorNetns)
	}},
	{ModeIPTablesNft, modes.IPTables.Name, func(floorNetns string) (*underTest, error) {
		return newIPTablesUnderTest(iptables.Nft, floorNetns)
	}},
}

func newUnderTest(mode, floorNetns string) (*underTest, error) {
	var names []string
	for _, m := range backendModes {
		if m.name == mode {
			return m.build(floorNetns)
		}
		names = append(names, m.name)
	}
	return nil, fmt.Errorf("unknown mode %q: valid modes are %s", mode, strings.Join(names, ", "))
}

var benchClusterCIDR = netip.MustParsePrefix("10.244.0.0/16")

func renderConfig() iptables.RenderConfig {
	return iptables.RenderConfig{ResolveConfig: proxier.ResolveConfig{ClusterCIDR: benchClusterCIDR}, MasqueradeMark: benchMark, NodeName: nodeName}
}

func newIPTablesUnderTest(flavor iptables.Flavor, floorNetns string) (*underTest, error) {
	ipt, err := iptables.New(flavor, false)
	if err != nil {
		return nil, err
	}
	timed := &timedIPTables{Interface: ipt}
	backend := iptables.NewBackend(timed, renderConfig(), prometheus.NewRegistry(), logr.Discard())
	restore := "iptables-" + string(flavor) + "-restore"
	return &underTest{
		backend: backend,
		kernel: func() (time.Duration, float64) {
			writing, lines := timed.writing, timed.lines
			timed.writing, timed.lines = 0, 0
			return writing, float64(lines)
		},
		afterSync: func() error { return nil },
		verify: func(ctx context.Context, d *Desired) error {
			return verifyIPTables(ctx, ipt, d)
		},
		floor: func(ctx context.Context, _, _ *Desired) (time.Duration, error) {
			var total time.Duration
			inputs := timed.inputs
			timed.inputs = nil
			for _, input := range inputs {
				took, err := runInNetns(floorNetns, input, restore, "--noflush")
				if err != nil {
					return 0, err
				}
				total += took
			}
			return total, nil
		},
		floorTool: restore,
	}, nil
}

func newIPVSUnderTest(floorNetns string) (*underTest, error) {
	handle, err := ipvs.New()
	if err != nil {
		return nil, err
	}
	if err := ipvs.PrepareNode(sysctl.New(), handle, ipvs.NodeConfig{}, logr.Discard()); err != nil {
		return nil, err
	}
	dev, err := dummy.Ensure(dummy.DefaultName)
	if err != nil {
		return nil, err
	}
	ipt, err := iptables.New(iptables.Legacy, false)
	if err != nil {
		return nil, err
	}
	timed := &timedIPVS{Interface: handle}
	reg := prometheus.NewRegistry()
	backend := ipvs.NewBackend(timed, ipt, dev, ipvs.Config{Scheduler: "rr", ResolveConfig: proxier.ResolveConfig{ClusterCIDR: benchClusterCIDR},
		MasqueradeMark: benchMark, TerminationGrace: time.Minute}, reg, logr.Discard())
	var lastOps float64
	return &underTest{
		backend: backend,
		kernel: func() (time.Duration, float64) {
			ops := counterSum(reg, "switchyard_ipvs_operations_total")
			writing, count := timed.writing, ops-lastOps
			timed.writing, lastOps = 0, ops
			return writing, count
		},
		// Removed real servers wait at weight 0 for their connections to drain; the
		// benchmark has none, so draining deletes them at once, as the drainer would.
		afterSync: backend.DrainTerminating,
		verify: func(_ context.Context, d *Desired) error {
			return verifyIPVS(handle, dev, d)
		},
		floor: func(_ context.Context, before, after *Desired) (time.Duration, error) {
			return runInNetns(floorNetns, []byte(ipvsadmScript(before, after)), "ipvsadm", "-R")
		},
		floorTool: "ipvsadm -R",
	}, nil
}

// counterSum adds up every series of a counter in reg.
func counterSum(reg *prometheus.Registry, name string) float64 {
	families, err := reg.Gather()
	if err != nil {
		return 0
	}
	total := 0.0
	for _, f := range families {
		if f.GetName() == name {
			for _, m := range f.GetMetric() {
				total += m.GetCounter().GetValue()
			}
		}
	}
	return total
}

// procStatus reads a size field (in kB) of /proc/self/status, in bytes.
func procStatus(field string) int64 {
	return procStatusOf("self", field)
}
