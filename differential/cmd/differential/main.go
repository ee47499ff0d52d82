// Command differential runs switchyard and upstream kube-proxy against the same generated
// Services and EndpointSlices, on the same kernel, probes every entry point of every
// Service the same way under each, and reports where the outcomes differ (see
// differential.Run). It exits 1 when they differ anywhere that docs/node-contract.md
// does not list as deliberate (differential.Deliberates).
//
//	differential [-seed S] [-count N] [-modes iptables-nft,iptables-legacy,ipvs] [-parallel P] [-out DIR]
//
// IPVS mode runs each proxy in a kernel lab guest of its own, which runs
// `differential guest` (differential.Guest).
package main

import (
	"cmp"
	"context"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/switchyard/switchyard/benchmarks"
	"github.com/switchyard/switchyard/differential"
	"github.com/switchyard/switchyard/internal/lab"
	"github.com/switchyard/switchyard/internal/testenv"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "differential:", err)
		os.Exit(2)
	}
}

func run() error {
	if len(os.Args) > 1 && os.Args[1] == "guest" {
		return guest(os.Args[2:])
	}
	seed := flag.Int64("seed", 1, "generator seed: the same seed generates the same scenarios")
	count := flag.Int("count", 40, "scenarios to generate")
	modes := flag.String("modes", strings.Join(allModes, ","), "proxy modes to compare, comma-separated (ipvs runs in the kernel lab)")
	out := flag.String("out", "", "directory for report.md and report.json (none: print the summary only)")
	binDir := flag.String("bin", "bin", "directory holding switchyard, labagent and differential (make build)")
	kernelLab := flag.String("kernel-lab", "hack/kernel-lab/run.sh", "the kernel lab runner, for ipvs")
	tries := flag.Int("tries", 0, "requests per probe (0: 40 natively, 12 in the kernel lab, where IPVS's round robin hands out endpoints in turn)")
	parallel := flag.Int("parallel", 0, "probes at once (0: 4 natively, 12 in the kernel lab)")
	keep := flag.String("scratch", "", "directory to keep the labs' logs in (each proxy's log, its rules); none: a temporary one, removed at the end")
	flag.Parse()
	for _, m := range strings.Split(*modes, ",") {
		if !slices.Contains(allModes, m) {
			return fmt.Errorf("invalid mode %q in -modes: valid modes are %s", m, strings.Join(allModes, ", "))
		}
	}
	bins := map[string]string{}
	for _, name := range []string{benchmarks.ProxySwitchyard, "labagent", "differential"} {
		path, err := filepath.Abs(filepath.Join(*binDir, name))
		if err != nil {
			return err
		}
		if _, err := os.Stat(path); err != nil {
			return fmt.Errorf("%s not found in %s: run make build", name, *binDir)
		}
		bins[name] = path
	}
	kubeProxy, err := testenv.Binary("kube-proxy")
	if err != nil {
		return err
	}
	bins[benchmarks.ProxyKubeProxy] = kubeProxy
	runner, err := filepath.Abs(*kernelLab)
	if err != nil {
		return err
	}

	scratch := *keep
	if scratch == "" {
		if scratch, err = os.MkdirTemp("", "swyd-differential-"); err != nil {
			return err
		}
		defer os.RemoveAll(scratch)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	report := &differential.Report{Seed: *seed, Commit: commit()}
	diverged := 0
	for _, mode := range strings.Split(*modes, ",") {
		scenarios, err := differential.Generate(differential.Options{
			Seed: *seed, Count: *count, Pods: differential.PodRefs(), ExternalIPs: netip.MustParsePrefix(lab.ExternalRange),
			NodeIP: netip.MustParseAddr(lab.NodeIP), ClientIP: netip.MustParseAddr(lab.ClientIP),
			Protocols: differential.ProtocolsFor(mode), Zone: differential.Zone,
		})
		if err != nil {
			return err
		}
		timeout, par, n := time.Second, 4, 40
		if mode == benchmarks.ModeIPVS {
			// The kernel lab is slow (see RunOptions.ProbeTimeout and Parallel); IPVS balances
			// round robin (see RunOptions.Tries).
			timeout, par, n = 5*time.Second, 12, 12
		}
		if *parallel > 0 {
			par = *parallel
		}
		m, err := differential.Run(ctx, differential.RunOptions{Mode: mode, Scenarios: scenarios, Binaries: bins, Dir: scratch, KernelLab: runner,
			Tries: cmp.Or(*tries, n), ProbeTimeout: timeout, Parallel: par, Logf: logf})
		if err != nil {
			return err
		}
		report.Modes = append(report.Modes, *m)
		diverged += m.Unexplained()
		fmt.Printf("%s: %d probes, %d divergences, %d of them deliberate\n", mode, m.Probes, len(m.Divergences), len(m.Divergences)-m.Unexplained())
	}
	if *out != "" {
		if err := report.Write(*out); err != nil {
			return err
		}
	}
	if diverged > 0 {
		fmt.Fprintf(os.Stderr, "differential: %d probes differ between switchyard and kube-proxy where no deliberate difference explains it (see the report)\n", diverged)
		os.Exit(1)
	}
	return nil
}

var allModes = []string{benchmarks.ModeIPTablesNft, benchmarks.ModeIPTablesLegacy, benchmarks.ModeIPVS}

func logf(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) }

// guest runs one proxy in IPVS mode inside the kernel lab's guest (differential.Guest).
func guest(args []string) error {
	fs := flag.NewFlagSet("guest", flag.ContinueOnError)
	kubeconfig := fs.String("kubeconfig", "", "the host apiserver's kubeconfig")
	proxy := fs.String("proxy", "", "switchyard or kube-proxy")
	switchyard := fs.String("bin-switchyard", "", "switchyard binary")
	kubeProxy := fs.String("bin-kube-proxy", "", "kube-proxy binary")
	agent := fs.String("agent", "", "labagent binary")
	dir := fs.String("dir", "", "scratch directory")
	tries := fs.Int("tries", 40, "requests per probe")
	timeout := fs.Duration("timeout", time.Second, "how long a request waits for its answer")
	parallel := fs.Int("parallel", 4, "probes at once")
	out := fs.String("out", "", "file to write the run to")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	bins := map[string]string{benchmarks.ProxySwitchyard: *switchyard, benchmarks.ProxyKubeProxy: *kubeProxy, "labagent": *agent}
	return differential.Guest(ctx, differential.RunOptions{Mode: benchmarks.ModeIPVS, Binaries: bins, Dir: *dir, Tries: *tries, ProbeTimeout: *timeout, Parallel: *parallel, Logf: logf},
		*kubeconfig, *proxy, *out)
}

// commit names the code the report is about.
func commit() string {
	out, err := exec.Command("git", "describe", "--always", "--dirty").Output()
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(out))
}
