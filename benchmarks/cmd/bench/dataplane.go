package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/switchyard/switchyard/benchmarks"
	"github.com/switchyard/switchyard/internal/lab"
)

// dataplaneFlags are the flags the host's `dataplane` and the guest's `dataplane-node`
// share.
type dataplaneFlags struct {
	endpoints      int
	seed           int64
	proxies        string
	conns          int
	load           time.Duration
	warmup         time.Duration
	repeats        int
	rest           time.Duration
	churn          time.Duration
	churnRate      int
	startupTimeout time.Duration
}

func (d *dataplaneFlags) register(fs *flag.FlagSet) {
	fs.IntVar(&d.endpoints, "endpoints", 10, "endpoints of each other Service")
	fs.Int64Var(&d.seed, "seed", 1, "seed of the workload generator")
	fs.StringVar(&d.proxies, "proxies", "switchyard,kube-proxy", "proxies to run, comma-separated")
	fs.IntVar(&d.conns, "conns", 8, "concurrent connections of the load generator")
	fs.DurationVar(&d.load, "duration", 10*time.Second, "how long each load run is measured")
	fs.DurationVar(&d.warmup, "warmup", time.Second, "how long each load run sends before it is measured")
	fs.IntVar(&d.repeats, "repeats", 3, "load runs of each kind per proxy, mode and N")
	fs.DurationVar(&d.rest, "rest", 30*time.Second, "window of the resource use at rest")
	fs.DurationVar(&d.churn, "churn", 30*time.Second, "window of the resource use under churn")
	fs.IntVar(&d.churnRate, "churn-rate", 10, "EndpointSlice writes a second under churn")
	fs.DurationVar(&d.startupTimeout, "startup-timeout", 8*time.Minute, "how long a proxy may take to its first complete sync")
}

// limit bounds one proxy's data-plane run in a guest: its startup, the windows at rest
// and under churn, both kinds of load run d.repeats times, and the guest's own overhead.
func (d *dataplaneFlags) limit() time.Duration {
	return d.startupTimeout + d.rest + d.churn + time.Duration(2*d.repeats)*(d.load+d.warmup) + guestOverhead
}

func (d *dataplaneFlags) validate() ([]string, error) {
	if d.endpoints < 1 || d.conns < 1 || d.repeats < 1 || d.churnRate < 1 {
		return nil, errors.New("-endpoints, -conns, -repeats and -churn-rate must be at least 1")
	}
	if d.load <= 0 || d.warmup < 0 || d.rest <= 0 || d.churn <= 0 || d.startupTimeout <= 0 {
		return nil, errors.New("-duration, -rest, -churn and -startup-timeout must be positive, and -warmup not negative")
	}
	var proxies []string
	for _, p := range strings.Split(d.proxies, ",") {
		if p != benchmarks.ProxySwitchyard && p != benchmarks.ProxyKubeProxy {
			return nil, fmt.Errorf("invalid proxy %q in -proxies: valid proxies are %s, %s", p, benchmarks.ProxySwitchyard, benchmarks.ProxyKubeProxy)
		}
		proxies = append(proxies, p)
	}
	return proxies, nil
}

func (d *dataplaneFlags) args() []string {
	return []string{"-endpoints", fmt.Sprint(d.endpoints), "-seed", fmt.Sprint(d.seed), "-conns", fmt.Sprint(d.conns),
		"-duration", d.load.String(), "-warmup", d.warmup.String(), "-repeats", fmt.Sprint(d.repeats), "-rest", d.rest.String(),
		"-churn", d.churn.String(), "-churn-rate", fmt.Sprint(d.churnRate), "-startup-timeout", d.startupTimeout.String()}
}

func (d *dataplaneFlags) options(l *lab.Lab, bins map[string]string, scratch, kernel, mode string, n int, proxies []string) benchmarks.DataplaneOptions {
	return benchmarks.DataplaneOptions{
		Proxy: benchmarks.ProxyOptions{Kernel: kernel, Mode: mode, Services: n, Endpoints: d.endpoints, Proxies: proxies,
			Binaries: bins, Lab: l, Scratch: scratch, StartupTimeout: d.startupTimeout, Logf: logf},
		Agent: bins["labagent"], Conns: d.conns, Load: d.load, Warmup: d.warmup, Repeats: d.repeats,
		Rest: d.rest, Churn: d.churn, ChurnPer: d.churnRate,
		Workload: &benchmarks.Workload{Endpoints: d.endpoints, Seed: d.seed},
	}
}

// dataplaneLabPods: the target's two pods and the client.
const dataplaneLabPods = 3

// cmdDataplane runs the data-plane benchmark (see benchmarks/README.md): requests through
// a Service and the proxy's resource use, per mode, proxy and N, natively on the host
// and in the kernel lab. It writes dataplane.json, dataplane.md and the plots after each N.
func cmdDataplane(ctx context.Context, args []string) (err error) {
	fs := flag.NewFlagSet("dataplane", flag.ExitOnError)
	var d dataplaneFlags
	d.register(fs)
	services := fs.String("services", "0,1000,10000", "comma-separated numbers of other Services on the node (N), increasing")
	out := fs.String("out", "benchmarks/results", "directory for dataplane.json, dataplane.md and the plots")
	hostModes := fs.String("host-modes", "iptables-nft,iptables-legacy", "modes measured natively on the host, in network namespaces")
	labModes := fs.String("lab-modes", "ipvs,iptables-legacy", "modes measured in the kernel lab")
	binDir := fs.String("bin", "bin", "directory holding switchyard, labagent, bench and kube-proxy")
	kernelLab := fs.String("kernel-lab", "hack/kernel-lab/run.sh", "the kernel lab's runner")
	resume := fs.Bool("resume", false, "keep the runs of -out's dataplane.json (same settings and machine) at the N this run does not list, and measure the listed N")
	startupFrom := fs.String("startup-from", "", startupFromUsage)
	_ = fs.Parse(args)
	proxies, err := d.validate()
	if err != nil {
		return err
	}
	ns, err := parseServiceCounts(*services)
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
	bins, err := binaries(*binDir)
	if err != nil {
		return err
	}
	runner, err := filepath.Abs(*kernelLab)
	if err != nil {
		return err
	}
	p := &plan{budgets: benchmarks.NewBudgets(), w: &workloadFlags{endpoints: d.endpoints, startupTimeout: d.startupTimeout}}
	if *startupFrom != "" {
		if err := p.seedFrom(*startupFrom); err != nil {
			return err
		}
	}
	scratch, err := os.MkdirTemp("", "switchyard-dataplane")
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
	results := &benchmarks.DataplaneResults{Command: "bench dataplane " + strings.Join(args, " "), Machine: machine(),
		Config: benchmarks.DataplaneConfig{Services: ns, Endpoints: d.endpoints, Seed: d.seed, Conns: d.conns,
			LoadSeconds: d.load.Seconds(), WarmupSeconds: d.warmup.Seconds(), Repeats: d.repeats,
			RestSeconds: d.rest.Seconds(), ChurnPerSecond: d.churnRate, ChurnSeconds: d.churn.Seconds()}}

	if *resume {
		prev, err := benchmarks.ReadDataplane(filepath.Join(*out, benchmarks.DataplaneJSONFile))
		if err != nil {
			return fmt.Errorf("-resume: %w", err)
		}
		if err := results.Resume(prev); err != nil {
			return err
		}
	}
	var hostLab *lab.Lab
	var hostPopulated int
	if len(host) > 0 {
		if hostLab, err = lab.Start(ctx, lab.Options{Dir: filepath.Join(scratch, "host-lab"), Pods: dataplaneLabPods, Agent: bins["labagent"]}); err != nil {
			return err
		}
		defer closeInto(hostLab, &err)
	}
	var guest *guestProxyLab
	if len(inLab) > 0 {
		if guest, err = startGuestProxyLab(ctx, bins, runner, scratch, &workloadFlags{endpoints: d.endpoints, seed: d.seed}); err != nil {
			return err
		}
		defer closeInto(guest, &err)
	}
	workload := &benchmarks.Workload{Endpoints: d.endpoints, Seed: d.seed}
	for _, n := range ns {
		if hostLab != nil {
			logf("host: populating the apiserver to %d Services", n)
			if err := benchmarks.Populate(ctx, hostLab.Client, workload, hostPopulated, n); err != nil {
				return err
			}
			hostPopulated = n
			for _, mode := range host {
				toRun, skipped := p.dataplaneProxies("host", mode, n, proxies)
				results.Runs = append(results.Runs, skipped...)
				if len(toRun) == 0 {
					continue
				}
				runs, err := benchmarks.RunDataplane(ctx, d.options(hostLab, bins, scratch, "host", mode, n, toRun))
				if err != nil {
					return err
				}
				p.recordDataplane(runs)
				results.Runs = append(results.Runs, runs...)
			}
		}
		if guest != nil {
			logf("kernel lab: populating the apiserver to %d Services", n)
			if err := benchmarks.Populate(ctx, guest.client, guest.workload, guest.populated, n); err != nil {
				return err
			}
			guest.populated = n
			for _, mode := range inLab {
				toRun, skipped := p.dataplaneProxies("lab", mode, n, proxies)
				results.Runs = append(results.Runs, skipped...)
				// One guest per proxy, for the reason guestProxyLab.run gives.
				for _, proxy := range toRun {
					runs, err := guestDataplane(ctx, guest, &d, mode, proxy, n)
					if err != nil {
						return err
					}
					p.recordDataplane(runs)
					results.Runs = append(results.Runs, runs...)
				}
			}
		}
		results.Generated = time.Now().UTC().Format(time.RFC3339)
		if err := benchmarks.WriteDataplane(results, *out); err != nil {
			return err
		}
		logf("data-plane results up to %d other Services written to %s", n, *out)
	}
	table, err := os.ReadFile(filepath.Join(*out, benchmarks.DataplaneMarkdownFile))
	if err != nil {
		return err
	}
	fmt.Print(string(table))
	return nil
}

// parseServiceCounts parses -services for the data plane, where 0 (the target alone) is
// a valid N.
func parseServiceCounts(list string) ([]int, error) {
	var ns []int
	for _, f := range strings.Split(list, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 0 || n > benchmarks.MaxServices {
			return nil, fmt.Errorf("invalid value %q in -services: want numbers of Services from 0 to %d", f, benchmarks.MaxServices)
		}
		if len(ns) > 0 && n <= ns[len(ns)-1] {
			return nil, fmt.Errorf("invalid -services %q: numbers must increase", list)
		}
		ns = append(ns, n)
	}
	return ns, nil
}

// dataplaneProxies splits proxies into those to run in mode at n and not-run records for
// the rest (see plan.proxies).
func (p *plan) dataplaneProxies(kernel, mode string, n int, proxies []string) (toRun []string, skipped []benchmarks.DataplaneRun) {
	for _, proxy := range proxies {
		if reason := p.skipProxy(proxy, kernel, mode, n); reason != "" {
			logf("%s %s N=%d (%s): %s", proxy, mode, n, kernel, reason)
			skipped = append(skipped, benchmarks.DataplaneRun{Proxy: proxy, Mode: mode, Kernel: kernel, Services: n, Incomplete: reason})
			continue
		}
		toRun = append(toRun, proxy)
	}
	return toRun, skipped
}

func (p *plan) recordDataplane(runs []benchmarks.DataplaneRun) {
	for _, r := range runs {
		// A data-plane run is incomplete only when its first sync was.
		p.recordStartup(proxySeries(r.Proxy, r.Mode, r.Kernel), r.Services, r.StartupSeconds, r.Incomplete, true)
	}
}

// guestDataplane boots a guest that runs `bench dataplane-node` for one proxy.
func guestDataplane(ctx context.Context, g *guestProxyLab, d *dataplaneFlags, mode, proxy string, n int) ([]benchmarks.DataplaneRun, error) {
	name := fmt.Sprintf("dataplane-%s-%s-%d", proxy, mode, n)
	file := filepath.Join(g.scratch, name+".json")
	args := append([]string{g.bins["bench"], "dataplane-node", "-kubeconfig", g.link.Kubeconfig, "-mode", mode, "-proxies", proxy,
		"-n", fmt.Sprint(n), "-bin-switchyard", g.bins["switchyard"], "-bin-kube-proxy", g.bins[benchmarks.ProxyKubeProxy],
		"-agent", g.bins["labagent"], "-scratch", filepath.Join(g.scratch, "guest-"+name), "-out", file}, d.args()...)
	reason, err := g.runBounded(ctx, d.limit(), args)
	if err != nil {
		return nil, fmt.Errorf("%s in %s mode in the kernel lab with %d other Services: %w", proxy, mode, n, err)
	}
	if reason != "" {
		logf("%s %s N=%d (lab): %s", proxy, mode, n, reason)
		return []benchmarks.DataplaneRun{{Proxy: proxy, Mode: mode, Kernel: "lab", Services: n, Incomplete: reason}}, nil
	}
	var runs []benchmarks.DataplaneRun
	return runs, readJSON(file, &runs)
}

// cmdDataplaneNode runs inside the kernel lab's guest: the guest is the node, and the
// apiserver (already holding the workload) is on the host.
func cmdDataplaneNode(ctx context.Context, args []string) (err error) {
	fs := flag.NewFlagSet("dataplane-node", flag.ExitOnError)
	var d dataplaneFlags
	d.register(fs)
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig of the apiserver on the host")
	mode := fs.String("mode", "", "the mode to measure")
	n := fs.Int("n", 0, "number of other Services the apiserver holds")
	switchyard := fs.String("bin-switchyard", "", "switchyard binary")
	kubeProxy := fs.String("bin-kube-proxy", "", "kube-proxy binary")
	agent := fs.String("agent", "", "labagent binary")
	scratch := fs.String("scratch", "", "scratch directory")
	out := fs.String("out", "", "JSON file for the results")
	_ = fs.Parse(args)
	proxies, err := d.validate()
	if err != nil {
		return err
	}
	if _, err := modes(*mode); err != nil || *mode == "" {
		return fmt.Errorf("invalid -mode %q: valid modes are ipvs, iptables-legacy, iptables-nft", *mode)
	}
	l, err := lab.Start(ctx, lab.Options{Dir: *scratch, Pods: dataplaneLabPods, Agent: *agent, Kubeconfig: *kubeconfig})
	if err != nil {
		return err
	}
	defer closeInto(l, &err)
	bins := map[string]string{benchmarks.ProxySwitchyard: *switchyard, benchmarks.ProxyKubeProxy: *kubeProxy, "labagent": *agent}
	runs, err := benchmarks.RunDataplane(ctx, d.options(l, bins, *scratch, "lab", *mode, *n, proxies))
	if err != nil {
		return err
	}
	return benchmarks.WriteJSON(*out, runs)
}
