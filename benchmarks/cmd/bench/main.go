// Command bench runs switchyard's rule-refresh benchmarks (see benchmarks/README.md):
//
//	bench run      the whole harness, on the host; writes results.json, results.md and plots
//	bench report   regenerates results.md, dataplane.md and the plots from the JSON
//	bench dataplane  requests through a Service and the proxies' resource use, per mode;
//	                 writes dataplane.json, dataplane.md and its plots
//
// and, as building blocks the harness starts itself:
//
//	bench backends   in-process backend runs, each in fresh network namespaces
//	bench backend    one in-process backend run in the current network namespace
//	bench proxies    switchyard and kube-proxy runs on a lab node (inside the kernel lab)
//	bench dataplane-node  the data-plane runs of one proxy on a lab node (inside the kernel lab)
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/switchyard/switchyard/benchmarks"
	"github.com/switchyard/switchyard/internal/lab"
	"github.com/switchyard/switchyard/internal/testenv"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: bench run|report|dataplane|backends|backend|proxies|dataplane-node [flags]")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	commands := map[string]func(context.Context, []string) error{
		"run": cmdRun, "report": cmdReport, "backends": cmdBackends, "backend": cmdBackend, "proxies": cmdProxies,
		"dataplane": cmdDataplane, "dataplane-node": cmdDataplaneNode,
	}
	cmd, ok := commands[os.Args[1]]
	if !ok {
		fmt.Fprintf(os.Stderr, "bench: unknown command %q: valid commands are run, report, dataplane, backends, backend, proxies, dataplane-node\n", os.Args[1])
		os.Exit(2)
	}
	if err := cmd(ctx, os.Args[2:]); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

// workloadFlags are the flags that every command measuring at a given N shares.
type workloadFlags struct {
	endpoints int
	repeats   int
	changes   int
	seed      int64
	// startupTimeout and changeBudget bound a proxy run, so that a proxy too slow for the
	// kernel it runs in (upstream's IPVS mode in the kernel lab) is recorded as such
	// instead of stalling the harness for hours.
	startupTimeout time.Duration
	changeBudget   time.Duration
	// backendBudget bounds one in-process backend run (one mode at one N) for the same
	// reason.
	backendBudget time.Duration
}

func (w *workloadFlags) register(fs *flag.FlagSet) {
	fs.IntVar(&w.endpoints, "endpoints", 10, "endpoints per Service (M)")
	fs.IntVar(&w.repeats, "repeats", 3, "how many times each incremental operation is measured (K)")
	fs.IntVar(&w.changes, "changes", 100, "EndpointSlice writes the end-to-end latency is measured over")
	fs.Int64Var(&w.seed, "seed", 1, "seed of the workload generator")
	fs.DurationVar(&w.startupTimeout, "startup-timeout", 8*time.Minute, "how long a proxy may take to its first complete sync")
	fs.DurationVar(&w.changeBudget, "change-budget", 4*time.Minute, "how long a proxy's series of EndpointSlice writes may take; it stops early past this")
	fs.DurationVar(&w.backendBudget, "backend-budget", 25*time.Minute, "how long one in-process backend run (one mode at one N, floor included) may take")
}

func (w *workloadFlags) validate() error {
	if w.endpoints < 1 || w.repeats < 1 || w.changes < 1 {
		return errors.New("-endpoints, -repeats and -changes must be at least 1")
	}
	if w.startupTimeout <= 0 || w.changeBudget <= 0 || w.backendBudget <= 0 {
		return errors.New("-startup-timeout, -change-budget and -backend-budget must be positive")
	}
	return nil
}

func (w *workloadFlags) args() []string {
	return []string{"-endpoints", fmt.Sprint(w.endpoints), "-repeats", fmt.Sprint(w.repeats), "-changes", fmt.Sprint(w.changes),
		"-seed", fmt.Sprint(w.seed), "-startup-timeout", w.startupTimeout.String(), "-change-budget", w.changeBudget.String(),
		"-backend-budget", w.backendBudget.String()}
}

func (w *workloadFlags) proxyOptions(kernel, mode string, n int) benchmarks.ProxyOptions {
	return benchmarks.ProxyOptions{Kernel: kernel, Mode: mode, Services: n, Endpoints: w.endpoints, Changes: w.changes,
		StartupTimeout: w.startupTimeout, ChangeBudget: w.changeBudget, Logf: logf}
}

// parseServices parses the -services list of N.
func parseServices(list string) ([]int, error) {
	var ns []int
	for _, f := range strings.Split(list, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > benchmarks.MaxServices {
			return nil, fmt.Errorf("invalid value %q in -services: want numbers of Services from 1 to %d", f, benchmarks.MaxServices)
		}
		if len(ns) > 0 && n <= ns[len(ns)-1] {
			return nil, fmt.Errorf("invalid -services %q: numbers must increase", list)
		}
		ns = append(ns, n)
	}
	return ns, nil
}

func modes(list string) ([]string, error) {
	if list == "" {
		return nil, nil
	}
	var out []string
	for _, m := range strings.Split(list, ",") {
		switch m {
		case benchmarks.ModeIPVS, benchmarks.ModeIPTablesLegacy, benchmarks.ModeIPTablesNft:
			out = append(out, m)
		default:
			return nil, fmt.Errorf("invalid mode %q: valid modes are ipvs, iptables-legacy, iptables-nft", m)
		}
	}
	return out, nil
}

func cmdRun(ctx context.Context, args []string) (err error) {
	fs := flag.NewFlagSet("run", flag.ExitOnError)
	var w workloadFlags
	w.register(fs)
	services := fs.String("services", "100,1000,5000,10000", "comma-separated numbers of Services (N), increasing")
	out := fs.String("out", "benchmarks/results", "directory for results.json, results.md and the plots")
	hostModes := fs.String("host-modes", "iptables-nft,iptables-legacy", "modes measured natively on the host, in network namespaces")
	labModes := fs.String("lab-modes", "ipvs,iptables-legacy", "modes measured in the kernel lab")
	// Every exec costs tens of milliseconds in the lab, so the iptables modes' proxies,
	// which exec iptables-restore on each sync, are measured natively on the host instead.
	labProxyModes := fs.String("lab-proxy-modes", "ipvs", "modes the proxies run in inside the kernel lab")
	binDir := fs.String("bin", "bin", "directory holding switchyard, labagent, bench and kube-proxy")
	kernelLab := fs.String("kernel-lab", "hack/kernel-lab/run.sh", "the kernel lab's runner")
	skipProxies := fs.Bool("skip-proxies", false, "measure only the in-process backends")
	resume := fs.Bool("resume", false, "keep the N that -out's results.json already holds (same workload and machine) and measure only the larger N")
	startupFrom := fs.String("startup-from", "", startupFromUsage)
	_ = fs.Parse(args)
	if err := w.validate(); err != nil {
		return err
	}
	ns, err := parseServices(*services)
	if err != nil {
		return err
	}
	host, err := modes(*hostModes)
	if err != nil {
		return err
	}
	inLab, err := modes(*labModes)
	if err != nil {
		return err
	}
	proxiesInLab, err := modes(*labProxyModes)
	if err != nil {
		return err
	}
	bins, err := binaries(*binDir)
	if err != nil {
		return err
	}
	runner, err := filepath.Abs(*kernelLab)
	if err != nil {
		return err
	}
	scratch, err := os.MkdirTemp("", "switchyard-bench")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			logf("kept the logs of the failed run in %s", scratch)
			return
		}
		os.RemoveAll(scratch)
	}()

	results := &benchmarks.Results{Command: "bench " + strings.Join(args, " "), Machine: machine(),
		Config: benchmarks.Config{Endpoints: w.endpoints, Repeats: w.repeats, Changes: w.changes, Seed: w.seed, Services: ns}}
	plan := &plan{budgets: benchmarks.NewBudgets(), w: &w}
	if *startupFrom != "" {
		if err := plan.seedFrom(*startupFrom); err != nil {
			return err
		}
	}
	var done map[int]bool
	if *resume {
		if done, err = resumeFrom(filepath.Join(*out, "results.json"), results, plan); err != nil {
			return err
		}
	}
	var hostLab *proxyLab
	var guestLab *guestProxyLab
	if !*skipProxies && len(host) > 0 {
		if hostLab, err = startHostProxyLab(ctx, bins, scratch, &w); err != nil {
			return err
		}
		defer closeInto(hostLab, &err)
	}
	if !*skipProxies && len(proxiesInLab) > 0 {
		if guestLab, err = startGuestProxyLab(ctx, bins, runner, scratch, &w); err != nil {
			return err
		}
		defer closeInto(guestLab, &err)
	}
	// N by N, every measurement at one N before the next, and the results written after
	// each: a run cut short (or one whose large N outlasts the patience of whoever runs
	// it) still leaves complete figures for the smaller N.
	for _, n := range ns {
		if done[n] {
			logf("%d Services: kept from the earlier run", n)
			continue
		}
		if toRun, skipped := plan.backendModes("host", host, n); len(toRun)+len(skipped) > 0 {
			results.Backends = append(results.Backends, skipped...)
			if len(toRun) > 0 {
				runs, err := backends(ctx, bins["bench"], "host", toRun, n, &w)
				if err != nil {
					return err
				}
				plan.recordBackends(runs)
				results.Backends = append(results.Backends, runs...)
			}
		}
		if toRun, skipped := plan.backendModes("lab", inLab, n); len(toRun)+len(skipped) > 0 {
			results.Backends = append(results.Backends, skipped...)
			if len(toRun) > 0 {
				runs, err := labBackends(ctx, bins["bench"], runner, scratch, toRun, n, &w)
				if err != nil {
					return err
				}
				plan.recordBackends(runs)
				results.Backends = append(results.Backends, runs...)
			}
		}
		if hostLab != nil {
			runs, err := hostLab.run(ctx, host, n, plan)
			if err != nil {
				return err
			}
			results.Proxies = append(results.Proxies, runs...)
		}
		if guestLab != nil {
			runs, err := guestLab.run(ctx, proxiesInLab, n, plan)
			if err != nil {
				return err
			}
			results.Proxies = append(results.Proxies, runs...)
		}
		if err := writeResults(results, *out); err != nil {
			return err
		}
		logf("results up to %d Services written to %s", n, *out)
	}
	table, err := os.ReadFile(filepath.Join(*out, "results.md"))
	if err != nil {
		return err
	}
	fmt.Print(string(table))
	return nil
}

// resumeFrom adopts the complete N of the results at path (none when there is no file)
// and seeds the plan's budgets with what they took, as if this run had measured them.
func resumeFrom(path string, results *benchmarks.Results, p *plan) (map[int]bool, error) {
	prev, err := benchmarks.ReadResults(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	done, err := results.Resume(prev)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	p.recordBackends(prev.Backends)
	p.recordProxies(prev.Proxies)
	return done, nil
}

// plan decides from what the runs at smaller N took which runs the next N gets (see
// benchmarks.Budgets), and records what each run took.
type plan struct {
	budgets *benchmarks.Budgets
	w       *workloadFlags
	// prior, when set, holds the proxy startups of an earlier rule-refresh run (same
	// machine, workload and kernels) read from priorFile: a run they say cannot start in
	// time is not tried.
	prior     *benchmarks.Budgets
	priorFile string
}

// seedFrom reads the proxy startups of the rule-refresh results at path into p.prior.
func (p *plan) seedFrom(path string) error {
	prior, err := benchmarks.ReadResults(path)
	if err != nil {
		return err
	}
	seeded := &plan{budgets: benchmarks.NewBudgets(), w: p.w}
	seeded.recordProxies(prior.Proxies)
	p.prior, p.priorFile = seeded.budgets, path
	return nil
}

// skipProxy says why proxy should not run in mode at n, from this run's startups and
// then the prior run's, or "" to run it.
func (p *plan) skipProxy(proxy, kernel, mode string, n int) string {
	series := proxySeries(proxy, mode, kernel)
	if reason := p.budgets.Skip(series, n, p.w.startupTimeout); reason != "" || p.prior == nil {
		return reason
	}
	if reason := p.prior.Skip(series, n, p.w.startupTimeout); reason != "" {
		return fmt.Sprintf("%s (in the rule-refresh run of %s)", reason, p.priorFile)
	}
	return ""
}

// notRunPrefix starts the Incomplete reason of a run that Budgets.Skip kept from running.
const notRunPrefix = "not run:"

func backendSeries(mode, kernel string) string      { return "backend " + mode + " " + kernel }
func proxySeries(proxy, mode, kernel string) string { return proxy + " " + mode + " " + kernel }

// backendModes splits ms into the modes to run at n and not-run records for the rest.
func (p *plan) backendModes(kernel string, ms []string, n int) (toRun []string, skipped []benchmarks.BackendRun) {
	for _, mode := range ms {
		if reason := p.budgets.Skip(backendSeries(mode, kernel), n, p.w.backendBudget); reason != "" {
			logf("%s N=%d (%s): %s", mode, n, kernel, reason)
			skipped = append(skipped, benchmarks.BackendRun{Mode: mode, Kernel: kernel, Services: n, Endpoints: p.w.endpoints, Incomplete: reason})
			continue
		}
		toRun = append(toRun, mode)
	}
	return toRun, skipped
}

func (p *plan) recordBackends(runs []benchmarks.BackendRun) {
	for _, r := range runs {
		switch series := backendSeries(r.Mode, r.Kernel); {
		case strings.HasPrefix(r.Incomplete, notRunPrefix):
			p.budgets.NotRun(series, r.Services, r.Incomplete)
		case r.Incomplete != "":
			p.budgets.Exceeded(series, r.Services)
		default:
			p.budgets.Measured(series, r.Services, time.Duration(r.WallSeconds*float64(time.Second)))
		}
	}
}

// proxies splits switchyard and kube-proxy into those to run in mode at n and not-run
// records for the rest. What a proxy's first sync took at smaller N decides.
func (p *plan) proxies(kernel, mode string, n int) (toRun []string, skipped []benchmarks.ProxyRun) {
	for _, proxy := range []string{benchmarks.ProxySwitchyard, benchmarks.ProxyKubeProxy} {
		if reason := p.skipProxy(proxy, kernel, mode, n); reason != "" {
			logf("%s %s N=%d (%s): %s", proxy, mode, n, kernel, reason)
			skipped = append(skipped, benchmarks.ProxyRun{Proxy: proxy, Mode: mode, Kernel: kernel, Services: n, Endpoints: p.w.endpoints, Incomplete: reason})
			continue
		}
		toRun = append(toRun, proxy)
	}
	return toRun, skipped
}

func (p *plan) recordProxies(runs []benchmarks.ProxyRun) {
	for _, r := range runs {
		// A run with changes started; its Incomplete is about its change budget.
		p.recordStartup(proxySeries(r.Proxy, r.Mode, r.Kernel), r.Services, r.StartupSeconds, r.Incomplete, r.Changes == 0)
	}
}

// recordStartup records what a proxy's first sync took at n Services: incomplete is the
// run's reason, if any, and notStarted whether that reason means the first sync did not
// complete.
func (p *plan) recordStartup(series string, n int, startupSeconds float64, incomplete string, notStarted bool) {
	switch {
	case strings.HasPrefix(incomplete, notRunPrefix): // skipped by its budget
		p.budgets.NotRun(series, n, incomplete)
	case notStarted && incomplete != "": // its first sync did not complete
		p.budgets.Exceeded(series, n)
	default:
		p.budgets.Measured(series, n, time.Duration(startupSeconds*float64(time.Second)))
	}
}

func writeResults(results *benchmarks.Results, dir string) error {
	results.Generated = time.Now().UTC().Format(time.RFC3339)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := benchmarks.WriteJSON(filepath.Join(dir, "results.json"), results); err != nil {
		return err
	}
	return benchmarks.WriteReport(results, dir)
}

// closeInto closes c and reports its error through *err unless an earlier error is there.
func closeInto(c interface{ Close() error }, err *error) {
	if cerr := c.Close(); cerr != nil && *err == nil {
		*err = cerr
	}
}

// labBackends runs the in-process backends at one N in a kernel lab guest.
func labBackends(ctx context.Context, bench, runner, scratch string, ms []string, n int, w *workloadFlags) ([]benchmarks.BackendRun, error) {
	file := filepath.Join(scratch, fmt.Sprintf("lab-backends-%d.json", n))
	cmd := exec.CommandContext(ctx, runner, append([]string{bench, "backends", "-kernel", "lab", "-modes", strings.Join(ms, ","), "-out", file,
		"-n", fmt.Sprint(n)}, w.args()...)...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	logf("kernel lab: in-process backends %v at %d Services", ms, n)
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("in-process backends in the kernel lab at %d Services: %w", n, err)
	}
	var runs []benchmarks.BackendRun
	return runs, readJSON(file, &runs)
}

func cmdReport(_ context.Context, args []string) error {
	fs := flag.NewFlagSet("report", flag.ExitOnError)
	dir := fs.String("dir", "benchmarks/results", "directory holding results.json; the report is written next to it")
	_ = fs.Parse(args)
	r, err := benchmarks.ReadResults(filepath.Join(*dir, "results.json"))
	if err != nil {
		return err
	}
	if err := benchmarks.WriteReport(r, *dir); err != nil {
		return err
	}
	d, err := benchmarks.ReadDataplane(filepath.Join(*dir, benchmarks.DataplaneJSONFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	return benchmarks.WriteDataplaneReport(d, *dir)
}

// binaries finds the programs the harness runs, as absolute paths (the kernel lab's guest
// sees the host's filesystem, so the same paths work inside it).
func binaries(dir string) (map[string]string, error) {
	bins := map[string]string{}
	for _, name := range []string{"switchyard", "labagent", "bench"} {
		path, err := filepath.Abs(filepath.Join(dir, name))
		if err != nil {
			return nil, err
		}
		if _, err := os.Stat(path); err != nil {
			return nil, fmt.Errorf("%s not found in %s: run make build (make bench does)", name, dir)
		}
		bins[name] = path
	}
	kubeProxy, err := testenv.Binary("kube-proxy")
	if err != nil {
		return nil, err
	}
	bins[benchmarks.ProxyKubeProxy] = kubeProxy
	return bins, nil
}

// cmdBackends runs one in-process backend run per mode and N, each in a fresh pair of
// network namespaces (one for the backend, one for the floor) so that runs do not see
// each other's rules.
func cmdBackends(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("backends", flag.ExitOnError)
	var w workloadFlags
	w.register(fs)
	kernel := fs.String("kernel", "host", "where this runs: host or lab")
	modeList := fs.String("modes", "", "modes to measure")
	n := fs.Int("n", 100, "number of Services")
	out := fs.String("out", "", "JSON file for the results")
	_ = fs.Parse(args)
	if err := w.validate(); err != nil {
		return err
	}
	ms, err := modes(*modeList)
	if err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	runs, err := backends(ctx, self, *kernel, ms, *n, &w)
	if err != nil {
		return err
	}
	return benchmarks.WriteJSON(*out, runs)
}

// backends runs each mode's backend at n Services. A run that outlasts -backend-budget
// is stopped and recorded as incomplete, with no figures.
func backends(ctx context.Context, self, kernel string, ms []string, n int, w *workloadFlags) ([]benchmarks.BackendRun, error) {
	var runs []benchmarks.BackendRun
	for _, mode := range ms {
		runCtx, cancel := context.WithTimeout(ctx, w.backendBudget)
		start := time.Now()
		run, err := backendInNetns(runCtx, self, kernel, mode, n, w)
		cancel()
		if err != nil && ctx.Err() == nil && errors.Is(runCtx.Err(), context.DeadlineExceeded) {
			run, err = &benchmarks.BackendRun{Mode: mode, Kernel: kernel, Services: n, Endpoints: w.endpoints,
				Incomplete: fmt.Sprintf("stopped after its budget of %s (-backend-budget)", w.backendBudget)}, nil
			logf("%s N=%d (%s): %s", mode, n, kernel, run.Incomplete)
		}
		if err != nil {
			return nil, err
		}
		run.WallSeconds = time.Since(start).Seconds()
		runs = append(runs, *run)
	}
	return runs, nil
}

func backendInNetns(ctx context.Context, self, kernel, mode string, n int, w *workloadFlags) (_ *benchmarks.BackendRun, err error) {
	var nss []*testenv.Netns
	defer func() {
		for _, ns := range nss {
			if derr := ns.Delete(); derr != nil && err == nil {
				err = derr
			}
		}
	}()
	for _, name := range []string{"swyd-bench", "swyd-floor"} {
		ns, err := testenv.NewNetns(name)
		if err != nil {
			return nil, err
		}
		nss = append(nss, ns)
	}
	file, err := os.CreateTemp("", "switchyard-bench-*.json")
	if err != nil {
		return nil, err
	}
	file.Close()
	defer os.Remove(file.Name())
	cmd := nss[0].Exec(ctx, self, "backend", "-kernel", kernel, "-mode", mode, "-n", fmt.Sprint(n),
		"-endpoints", fmt.Sprint(w.endpoints), "-repeats", fmt.Sprint(w.repeats), "-seed", fmt.Sprint(w.seed),
		"-floor-netns", nss[1].Path(), "-out", file.Name())
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	// Past its budget the run is killed with the restore it may be waiting for.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("%s at %d Services (%s): %w", mode, n, kernel, err)
	}
	var run benchmarks.BackendRun
	return &run, readJSON(file.Name(), &run)
}

// cmdBackend is one run, in its own process so that its peak memory is its own.
func cmdBackend(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("backend", flag.ExitOnError)
	var o benchmarks.BackendOptions
	fs.StringVar(&o.Kernel, "kernel", "host", "where this runs: host or lab")
	fs.StringVar(&o.Mode, "mode", "", "the mode to measure")
	fs.IntVar(&o.Services, "n", 100, "number of Services")
	fs.IntVar(&o.Endpoints, "endpoints", 10, "endpoints per Service")
	fs.IntVar(&o.Repeats, "repeats", 3, "runs of each incremental operation")
	fs.Int64Var(&o.Seed, "seed", 1, "seed of the workload generator")
	fs.StringVar(&o.FloorNetns, "floor-netns", "", "path of an empty network namespace for the floor")
	out := fs.String("out", "", "JSON file for the result")
	_ = fs.Parse(args)
	o.Logf = logf
	run, err := benchmarks.RunBackend(ctx, o)
	if err != nil {
		return err
	}
	return benchmarks.WriteJSON(*out, run)
}

func kubeClient(kubeconfig string) (kubernetes.Interface, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, err
	}
	// A private apiserver: client-side throttling would only slow the workload down.
	cfg.QPS = -1
	return kubernetes.NewForConfig(cfg)
}

// proxyLab runs the proxies natively: a lab with its own apiserver and node namespace,
// the workload grown N by N, each proxy in each mode at each N.
type proxyLab struct {
	lab       *lab.Lab
	bins      map[string]string
	scratch   string
	w         *workloadFlags
	workload  *benchmarks.Workload
	populated int
}

func startHostProxyLab(ctx context.Context, bins map[string]string, scratch string, w *workloadFlags) (*proxyLab, error) {
	l, err := lab.Start(ctx, lab.Options{Dir: filepath.Join(scratch, "host-lab"), Pods: 2, Agent: bins["labagent"]})
	if err != nil {
		return nil, err
	}
	return &proxyLab{lab: l, bins: bins, scratch: scratch, w: w, workload: &benchmarks.Workload{Endpoints: w.endpoints, Seed: w.seed}}, nil
}

func (p *proxyLab) Close() error { return p.lab.Close() }

func (p *proxyLab) run(ctx context.Context, ms []string, n int, plan *plan) ([]benchmarks.ProxyRun, error) {
	logf("host: populating the apiserver to %d Services", n)
	if err := benchmarks.Populate(ctx, p.lab.Client, p.workload, p.populated, n); err != nil {
		return nil, err
	}
	p.populated = n
	var runs []benchmarks.ProxyRun
	for _, mode := range ms {
		toRun, skipped := plan.proxies("host", mode, n)
		runs = append(runs, skipped...)
		if len(toRun) == 0 {
			continue
		}
		o := p.w.proxyOptions("host", mode, n)
		o.Binaries, o.Lab, o.Scratch, o.Proxies = p.bins, p.lab, p.scratch, toRun
		got, err := benchmarks.RunProxies(ctx, o)
		if err != nil {
			return nil, err
		}
		plan.recordProxies(got)
		runs = append(runs, got...)
	}
	return runs, nil
}

// guestProxyLab runs the proxies in the kernel lab: the apiserver on the host, grown N
// by N from the host, and for each N one guest that runs each proxy in each mode.
type guestProxyLab struct {
	link      *lab.GuestLink
	client    kubernetes.Interface
	bins      map[string]string
	scratch   string
	w         *workloadFlags
	workload  *benchmarks.Workload
	populated int
}

func startGuestProxyLab(ctx context.Context, bins map[string]string, runner, scratch string, w *workloadFlags) (*guestProxyLab, error) {
	g, err := lab.StartGuestLink(ctx, filepath.Join(scratch, "guest-link"), runner, 0)
	if err != nil {
		return nil, err
	}
	client, err := kubeClient(g.Kubeconfig)
	if err != nil {
		return nil, errors.Join(err, g.Close())
	}
	return &guestProxyLab{link: g, client: client, bins: bins, scratch: scratch, w: w,
		workload: &benchmarks.Workload{Endpoints: w.endpoints, Seed: w.seed}}, nil
}

func (g *guestProxyLab) Close() error { return g.link.Close() }

// run boots one guest per proxy, so that each proxy starts from a pristine kernel:
// kube-proxy's --cleanup does not empty an IPVS node in the lab (its iptables teardown
// fails there), and a leftover would change what the next run measures.
func (g *guestProxyLab) run(ctx context.Context, ms []string, n int, plan *plan) ([]benchmarks.ProxyRun, error) {
	logf("kernel lab: populating the apiserver to %d Services", n)
	if err := benchmarks.Populate(ctx, g.client, g.workload, g.populated, n); err != nil {
		return nil, err
	}
	g.populated = n
	var runs []benchmarks.ProxyRun
	for _, mode := range ms {
		toRun, skipped := plan.proxies("lab", mode, n)
		runs = append(runs, skipped...)
		for _, proxy := range toRun {
			name := fmt.Sprintf("%s-%s-%d", proxy, mode, n)
			file := filepath.Join(g.scratch, "lab-proxies-"+name+".json")
			args := append([]string{g.bins["bench"], "proxies", "-kubeconfig", g.link.Kubeconfig, "-modes", mode, "-proxies", proxy,
				"-n", fmt.Sprint(n), "-bin-switchyard", g.bins["switchyard"], "-bin-kube-proxy", g.bins[benchmarks.ProxyKubeProxy],
				"-agent", g.bins["labagent"], "-scratch", filepath.Join(g.scratch, "guest-"+name), "-out", file}, g.w.args()...)
			limit := g.w.startupTimeout + g.w.changeBudget + guestOverhead
			reason, err := g.runBounded(ctx, limit, args)
			if err != nil {
				return nil, fmt.Errorf("%s in %s mode in the kernel lab at %d Services: %w", proxy, mode, n, err)
			}
			var got []benchmarks.ProxyRun
			if reason != "" {
				logf("%s %s N=%d (lab): %s", proxy, mode, n, reason)
				got = []benchmarks.ProxyRun{{Proxy: proxy, Mode: mode, Kernel: "lab", Services: n, Endpoints: g.w.endpoints, Incomplete: reason}}
			} else if err := readJSON(file, &got); err != nil {
				return nil, err
			}
			plan.recordProxies(got)
			runs = append(runs, got...)
		}
	}
	return runs, nil
}

const startupFromUsage = "a rule-refresh results.json whose proxy startups (same machine, workload and kernels) tell which runs cannot start within -startup-timeout"

// guestOverhead is what a guest run takes besides the proxy's own budgets: booting the
// guest, starting the lab's pods, and both proxies' --cleanup before and after.
const guestOverhead = 10 * time.Minute

// runBounded runs args in a guest of its own for at most limit (see bounded).
func (g *guestProxyLab) runBounded(ctx context.Context, limit time.Duration, args []string) (reason string, err error) {
	return bounded(ctx, limit, func(ctx context.Context) error { return g.link.Run(ctx, os.Stderr, nil, args...) })
}

// bounded calls run with a context that ends after limit. A run stopped by that limit is
// recorded as not run, with the reason returned, because a proxy too slow for the kernel
// it runs in (upstream's IPVS mode in the lab) is a finding, not a broken harness. Any
// other failure, and an interrupted harness, is an error.
func bounded(ctx context.Context, limit time.Duration, run func(context.Context) error) (reason string, err error) {
	runCtx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	start := time.Now()
	err = run(runCtx)
	if err != nil && ctx.Err() == nil && errors.Is(runCtx.Err(), context.DeadlineExceeded) {
		return fmt.Sprintf("%s its run was stopped after %s, past its limit of %s (%v)",
			notRunPrefix, time.Since(start).Round(time.Second), limit, err), nil
	}
	return "", err
}

// cmdProxies runs inside the kernel lab's guest: the guest is the node, and the apiserver
// (already holding the workload) is on the host.
func cmdProxies(ctx context.Context, args []string) (err error) {
	fs := flag.NewFlagSet("proxies", flag.ExitOnError)
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig of the apiserver on the host")
	modeList := fs.String("modes", "", "modes to measure")
	proxies := fs.String("proxies", "", "proxies to run, comma-separated (default: switchyard,kube-proxy)")
	n := fs.Int("n", 0, "number of Services the apiserver holds")
	var w workloadFlags
	w.register(fs)
	switchyard := fs.String("bin-switchyard", "", "switchyard binary")
	kubeProxy := fs.String("bin-kube-proxy", "", "kube-proxy binary")
	agent := fs.String("agent", "", "labagent binary")
	scratch := fs.String("scratch", "", "scratch directory")
	out := fs.String("out", "", "JSON file for the results")
	_ = fs.Parse(args)
	if err := w.validate(); err != nil {
		return err
	}
	ms, err := modes(*modeList)
	if err != nil {
		return err
	}
	l, err := lab.Start(ctx, lab.Options{Dir: *scratch, Pods: 2, Agent: *agent, Kubeconfig: *kubeconfig})
	if err != nil {
		return err
	}
	defer func() {
		if cerr := l.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	var runs []benchmarks.ProxyRun
	for _, mode := range ms {
		o := w.proxyOptions("lab", mode, *n)
		o.Lab, o.Scratch = l, *scratch
		o.Binaries = map[string]string{benchmarks.ProxySwitchyard: *switchyard, benchmarks.ProxyKubeProxy: *kubeProxy}
		if *proxies != "" {
			o.Proxies = strings.Split(*proxies, ",")
		}
		for _, p := range o.Proxies {
			if o.Binaries[p] == "" {
				return fmt.Errorf("invalid proxy %q in -proxies: valid proxies are %s, %s", p, benchmarks.ProxySwitchyard, benchmarks.ProxyKubeProxy)
			}
		}
		got, err := benchmarks.RunProxies(ctx, o)
		if err != nil {
			return err
		}
		runs = append(runs, got...)
	}
	return benchmarks.WriteJSON(*out, runs)
}

func readJSON(path string, v any) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	return json.Unmarshal(data, v)
}

// machine describes the host the figures come from.
func machine() string {
	cpu := "unknown CPU"
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				cpu = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	var uts syscall.Utsname
	_ = syscall.Uname(&uts)
	release := make([]byte, 0, len(uts.Release))
	for _, c := range uts.Release {
		if c == 0 {
			break
		}
		release = append(release, byte(c))
	}
	uml := "unknown"
	if entries, err := os.ReadDir("/usr/lib/uml/modules"); err == nil && len(entries) > 0 {
		uml = entries[0].Name()
	}
	return fmt.Sprintf("%s, %d CPUs, %d GiB; host kernel %s; kernel lab: UML %s", cpu, runtime.NumCPU(), memGiB(), release, uml)
}

func memGiB() int64 {
	data, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	var kb int64
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "MemTotal:"); ok {
			fmt.Sscanf(strings.TrimSpace(v), "%d", &kb)
		}
	}
	return (kb + 1<<19) >> 20
}
