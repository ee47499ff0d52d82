// Command differential runs switchyard and upstream kube-proxy against the same generated
// Services and EndpointSlices, on the same kernel, probes every entry point of every
// Service the same way under each, and reports where the outcomes differ (see
// differential.Run). It exits 1 when they differ anywhere.
//
//	differential [-seed S] [-count N] [-modes iptables-nft,iptables-legacy] [-out DIR]
package main

import (
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

	v1 "k8s.io/api/core/v1"

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
	seed := flag.Int64("seed", 1, "generator seed: the same seed generates the same scenarios")
	count := flag.Int("count", 40, "scenarios to generate")
	modes := flag.String("modes", benchmarks.ModeIPTablesNft+","+benchmarks.ModeIPTablesLegacy, "proxy modes to compare, comma-separated")
	out := flag.String("out", "", "directory for report.md and report.json (none: print the summary only)")
	binDir := flag.String("bin", "bin", "directory holding switchyard and labagent (make build)")
	tries := flag.Int("tries", 40, "requests per probe")
	flag.Parse()
	valid := []string{benchmarks.ModeIPTablesNft, benchmarks.ModeIPTablesLegacy}
	for _, m := range strings.Split(*modes, ",") {
		if !slices.Contains(valid, m) {
			return fmt.Errorf("invalid mode %q in -modes: valid modes are %s", m, strings.Join(valid, ", "))
		}
	}
	bins := map[string]string{}
	for _, name := range []string{benchmarks.ProxySwitchyard, "labagent"} {
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

	scenarios, err := differential.Generate(differential.Options{
		Seed: *seed, Count: *count, Pods: differential.PodRefs(), ExternalIPs: netip.MustParsePrefix(lab.ExternalRange),
		NodeIP: netip.MustParseAddr(lab.NodeIP), ClientIP: netip.MustParseAddr(lab.ClientIP),
		// The kernel lab's SCTP comes with its IPVS runs.
		Protocols: []v1.Protocol{v1.ProtocolTCP, v1.ProtocolUDP}, Zone: differential.Zone,
	})
	if err != nil {
		return err
	}
	scratch, err := os.MkdirTemp("", "swyd-differential-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(scratch)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	report := &differential.Report{Seed: *seed, Commit: commit()}
	for _, sc := range scenarios {
		report.Scenarios = append(report.Scenarios, differential.ScenarioID{Name: sc.Name, Traits: sc.Traits})
	}
	diverged := 0
	for _, mode := range strings.Split(*modes, ",") {
		m, err := differential.Run(ctx, differential.RunOptions{Mode: mode, Scenarios: scenarios, Binaries: bins, Dir: scratch, Tries: *tries,
			Logf: func(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) }})
		if err != nil {
			return err
		}
		report.Modes = append(report.Modes, *m)
		diverged += len(m.Divergences)
		fmt.Printf("%s: %d probes, %d divergences\n", mode, m.Probes, len(m.Divergences))
	}
	if *out != "" {
		if err := report.Write(*out); err != nil {
			return err
		}
	}
	if diverged > 0 {
		fmt.Fprintf(os.Stderr, "differential: %d probes differ between switchyard and kube-proxy (see the report)\n", diverged)
		os.Exit(1)
	}
	return nil
}

// commit names the code the report is about.
func commit() string {
	out, err := exec.Command("git", "describe", "--always", "--dirty").Output()
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(out))
}
