// Command switchyard is a kube-proxy replacement: it watches Services and EndpointSlices
// and programs the node's kernel (iptables or IPVS) so Service traffic reaches endpoints.
package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/pflag"
	v1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/events"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/switchyard/switchyard/config"
	"github.com/switchyard/switchyard/conntrack"
	"github.com/switchyard/switchyard/iptables"
	"github.com/switchyard/switchyard/modes"
	"github.com/switchyard/switchyard/proxier"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "v0.1.0-dev"

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	if len(args) > 0 && args[0] == "explain" {
		return explain(args[1:], os.Stdout)
	}
	parsed, code := parseConfig(args, usage)
	if parsed == nil {
		return code
	}
	if parsed.Version {
		fmt.Println("switchyard", version)
		return 0
	}
	if !apply(parsed) {
		return 1
	}
	logger := klog.Background()
	if parsed.WriteConfigTo != "" {
		if err := parsed.WriteConfig(); err != nil {
			logger.Error(err, "Could not write the configuration")
			return 1
		}
		logger.Info("Wrote configuration", "file", parsed.WriteConfigTo)
		return 0
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := serve(ctx, parsed.Config, logger); err != nil {
		logger.Error(err, "switchyard failed")
		return 1
	}
	return 0
}

// usage is switchyard's --help.
const usage = `Usage:
  switchyard [flags]
  switchyard explain [flags] NAMESPACE/NAME

switchyard watches Services and EndpointSlices and programs this node's kernel (iptables
or IPVS) so that traffic to a Service reaches its endpoints, as kube-proxy does, from
kube-proxy's flags or KubeProxyConfiguration file (docs/configuration.md).

switchyard explain prints what this node should program for one Service next to what the
kernel holds (switchyard explain --help).

Flags:
`

// parseConfig parses the command line; when it returns nil, the process exits with the
// returned status (0 after --help, which prints help and the flags, 2 after a usage
// error, which it has printed).
func parseConfig(args []string, help string) (*config.Parsed, int) {
	parsed, err := config.Parse(args, modes.All.Names(), os.Stderr)
	var usageErr *config.UsageError
	switch {
	case errors.Is(err, pflag.ErrHelp):
		fmt.Print(help + config.FlagUsages(modes.All.Names()))
		return nil, 0
	case errors.As(err, &usageErr):
		fmt.Fprintf(os.Stderr, "switchyard: %v\nRun 'switchyard --help' for usage.\n", err)
		return nil, 2
	case err != nil:
		fmt.Fprintf(os.Stderr, "switchyard: %v\n", err)
		return nil, 2
	}
	return parsed, 0
}

// apply makes the configuration's logging and feature gates take effect, as kube-proxy
// does before it does anything else; false means the process must exit (1).
func apply(parsed *config.Parsed) bool {
	if err := parsed.Apply(); err != nil {
		fmt.Fprintf(os.Stderr, "switchyard: %v\n", err)
		return false
	}
	return true
}

func serve(ctx context.Context, cfg config.Config, logger klog.Logger) error {
	flavor, err := iptables.DetectFlavor(ctx)
	if err != nil {
		return err
	}
	if cfg.Cleanup {
		return cleanup(ctx, flavor, logger)
	}
	mode, err := modes.All.Lookup(cfg.Mode)
	if err != nil {
		return err
	}
	if cfg.InitOnly {
		return initNode(cfg, mode, flavor, logger)
	}
	logger.Info("Starting switchyard", "version", version, "mode", cfg.Mode, "iptablesFlavor", flavor, "node", cfg.NodeName)
	// stop ends serving early with an error: a server that failed under
	// --bind-address-hard-fail, or the --config file written.
	ctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	if cfg.ConfigFile != "" {
		if err := watchConfigFile(ctx, cfg.ConfigFile, stop); err != nil {
			return err
		}
	}
	setOOMScoreAdj(cfg, logger)
	// Before any backend is made: iptables mode reads nf_conntrack_tcp_be_liberal.
	if err := configureConntrack(cfg, logger); err != nil {
		return err
	}

	client, err := newClient(cfg)
	if err != nil {
		return err
	}

	// Events about Services and EndpointSlices with fields we had to skip go to the
	// events.k8s.io API, where `kubectl describe` shows them to the object's owner.
	eventBroadcaster := events.NewBroadcaster(&events.EventSinkImpl{Interface: client.EventsV1()})
	eventBroadcaster.StartRecordingToSink(ctx.Done())
	defer eventBroadcaster.Shutdown()
	recorder := eventBroadcaster.NewRecorder(scheme.Scheme, "switchyard")

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics := proxier.NewMetrics(reg)
	clk := clock.RealClock{}
	// One proxier per IP family, like kube-proxy: each programs its family's addresses of
	// every Service, and a dual-stack Service gets both.
	var proxiers []*proxier.Proxier
	var healths proxier.Healths
	stale := conntrack.New()
	for _, family := range families(flavor, logger) {
		backend, err := newBackend(ctx, cfg, family, flavor, modes.ForProxy, reg, logger)
		if err != nil {
			return err
		}
		canaryIPT, err := iptables.New(flavor, family == proxier.IPv6)
		if err != nil {
			return err
		}
		health := proxier.NewHealth(family, clk, 2*cfg.SyncPeriod)
		healths = append(healths, health)
		p := proxier.New(proxier.Options{
			Backend:        backend,
			Family:         family,
			NodeName:       cfg.NodeName,
			MinSyncPeriod:  cfg.MinSyncPeriod,
			SyncPeriod:     cfg.SyncPeriod,
			FullSyncPeriod: mode.FullSyncPeriod(cfg.SyncPeriod),
			Metrics:        metrics.For(family),
			Health:         health,
			// The health check ports answer with the health of every family, as
			// kube-proxy's do; healths is complete before any port opens (after the
			// first sync).
			ServiceHealth: proxier.NewServiceHealth(logger, family, cfg.NodeName, recorder, func() bool { return healths.Healthy() }),
			Conntrack:     stale,
			Clock:         clk,
			Logger:        logger.WithValues("ipFamily", family.String()),
			Events:        recorder,
		})
		proxiers = append(proxiers, p)
		go iptables.MonitorCanary(ctx, canaryIPT, canaryInterval, p.RequestFullSync, logger.WithValues("ipFamily", family.String()))
	}

	// The Node informer of Watch feeds it; until then /healthz fails, as kube-proxy's.
	eligibility := new(proxier.NodeEligibility)
	metricsMux := http.NewServeMux()
	metricsMux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	proxier.InstallServerHealthz(metricsMux)
	metricsMux.HandleFunc("/proxyMode", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, cfg.Mode) })
	if cfg.EnableProfiling {
		installProfiling(metricsMux)
	}
	// With --bind-address-hard-fail, a server that fails stops switchyard, after a Warning
	// Event on the Node with kube-proxy's reason and action.
	failWith := func(reason string) func(error) {
		if !cfg.BindAddressHardFail {
			return nil
		}
		node := &v1.ObjectReference{APIVersion: "v1", Kind: "Node", Name: cfg.NodeName}
		return func(err error) {
			recorder.Eventf(node, nil, v1.EventTypeWarning, reason, "StartKubeProxy", err.Error())
			stop(err)
		}
	}
	listen(ctx, "metrics", cfg.MetricsBindAddress, metricsMux, failWith("FailedToStartMetricServer"), logger)
	listen(ctx, "healthz", cfg.HealthzBindAddress, proxier.HealthHandler(clk, healths, eligibility, metrics), failWith("FailedToStartProxierHealthcheck"), logger)

	for _, p := range proxiers {
		go p.Run(ctx)
	}
	if err := proxier.Watch(ctx, client, cfg.ServiceProxyName, cfg.ConfigSyncPeriod, eligibility, proxiers...); err != nil {
		if ctx.Err() != nil {
			return stopped(ctx)
		}
		return err
	}
	<-ctx.Done()
	if err := stopped(ctx); err != nil {
		return err
	}
	// Rules stay in place on shutdown: traffic keeps flowing while switchyard restarts or
	// is upgraded, and the next instance adopts them.
	logger.Info("Shutting down; rules are left in place")
	return nil
}

// masqueradeMark is the fwmark bit --iptables-masquerade-bit selects, as iptables spells it.
func masqueradeMark(cfg config.Config) string {
	return fmt.Sprintf("%#08x", uint32(1)<<cfg.MasqueradeBit)
}

// newClient connects to the apiserver given by --master/--kubeconfig, or in-cluster.
func newClient(cfg config.Config) (kubernetes.Interface, error) {
	restConfig, err := clientConfig(cfg)
	if err != nil {
		return nil, err
	}
	client, err := kubernetes.NewForConfig(restConfig)
	if err != nil {
		return nil, fmt.Errorf("creating Kubernetes client: %w", err)
	}
	return client, nil
}

// clientConfig is the apiserver client's configuration: --master/--kubeconfig (or
// in-cluster), with the content types and rate limits of kube-proxy's clientConnection
// replacing the kubeconfig's, as kube-proxy's createClient does.
func clientConfig(cfg config.Config) (*rest.Config, error) {
	restConfig, err := clientcmd.BuildConfigFromFlags(cfg.Master, cfg.Kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("building client configuration from --master/--kubeconfig: %w", err)
	}
	restConfig.UserAgent = "switchyard/" + version
	restConfig.ContentType = cfg.KubeAPIContentType
	restConfig.AcceptContentTypes = cfg.KubeAPIAcceptContentTypes
	restConfig.QPS = cfg.KubeAPIQPS
	restConfig.Burst = int(cfg.KubeAPIBurst)
	return restConfig, nil
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

// newBackend makes the backend of the configured proxy mode for one IP family.
func newBackend(ctx context.Context, cfg config.Config, family proxier.Family, flavor iptables.Flavor, use modes.Use, reg prometheus.Registerer, logger klog.Logger) (proxier.Backend, error) {
	ipv4 := family == proxier.IPv4
	ipt, err := iptables.New(flavor, !ipv4)
	if err != nil {
		return nil, err
	}
	resolve := proxier.ResolveConfig{MasqueradeAll: cfg.MasqueradeAll}
	for _, c := range cfg.ClusterCIDRs {
		if c.Addr().Is4() == ipv4 {
			resolve.ClusterCIDR = c
		}
	}
	if !resolve.ClusterCIDR.IsValid() && !cfg.MasqueradeAll {
		logger.Info("No --cluster-cidr for this IP family and no --masquerade-all: traffic to cluster IPs is not masqueraded", "ipFamily", family.String())
	}
	backend, err := modes.All.NewBackend(ctx, cfg, modes.Env{
		Family:         family,
		IPTables:       ipt,
		Resolve:        resolve,
		MasqueradeMark: masqueradeMark(cfg),
		Use:            use,
		Registerer:     reg,
		Logger:         logger,
	})
	if err != nil {
		return nil, fmt.Errorf("setting up %s mode for %s: %w", cfg.Mode, family.String(), err)
	}
	return backend, nil
}

// canaryInterval is how often the canary chain is checked, as kube-proxy checks its own.
const canaryInterval = 5 * time.Second

// initNode makes the node settings that take full root privileges, like kube-proxy's
// --init-only: the DaemonSet runs it in a privileged init container, so that the proxy
// itself runs with NET_ADMIN and NET_RAW only. A setting that fails stops it, as it would
// stop the proxy, and as kube-proxy's --init-only stops.
func initNode(cfg config.Config, mode modes.Mode, flavor iptables.Flavor, logger klog.Logger) error {
	if err := configureConntrack(cfg, logger); err != nil {
		return err
	}
	if mode.InitNode != nil {
		for _, family := range families(flavor, logger) {
			if err := mode.InitNode(cfg, family, logger); err != nil {
				return fmt.Errorf("preparing the node for %s mode (%s): %w", mode.Name, family.String(), err)
			}
		}
	}
	logger.Info("Node initialized", "mode", mode.Name)
	return nil
}

// cleanup removes what any proxy mode left on the node, in both IP families, so that it
// works whichever mode ran before: switchyard's iptables rules first, since they are the
// last users of what the modes left elsewhere (IPVS mode's ipsets).
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
	if err := iptables.Cleanup(ctx, ipt); err != nil {
		return err
	}
	if err := modes.All.RemoveLeftovers(); err != nil {
		return err
	}
	logger.Info("Removed everything switchyard owned on this node", "iptablesFlavor", ipt.Flavor())
	return nil
}

// serverError is a server's failure that stopped switchyard (--bind-address-hard-fail).
type serverError struct {
	server string
	err    error
}

func (e *serverError) Error() string { return fmt.Sprintf("%s server failed: %v", e.server, e.err) }
func (e *serverError) Unwrap() error { return e.err }

// stopped is the error that ended serving, or nil when a signal did.
func stopped(ctx context.Context) error {
	if err := context.Cause(ctx); !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// watchConfigFile stops switchyard when the --config file is written or renamed, as
// kube-proxy does, so that it is restarted with the new content; so does an error of the
// watch. Like kube-proxy's, the watch is on the file (through a symlink, on its target)
// and other events change nothing: a ConfigMap update, which swaps the symlink and
// removes the old file, goes unnoticed by both.
func watchConfigFile(ctx context.Context, path string, stop context.CancelCauseFunc) error {
	w, err := fsnotify.NewWatcher()
	if err == nil {
		if err = w.Add(path); err != nil {
			w.Close()
		}
	}
	if err != nil {
		return fmt.Errorf("watching --config %s: %w", path, err)
	}
	go func() {
		defer w.Close()
		for {
			select {
			case <-ctx.Done():
				return
			case e, ok := <-w.Events:
				if ok && (e.Has(fsnotify.Write) || e.Has(fsnotify.Rename)) {
					stop(fmt.Errorf("content of the configuration file %s (--config) was updated", path))
					return
				}
			case err, ok := <-w.Errors:
				if ok {
					stop(fmt.Errorf("watching --config %s: %w", path, err))
					return
				}
			}
		}
	}()
	return nil
}

// listen serves handler on addr until ctx ends. Like kube-proxy, a server that cannot bind
// or stops serving is logged and retried every 5s, rather than stopping the proxy:
// traffic matters more than metrics. With fail (--bind-address-hard-fail), it is given
// the error instead, and the server stays down.
func listen(ctx context.Context, name, addr string, handler http.Handler, fail func(error), logger klog.Logger) {
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
			if fail != nil {
				logger.Error(err, "Server failed", "server", name, "address", addr)
				fail(&serverError{server: name, err: err})
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

// setOOMScoreAdj sets the process's oom_score_adj, as kube-proxy does when it starts (not
// with --init-only). Like kube-proxy, a failure is only logged: inside a container it may
// be refused, which must not stop the proxy.
func setOOMScoreAdj(cfg config.Config, logger klog.Logger) {
	if err := os.WriteFile("/proc/self/oom_score_adj", []byte(strconv.Itoa(int(cfg.OOMScoreAdj))), 0); err != nil {
		logger.Info("Could not set oom_score_adj", "value", cfg.OOMScoreAdj, "err", err)
	}
}

// configureConntrack applies the conntrack settings to the node as kube-proxy does at
// startup and with --init-only: a failure stops either.
func configureConntrack(cfg config.Config, logger klog.Logger) error {
	if err := conntrack.Configure(conntrack.NewNode(), cfg.Conntrack, logger); err != nil {
		return fmt.Errorf("conntrack settings (--conntrack-*): %w", err)
	}
	return nil
}
