// Command switchyard is a kube-proxy replacement: it watches Services and EndpointSlices
// and programs the node's kernel (iptables or IPVS) so Service traffic reaches endpoints.
package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/pflag"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/switchyard/switchyard/config"
	"github.com/switchyard/switchyard/conntrack"
	"github.com/switchyard/switchyard/dummy"
	"github.com/switchyard/switchyard/iptables"
	"github.com/switchyard/switchyard/ipvs"
	"github.com/switchyard/switchyard/proxier"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "v0.1.0-dev"

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	parsed, err := config.Parse(args, os.Stderr)
	var usage *config.UsageError
	switch {
	case errors.Is(err, pflag.ErrHelp):
		return 0
	case errors.As(err, &usage):
		fmt.Fprintf(os.Stderr, "switchyard: %v\nRun 'switchyard --help' for usage.\n", err)
		return 2
	case err != nil:
		fmt.Fprintf(os.Stderr, "switchyard: %v\n", err)
		return 2
	}
	if parsed.Version {
		fmt.Println("switchyard", version)
		return 0
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	logger := klog.Background()
	if err := serve(ctx, parsed.Config, logger); err != nil {
		logger.Error(err, "switchyard failed")
		return 1
	}
	return 0
}

func serve(ctx context.Context, cfg config.Config, logger klog.Logger) error {
	flavor, err := iptables.DetectFlavor(ctx)
	if err != nil {
		return err
	}
	if cfg.Cleanup {
		return cleanup(ctx, flavor, logger)
	}
	logger.Info("Starting switchyard", "version", version, "mode", cfg.Mode, "iptablesFlavor", flavor, "node", cfg.NodeName)
	tuneNode(cfg, logger)

	restConfig, err := clientcmd.BuildConfigFromFlags(cfg.Master, cfg.Kubeconfig)
	if err != nil {
		return fmt.Errorf("building client configuration from --master/--kubeconfig: %w", err)
	}
	restConfig.UserAgent = "switchyard/" + version
	client, err := kubernetes.NewForConfig(restConfig)
	if err != nil {
		return fmt.Errorf("creating Kubernetes client: %w", err)
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics := proxier.NewMetrics(reg, cfg.Mode)
	clk := clock.RealClock{}
	serviceHealth := proxier.NewServiceHealth(logger)
	stale := conntrack.New()
	mark := fmt.Sprintf("%#08x", uint32(1)<<cfg.MasqueradeBit)

	// One proxier per IP family, like kube-proxy: each programs its family's addresses of
	// every Service, and a dual-stack Service gets both.
	var proxiers []*proxier.Proxier
	var healths proxier.Healths
	for _, family := range families(flavor, logger) {
		backend, err := newBackend(ctx, cfg, family, flavor, mark, reg, logger)
		if err != nil {
			return err
		}
		health := proxier.NewHealth(clk, 2*cfg.SyncPeriod)
		healths = append(healths, health)
		proxiers = append(proxiers, proxier.New(proxier.Options{
			Backend:       backend,
			Family:        family,
			NodeName:      cfg.NodeName,
			MinSyncPeriod: cfg.MinSyncPeriod,
			SyncPeriod:    cfg.SyncPeriod,
			Metrics:       metrics,
			Health:        health,
			ServiceHealth: serviceHealth,
			Conntrack:     stale,
			Clock:         clk,
			Logger:        logger.WithValues("ipFamily", familyName(family)),
		}))
	}

	metricsMux := http.NewServeMux()
	metricsMux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	metricsMux.Handle("/healthz", healths)
	metricsMux.HandleFunc("/proxyMode", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, cfg.Mode) })
	healthMux := http.NewServeMux()
	healthMux.Handle("/healthz", healths)
	healthMux.Handle("/livez", healths)
	listen(ctx, "metrics", cfg.MetricsBindAddress, metricsMux, logger)
	listen(ctx, "healthz", cfg.HealthzBindAddress, healthMux, logger)

	for _, p := range proxiers {
		go p.Run(ctx)
	}
	if err := proxier.Watch(ctx, client, cfg.ServiceProxyName, cfg.ConfigSyncPeriod, proxiers...); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	<-ctx.Done()
	// Rules stay in place on shutdown: traffic keeps flowing while switchyard restarts or
	// is upgraded, and the next instance adopts them.
	logger.Info("Shutting down; rules are left in place")
	return nil
}

// families are the IP families this node gets a proxier for: IPv4 always, and IPv6 when
// the node has IPv6 and ip6tables works.
func families(flavor iptables.Flavor, logger klog.Logger) []proxier.Family {
	out := []proxier.Family{proxier.IPv4}
	if _, err := os.Stat("/proc/net/if_inet6"); err != nil {
		return out
	}
	ip6t, err := iptables.New(flavor, true)
	if err == nil {
		// The binaries can exist while the kernel cannot load the IPv6 tables; reading
		// them tells.
		_, err = ip6t.Save(context.Background(), iptables.TableNAT)
	}
	if err != nil {
		logger.Info("ip6tables is not usable: the IPv6 addresses of Services are not programmed", "err", err)
		return out
	}
	return append(out, proxier.IPv6)
}

func familyName(f proxier.Family) string {
	if f == proxier.IPv6 {
		return "IPv6"
	}
	return "IPv4"
}

// newBackend makes the backend of the proxy mode for one IP family.
func newBackend(ctx context.Context, cfg config.Config, family proxier.Family, flavor iptables.Flavor, mark string, reg prometheus.Registerer, logger klog.Logger) (proxier.Backend, error) {
	ipv4 := family == proxier.IPv4
	ipt, err := iptables.New(flavor, !ipv4)
	if err != nil {
		return nil, err
	}
	var clusterCIDR netip.Prefix
	for _, c := range cfg.ClusterCIDRs {
		if c.Addr().Is4() == ipv4 {
			clusterCIDR = c
		}
	}
	if !clusterCIDR.IsValid() && !cfg.MasqueradeAll {
		logger.Info("No --cluster-cidr for this IP family and no --masquerade-all: traffic to cluster IPs is not masqueraded", "ipFamily", familyName(family))
	}
	if cfg.Mode == config.ModeIPVS {
		b, err := newIPVSBackend(cfg, !ipv4, ipt, clusterCIDR, mark, reg, logger)
		if err != nil {
			return nil, err
		}
		go b.RunDrainer(ctx, drainInterval)
		return b, nil
	}
	return iptables.NewBackend(ipt, iptables.RenderConfig{
		IPv6:              !ipv4,
		ClusterCIDR:       clusterCIDR,
		MasqueradeAll:     cfg.MasqueradeAll,
		MasqueradeMark:    mark,
		NodeName:          cfg.NodeName,
		NodePortAddresses: cfg.NodePortPrefixes(ipv4),
	}, reg, logger), nil
}

// drainInterval is how often IPVS mode checks whether removed real servers have drained.
const drainInterval = 5 * time.Second

// terminationGrace bounds how long a removed IPVS real server keeps its connections.
const terminationGrace = 2 * time.Minute

func newIPVSBackend(cfg config.Config, ipv6 bool, ipt iptables.Interface, clusterCIDR netip.Prefix, mark string, reg prometheus.Registerer, logger klog.Logger) (*ipvs.Backend, error) {
	// Opening IPVS loads the ip_vs module when it can; the IPVS sysctls exist only after.
	handle, err := ipvs.New()
	if err != nil {
		return nil, err
	}
	if err := ipvs.CheckScheduler(cfg.IPVSScheduler); err != nil {
		// The kernel may still load it on first use; if it cannot, adding virtual
		// servers fails and says so on every sync.
		logger.Error(err, "IPVS scheduler may be unavailable")
	}
	if err := ipvs.PrepareNode(cfg.IPVSStrictARP, ipv6); err != nil {
		// Like kube-proxy: a sysctl that cannot be set (read-only in some containers) is
		// worth a loud log line, not a node without Services.
		logger.Error(err, "Some IPVS sysctls could not be set")
	}
	dev, err := dummy.Ensure(dummy.DefaultName)
	if err != nil {
		return nil, err
	}
	return ipvs.NewBackend(handle, ipt, dev, ipvs.Config{
		Scheduler:         cfg.IPVSScheduler,
		ClusterCIDR:       clusterCIDR,
		MasqueradeAll:     cfg.MasqueradeAll,
		MasqueradeMark:    mark,
		TerminationGrace:  terminationGrace,
		NodePortAddresses: cfg.NodePortPrefixes(!ipv6),
		IPv6:              ipv6,
	}, reg, logger), nil
}

// cleanup removes what either proxy mode left on the node, in both IP families, so that
// it works whichever mode ran before. IPVS state is only looked at where the kernel has IPVS.
func cleanup(ctx context.Context, flavor iptables.Flavor, logger klog.Logger) error {
	if ip6t, err := iptables.New(flavor, true); err == nil {
		if err := iptables.Cleanup(ctx, ip6t); err != nil {
			return err
		}
	}
	ipt, err := iptables.New(flavor, false)
	if err != nil {
		return err
	}
	if _, err := os.Stat("/proc/net/ip_vs"); err == nil {
		handle, err := ipvs.New()
		if err != nil {
			return err
		}
		if err := ipvs.Cleanup(ctx, handle, ipt, dummy.DefaultName); err != nil {
			return err
		}
	} else if err := iptables.Cleanup(ctx, ipt); err != nil {
		return err
	}
	logger.Info("Removed everything switchyard owned on this node", "iptablesFlavor", ipt.Flavor())
	return nil
}

// listen serves handler on addr until ctx ends. Like kube-proxy, a server that cannot bind
// is logged and retried rather than stopping the proxy: traffic matters more than metrics.
func listen(ctx context.Context, name, addr string, handler http.Handler, logger klog.Logger) {
	if addr == "" {
		return
	}
	srv := &http.Server{Addr: addr, Handler: handler, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	go func() {
		for ctx.Err() == nil {
			ln, err := net.Listen("tcp", addr)
			if err == nil {
				logger.Info("Serving", "server", name, "address", ln.Addr().String())
				err = srv.Serve(ln)
			}
			if ctx.Err() != nil || errors.Is(err, http.ErrServerClosed) {
				return
			}
			logger.Error(err, "Server failed; retrying in 5s", "server", name, "address", addr)
			select {
			case <-ctx.Done():
			case <-time.After(5 * time.Second):
			}
		}
	}()
}

// tuneNode applies the process and kernel settings kube-proxy applies. Each is best
// effort: inside a container or a network namespace some are read-only, which must not
// stop the proxy.
func tuneNode(cfg config.Config, logger klog.Logger) {
	if err := os.WriteFile("/proc/self/oom_score_adj", []byte(strconv.Itoa(int(cfg.OOMScoreAdj))), 0); err != nil {
		logger.Info("Could not set oom_score_adj", "value", cfg.OOMScoreAdj, "err", err)
	}
	if cfg.ConntrackMaxPerCore == 0 {
		return // 0 means: leave the conntrack table size alone
	}
	want := max(int(cfg.ConntrackMaxPerCore)*runtime.NumCPU(), int(cfg.ConntrackMin))
	const path = "/proc/sys/net/netfilter/nf_conntrack_max"
	cur, err := os.ReadFile(path)
	if err != nil {
		logger.Info("Could not read nf_conntrack_max", "err", err)
		return
	}
	if n, err := strconv.Atoi(strings.TrimSpace(string(cur))); err == nil && n >= want {
		return // never lower a limit someone raised
	}
	if err := os.WriteFile(path, []byte(strconv.Itoa(want)), 0); err != nil {
		logger.Info("Could not raise nf_conntrack_max", "value", want, "err", err)
	}
}
