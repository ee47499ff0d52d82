// Package config turns switchyard's command line and its optional KubeProxyConfiguration
// file into one validated Config. Flags keep kube-proxy's names and meanings so an
// operator's existing DaemonSet arguments work unchanged; like kube-proxy, values from the
// file are the base and flags given explicitly override them.
package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"
	kpv1alpha1 "k8s.io/kube-proxy/config/v1alpha1"
	"sigs.k8s.io/yaml"

	"github.com/switchyard/switchyard/conntrack"
	"github.com/switchyard/switchyard/internal/kubeaddr"
)

// IPVSSchedulers are the IPVS schedulers of Linux 6.1 (net/netfilter/ipvs/ip_vs_*.c);
// whether the running kernel has the chosen one is checked at startup.
var IPVSSchedulers = []string{"rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh", "twos"}

// Config is the resolved configuration switchyard runs with.
type Config struct {
	Mode       string
	Kubeconfig string
	Master     string
	// KubeAPIContentType, KubeAPIAcceptContentTypes, KubeAPIQPS and KubeAPIBurst are
	// kube-proxy's clientConnection: they replace the kubeconfig's in the apiserver
	// client's rest.Config (0 QPS or burst are client-go's defaults, a negative QPS turns
	// rate limiting off).
	KubeAPIContentType        string
	KubeAPIAcceptContentTypes string
	KubeAPIQPS                float32
	KubeAPIBurst              int32
	NodeName                  string
	ClusterCIDRs              []netip.Prefix
	MasqueradeAll             bool
	MasqueradeBit             int32
	SyncPeriod                time.Duration
	MinSyncPeriod             time.Duration
	ConfigSyncPeriod          time.Duration
	// MetricsBindAddress and HealthzBindAddress are host:port; empty disables the server.
	MetricsBindAddress string
	HealthzBindAddress string
	ServiceProxyName   string
	// Conntrack is kube-proxy's conntrack section (--conntrack-*), which
	// conntrack.Configure applies at startup.
	Conntrack         conntrack.Settings
	OOMScoreAdj       int32
	NodePortAddresses []string
	// IPTablesLocalhostNodePorts is kube-proxy's iptables.localhostNodePorts: in
	// iptables mode, NodePorts also answer on 127.0.0.1 when the IPv4 node-port
	// addresses include loopback (see LocalhostNodePorts).
	IPTablesLocalhostNodePorts bool
	IPVSScheduler              string
	IPVSStrictARP              bool
	// IPVSTCPTimeout, IPVSTCPFinTimeout and IPVSUDPTimeout are the IPVS connection
	// timeouts IPVS mode sets at startup (ipvsadm --set); 0 leaves one as it is.
	IPVSTCPTimeout, IPVSTCPFinTimeout, IPVSUDPTimeout time.Duration
	// IPVSExcludeCIDRs are kube-proxy's ipvs.excludeCIDRs: IPVS mode never removes a
	// virtual server on an address in them.
	IPVSExcludeCIDRs []netip.Prefix
	// Cleanup asks to remove everything switchyard owns on the node and exit.
	Cleanup bool
	// InitOnly asks to make the node settings that need full privileges and exit.
	InitOnly bool
}

// Defaults are kube-proxy's defaults for the same settings.
func Defaults() Config {
	return Config{
		Mode:               "iptables",
		KubeAPIContentType: "application/vnd.kubernetes.protobuf",
		KubeAPIQPS:         5,
		KubeAPIBurst:       10,
		MasqueradeBit:      14,
		SyncPeriod:         30 * time.Second,
		MinSyncPeriod:      time.Second,
		ConfigSyncPeriod:   15 * time.Minute,
		MetricsBindAddress: "127.0.0.1:10249",
		HealthzBindAddress: "0.0.0.0:10256",
		Conntrack: conntrack.Settings{
			MaxPerCore: 32768,
			Min:        131072,
			// kube-proxy sets these two by default (its v1alpha1 defaults.go), and leaves
			// the UDP timeouts and liberal mode alone.
			TCPEstablishedTimeout: 24 * time.Hour,
			TCPCloseWaitTimeout:   time.Hour,
		},
		OOMScoreAdj: -999,
		// As kube-proxy defaults iptables.localhostNodePorts (its v1alpha1 defaults.go).
		IPTablesLocalhostNodePorts: true,
		IPVSScheduler:              "rr",
	}
}

// UsageError is a problem with the command line or configuration file: the process
// should print it and exit with status 2.
type UsageError struct{ Errs []error }

func (e *UsageError) Error() string {
	msgs := make([]string, len(e.Errs))
	for i, err := range e.Errs {
		msgs[i] = err.Error()
	}
	return strings.Join(msgs, "\n")
}

// InvalidValue reports one bad setting: where it came from, what it was, what is allowed.
type InvalidValue struct {
	Where   string // "--proxy-mode" or "mode (in /etc/switchyard/config.yaml)"
	Value   string
	Allowed string
}

func (e *InvalidValue) Error() string {
	return fmt.Sprintf("invalid value %q for %s: %s", e.Value, e.Where, e.Allowed)
}

// Parsed is the outcome of parsing a command line.
type Parsed struct {
	Config Config
	// Version is set when --version was given: print it and exit.
	Version bool
}

// Parse reads the command line (without the program name) and, when --config names one,
// the configuration file. modes are the names of the proxy modes, in the order help and
// errors list them; they come from the registry of modes (package modes), which builds
// backends from a Config and so cannot be imported here. All problems found are returned
// together in a *UsageError.
func Parse(args, modes []string, output io.Writer) (*Parsed, error) {
	fs := pflag.NewFlagSet("switchyard", pflag.ContinueOnError)
	fs.SetOutput(output)
	fs.SortFlags = false
	f := bindFlags(fs, modes)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return nil, err
		}
		return nil, &UsageError{Errs: []error{err}}
	}
	if fs.NArg() > 0 {
		return nil, &UsageError{Errs: []error{fmt.Errorf("unexpected arguments %q: switchyard takes only flags", fs.Args())}}
	}
	if f.version {
		return &Parsed{Version: true}, nil
	}

	cfg := Defaults()
	var errs []error
	if f.configFile != "" {
		file, err := loadFile(f.configFile)
		if err != nil {
			return nil, &UsageError{Errs: []error{err}}
		}
		errs = append(errs, applyFile(&cfg, file, f.configFile, modes)...)
	}
	errs = append(errs, applyFlags(&cfg, fs, f, modes)...)
	if cfg.NodeName == "" {
		host, err := os.Hostname()
		if err != nil {
			errs = append(errs, fmt.Errorf("--hostname-override not given and the hostname is unknown: %w", err))
		}
		cfg.NodeName = strings.ToLower(strings.TrimSpace(host))
	}
	if cfg.Mode != ipvsMode {
		// kube-proxy checks its ipvs section in mode ipvs only, the one mode that reads it.
		errs = slices.DeleteFunc(errs, func(err error) bool { return errors.As(err, new(ipvsSectionError)) })
	}
	if cfg.MinSyncPeriod > cfg.SyncPeriod {
		errs = append(errs, fmt.Errorf("--min-sync-period (%s) must not exceed --sync-period (%s)", cfg.MinSyncPeriod, cfg.SyncPeriod))
	}
	if len(errs) > 0 {
		return nil, &UsageError{Errs: errs}
	}
	return &Parsed{Config: cfg}, nil
}

// flagValues holds what the flags were set to, before merging with the file.
type flagValues struct {
	configFile, mode, kubeconfig, master, hostname, clusterCIDR string
	kubeAPIContentType                                          string
	kubeAPIQPS                                                  float32
	kubeAPIBurst                                                int32
	metricsAddr, healthzAddr, proxyName, ipvsScheduler          string
	masqAll, version, cleanup, initOnly, strictARP              bool
	localhostNodePorts                                          bool
	syncPeriod, minSyncPeriod, configSyncPeriod                 time.Duration
	ipvsTCPTimeout, ipvsTCPFinTimeout, ipvsUDPTimeout           time.Duration
	masqBit, oomScoreAdj                                        int32
	nodePortAddresses, ipvsExcludeCIDRs                         []string
	conntrack                                                   conntrack.Settings
	// Accepted for compatibility with kube-proxy command lines, and otherwise unused.
	bindAddress, featureGates string
}

func bindFlags(fs *pflag.FlagSet, modes []string) *flagValues {
	d := Defaults()
	f := &flagValues{}
	fs.StringVar(&f.configFile, "config", "", "The path to a KubeProxyConfiguration file (kubeproxy.config.k8s.io/v1alpha1). Flags given explicitly override its values.")
	fs.StringVar(&f.mode, "proxy-mode", d.Mode, "Which proxy mode to use: "+strings.Join(modes, " or ")+".")
	fs.StringVar(&f.kubeconfig, "kubeconfig", "", "Path to a kubeconfig file; in-cluster configuration is used when empty.")
	fs.StringVar(&f.master, "master", "", "The address of the Kubernetes API server (overrides any value in kubeconfig).")
	fs.StringVar(&f.kubeAPIContentType, "kube-api-content-type", d.KubeAPIContentType, "Content type of requests sent to the apiserver.")
	fs.Int32Var(&f.kubeAPIBurst, "kube-api-burst", d.KubeAPIBurst, "Burst to use while talking with the apiserver.")
	fs.Float32Var(&f.kubeAPIQPS, "kube-api-qps", d.KubeAPIQPS, "QPS to use while talking with the apiserver.")
	fs.StringVar(&f.hostname, "hostname-override", "", "If non-empty, use this string as this node's name instead of the hostname.")
	fs.StringVar(&f.clusterCIDR, "cluster-cidr", "", "The CIDR range(s) of the pods in the cluster, comma-separated (one per IP family). Traffic to a Service from outside it is masqueraded.")
	fs.BoolVar(&f.masqAll, "masquerade-all", false, "SNAT all traffic sent via Service cluster IPs.")
	fs.Int32Var(&f.masqBit, "iptables-masquerade-bit", d.MasqueradeBit, "The bit of the fwmark space that marks packets to be masqueraded, in [0, 31].")
	fs.DurationVar(&f.syncPeriod, "sync-period", d.SyncPeriod, "How often all rules are fully refreshed (e.g. '5s', '1m'). Must be greater than 0.")
	fs.DurationVar(&f.minSyncPeriod, "min-sync-period", d.MinSyncPeriod, "The minimum period between rule resyncs (e.g. '5s', '1m'); 0 resyncs on every change.")
	fs.DurationVar(&f.syncPeriod, "iptables-sync-period", d.SyncPeriod, "Deprecated alias of --sync-period.")
	fs.DurationVar(&f.minSyncPeriod, "iptables-min-sync-period", d.MinSyncPeriod, "Deprecated alias of --min-sync-period.")
	fs.DurationVar(&f.syncPeriod, "ipvs-sync-period", d.SyncPeriod, "Deprecated alias of --sync-period.")
	fs.DurationVar(&f.minSyncPeriod, "ipvs-min-sync-period", d.MinSyncPeriod, "Deprecated alias of --min-sync-period.")
	fs.DurationVar(&f.configSyncPeriod, "config-sync-period", d.ConfigSyncPeriod, "How often configuration from the apiserver is refreshed. Must be greater than 0.")
	fs.StringVar(&f.metricsAddr, "metrics-bind-address", d.MetricsBindAddress, "The IP address and port for the metrics server to serve on; empty disables it.")
	fs.StringVar(&f.healthzAddr, "healthz-bind-address", d.HealthzBindAddress, "The IP address and port for the health check server to serve on; empty disables it.")
	fs.StringVar(&f.proxyName, "service-proxy-name", "", "Serve only Services labelled service.kubernetes.io/service-proxy-name=<this>; by default only Services without the label.")
	// The conntrack flags have kube-proxy's help.
	fs.Int32Var(&f.conntrack.MaxPerCore, "conntrack-max-per-core", d.Conntrack.MaxPerCore, "Maximum number of NAT connections to track per CPU core (0 to leave the limit as-is and ignore conntrack-min).")
	fs.Int32Var(&f.conntrack.Min, "conntrack-min", d.Conntrack.Min, "Minimum number of conntrack entries to allocate, regardless of conntrack-max-per-core (set conntrack-max-per-core=0 to leave the limit as-is).")
	fs.DurationVar(&f.conntrack.TCPEstablishedTimeout, "conntrack-tcp-timeout-established", d.Conntrack.TCPEstablishedTimeout, "Idle timeout for established TCP connections (0 to leave as-is)")
	fs.DurationVar(&f.conntrack.TCPCloseWaitTimeout, "conntrack-tcp-timeout-close-wait", d.Conntrack.TCPCloseWaitTimeout, "NAT timeout for TCP connections in the CLOSE_WAIT state")
	fs.BoolVar(&f.conntrack.TCPBeLiberal, "conntrack-tcp-be-liberal", d.Conntrack.TCPBeLiberal, "Enable liberal mode for tracking TCP packets by setting nf_conntrack_tcp_be_liberal to 1")
	fs.DurationVar(&f.conntrack.UDPTimeout, "conntrack-udp-timeout", d.Conntrack.UDPTimeout, "Idle timeout for UNREPLIED UDP connections (0 to leave as-is)")
	fs.DurationVar(&f.conntrack.UDPStreamTimeout, "conntrack-udp-timeout-stream", d.Conntrack.UDPStreamTimeout, "Idle timeout for ASSURED UDP connections (0 to leave as-is)")
	fs.Int32Var(&f.oomScoreAdj, "oom-score-adj", d.OOMScoreAdj, "The oom-score-adj value for the switchyard process, in [-1000, 1000].")
	fs.StringSliceVar(&f.nodePortAddresses, "nodeport-addresses", nil, "CIDRs or 'primary' selecting the node addresses NodePorts listen on.")
	fs.StringVar(&f.ipvsScheduler, "ipvs-scheduler", d.IPVSScheduler, "The IPVS scheduler to use when the proxy mode is ipvs.")
	fs.BoolVar(&f.strictARP, "ipvs-strict-arp", false, "Enable strict ARP by setting arp_ignore to 1 and arp_announce to 2.")
	// As kube-proxy's, with its help.
	fs.StringSliceVar(&f.ipvsExcludeCIDRs, "ipvs-exclude-cidrs", nil, "A comma-separated list of CIDRs which the ipvs proxier should not touch when cleaning up IPVS rules.")
	fs.DurationVar(&f.ipvsTCPTimeout, "ipvs-tcp-timeout", d.IPVSTCPTimeout, "The timeout for idle IPVS TCP connections, 0 to leave as-is. (e.g. '5s', '1m', '2h22m').")
	fs.DurationVar(&f.ipvsTCPFinTimeout, "ipvs-tcpfin-timeout", d.IPVSTCPFinTimeout, "The timeout for IPVS TCP connections after receiving a FIN packet, 0 to leave as-is. (e.g. '5s', '1m', '2h22m').")
	fs.DurationVar(&f.ipvsUDPTimeout, "ipvs-udp-timeout", d.IPVSUDPTimeout, "The timeout for IPVS UDP packets, 0 to leave as-is. (e.g. '5s', '1m', '2h22m').")
	fs.StringVar(&f.bindAddress, "bind-address", "", "Accepted for kube-proxy compatibility and ignored (docs/configuration.md).")
	fs.StringVar(&f.featureGates, "feature-gates", "", "Accepted for kube-proxy compatibility; switchyard has no feature gates.")
	fs.BoolVar(&f.localhostNodePorts, "iptables-localhost-nodeports", d.IPTablesLocalhostNodePorts, "If false, NodePorts are not served on 127.0.0.1. (iptables mode and IPv4 only: localhost NodePorts are never served in IPVS mode or over IPv6.) When served, net.ipv4.conf.all.route_localnet is set to 1.")
	fs.BoolVar(&f.cleanup, "cleanup", false, "Remove everything switchyard owns on this node and exit.")
	fs.BoolVar(&f.initOnly, "init-only", false, "Load the kernel modules and set the sysctls the proxy mode needs, which takes full root privileges, and exit. Run switchyard again without it, with only the NET_ADMIN and NET_RAW capabilities.")
	fs.BoolVar(&f.version, "version", false, "Print the version and exit.")
	for _, alias := range []string{"iptables-sync-period", "iptables-min-sync-period", "ipvs-sync-period", "ipvs-min-sync-period"} {
		_ = fs.MarkHidden(alias)
	}

	// -v and --vmodule come from klog, as in every Kubernetes component.
	goflags := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(goflags)
	for _, name := range []string{"v", "vmodule"} {
		fs.AddGoFlag(goflags.Lookup(name))
	}
	return f
}

// applyFlags overrides cfg with every flag the user set explicitly.
func applyFlags(cfg *Config, fs *pflag.FlagSet, f *flagValues, modes []string) []error {
	var errs []error
	set := func(names ...string) bool {
		for _, n := range names {
			if fs.Changed(n) {
				return true
			}
		}
		return false
	}
	check := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	if set("proxy-mode") {
		cfg.Mode = f.mode
		check(validateMode(f.mode, modes, "--proxy-mode"))
	}
	if set("kubeconfig") {
		cfg.Kubeconfig = f.kubeconfig
	}
	if set("master") {
		cfg.Master = f.master
	}
	if set("kube-api-content-type") {
		cfg.KubeAPIContentType = f.kubeAPIContentType
	}
	if set("kube-api-qps") {
		cfg.KubeAPIQPS = f.kubeAPIQPS
	}
	if set("kube-api-burst") {
		cfg.KubeAPIBurst = f.kubeAPIBurst
		check(inRange(int64(f.kubeAPIBurst), 0, 1<<31-1, "--kube-api-burst"))
	}
	if set("hostname-override") {
		cfg.NodeName = strings.ToLower(strings.TrimSpace(f.hostname))
		if cfg.NodeName == "" {
			errs = append(errs, &InvalidValue{Where: "--hostname-override", Value: f.hostname, Allowed: "must not be blank"})
		}
	}
	if set("cluster-cidr") {
		var err error
		cfg.ClusterCIDRs, err = parseCIDRs(f.clusterCIDR, "--cluster-cidr")
		check(err)
	}
	if set("masquerade-all") {
		cfg.MasqueradeAll = f.masqAll
	}
	if set("iptables-masquerade-bit") {
		cfg.MasqueradeBit = f.masqBit
		check(inRange(int64(f.masqBit), 0, 31, "--iptables-masquerade-bit"))
	}
	if set("sync-period", "iptables-sync-period", "ipvs-sync-period") {
		cfg.SyncPeriod = f.syncPeriod
		check(positive(f.syncPeriod, "--sync-period"))
	}
	if set("min-sync-period", "iptables-min-sync-period", "ipvs-min-sync-period") {
		cfg.MinSyncPeriod = f.minSyncPeriod
		check(nonNegative(f.minSyncPeriod, "--min-sync-period"))
	}
	if set("config-sync-period") {
		cfg.ConfigSyncPeriod = f.configSyncPeriod
		check(positive(f.configSyncPeriod, "--config-sync-period"))
	}
	if set("metrics-bind-address") {
		cfg.MetricsBindAddress = f.metricsAddr
		check(validateHostPort(f.metricsAddr, "--metrics-bind-address"))
	}
	if set("healthz-bind-address") {
		cfg.HealthzBindAddress = f.healthzAddr
		check(validateHostPort(f.healthzAddr, "--healthz-bind-address"))
	}
	if set("service-proxy-name") {
		cfg.ServiceProxyName = f.proxyName
	}
	if set("conntrack-max-per-core") {
		cfg.Conntrack.MaxPerCore = f.conntrack.MaxPerCore
		check(inRange(int64(f.conntrack.MaxPerCore), 0, 1<<31-1, "--conntrack-max-per-core"))
	}
	if set("conntrack-min") {
		cfg.Conntrack.Min = f.conntrack.Min
		check(inRange(int64(f.conntrack.Min), 0, 1<<31-1, "--conntrack-min"))
	}
	for _, t := range []struct {
		flag  string
		value time.Duration
		to    *time.Duration
		ipvs  bool // checked in mode ipvs only
	}{
		{"conntrack-tcp-timeout-established", f.conntrack.TCPEstablishedTimeout, &cfg.Conntrack.TCPEstablishedTimeout, false},
		{"conntrack-tcp-timeout-close-wait", f.conntrack.TCPCloseWaitTimeout, &cfg.Conntrack.TCPCloseWaitTimeout, false},
		{"conntrack-udp-timeout", f.conntrack.UDPTimeout, &cfg.Conntrack.UDPTimeout, false},
		{"conntrack-udp-timeout-stream", f.conntrack.UDPStreamTimeout, &cfg.Conntrack.UDPStreamTimeout, false},
		{"ipvs-tcp-timeout", f.ipvsTCPTimeout, &cfg.IPVSTCPTimeout, true},
		{"ipvs-tcpfin-timeout", f.ipvsTCPFinTimeout, &cfg.IPVSTCPFinTimeout, true},
		{"ipvs-udp-timeout", f.ipvsUDPTimeout, &cfg.IPVSUDPTimeout, true},
	} {
		if set(t.flag) {
			*t.to = t.value
			check(ipvsSectionIf(t.ipvs, nonNegative(t.value, "--"+t.flag)))
		}
	}
	if set("conntrack-tcp-be-liberal") {
		cfg.Conntrack.TCPBeLiberal = f.conntrack.TCPBeLiberal
	}
	if set("oom-score-adj") {
		cfg.OOMScoreAdj = f.oomScoreAdj
		check(inRange(int64(f.oomScoreAdj), -1000, 1000, "--oom-score-adj"))
	}
	if set("nodeport-addresses") {
		cfg.NodePortAddresses = f.nodePortAddresses
		check(validateNodePortAddresses(f.nodePortAddresses, "--nodeport-addresses"))
	}
	if set("iptables-localhost-nodeports") {
		cfg.IPTablesLocalhostNodePorts = f.localhostNodePorts
	}
	if set("ipvs-scheduler") {
		cfg.IPVSScheduler = f.ipvsScheduler
		check(validateScheduler(f.ipvsScheduler, "--ipvs-scheduler"))
	}
	if set("ipvs-strict-arp") {
		cfg.IPVSStrictARP = f.strictARP
	}
	if set("ipvs-exclude-cidrs") {
		var err error
		cfg.IPVSExcludeCIDRs, err = parseExcludeCIDRs(f.ipvsExcludeCIDRs, "--ipvs-exclude-cidrs")
		check(ipvsSectionIf(true, err))
	}
	cfg.Cleanup = f.cleanup
	cfg.InitOnly = f.initOnly
	return errs
}

// loadFile reads a KubeProxyConfiguration strictly: an unknown or misspelled field is an
// error rather than a silently ignored setting.
func loadFile(path string) (*kpv1alpha1.KubeProxyConfiguration, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--config: reading %s: %w", path, err)
	}
	var file kpv1alpha1.KubeProxyConfiguration
	if err := yaml.UnmarshalStrict(data, &file); err != nil {
		return nil, fmt.Errorf("--config: %s: %w", path, err)
	}
	want := kpv1alpha1.SchemeGroupVersion.String()
	if file.APIVersion != want || file.Kind != "KubeProxyConfiguration" {
		return nil, fmt.Errorf("--config: %s: apiVersion %q, kind %q: want apiVersion %q, kind \"KubeProxyConfiguration\"", path, file.APIVersion, file.Kind, want)
	}
	return &file, nil
}

// applyFile overrides cfg with every setting the file gives (non-zero values).
func applyFile(cfg *Config, file *kpv1alpha1.KubeProxyConfiguration, path string, modes []string) []error {
	var errs []error
	where := func(field string) string { return fmt.Sprintf("%s (in %s)", field, path) }
	check := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	if file.Mode != "" {
		cfg.Mode = string(file.Mode)
		check(validateMode(cfg.Mode, modes, where("mode")))
	}
	cc := file.ClientConnection
	if cc.Kubeconfig != "" {
		cfg.Kubeconfig = cc.Kubeconfig
	}
	if cc.ContentType != "" {
		cfg.KubeAPIContentType = cc.ContentType
	}
	if cc.AcceptContentTypes != "" {
		cfg.KubeAPIAcceptContentTypes = cc.AcceptContentTypes
	}
	if cc.QPS != 0 {
		cfg.KubeAPIQPS = cc.QPS
	}
	if cc.Burst != 0 {
		cfg.KubeAPIBurst = cc.Burst
		check(inRange(int64(cc.Burst), 0, 1<<31-1, where("clientConnection.burst")))
	}
	if file.HostnameOverride != "" {
		cfg.NodeName = strings.ToLower(strings.TrimSpace(file.HostnameOverride))
	}
	if file.ClusterCIDR != "" {
		var err error
		cfg.ClusterCIDRs, err = parseCIDRs(file.ClusterCIDR, where("clusterCIDR"))
		check(err)
	}
	if file.MetricsBindAddress != "" {
		cfg.MetricsBindAddress = file.MetricsBindAddress
		check(validateHostPort(file.MetricsBindAddress, where("metricsBindAddress")))
	}
	if file.HealthzBindAddress != "" {
		cfg.HealthzBindAddress = file.HealthzBindAddress
		check(validateHostPort(file.HealthzBindAddress, where("healthzBindAddress")))
	}
	// The sync periods live under the section of the mode in use, as in kube-proxy.
	section := cfg.Mode
	periods := fileSyncPeriods(file)[section]
	if periods.sync != 0 {
		cfg.SyncPeriod = periods.sync
		check(positive(periods.sync, where(section+".syncPeriod")))
	}
	if periods.minSync != 0 {
		cfg.MinSyncPeriod = periods.minSync
		check(nonNegative(periods.minSync, where(section+".minSyncPeriod")))
	}
	if file.ConfigSyncPeriod.Duration != 0 {
		cfg.ConfigSyncPeriod = file.ConfigSyncPeriod.Duration
		check(positive(cfg.ConfigSyncPeriod, where("configSyncPeriod")))
	}
	if file.IPTables.MasqueradeAll {
		cfg.MasqueradeAll = true
	}
	if b := file.IPTables.MasqueradeBit; b != nil {
		cfg.MasqueradeBit = *b
		check(inRange(int64(*b), 0, 31, where("iptables.masqueradeBit")))
	}
	if v := file.IPTables.LocalhostNodePorts; v != nil {
		cfg.IPTablesLocalhostNodePorts = *v
	}
	if file.IPVS.Scheduler != "" {
		cfg.IPVSScheduler = file.IPVS.Scheduler
		check(validateScheduler(cfg.IPVSScheduler, where("ipvs.scheduler")))
	}
	if file.IPVS.StrictARP {
		cfg.IPVSStrictARP = true
	}
	if len(file.IPVS.ExcludeCIDRs) > 0 {
		var err error
		cfg.IPVSExcludeCIDRs, err = parseExcludeCIDRs(file.IPVS.ExcludeCIDRs, where("ipvs.excludeCIDRs"))
		check(ipvsSectionIf(true, err))
	}
	if v := file.Conntrack.MaxPerCore; v != nil {
		cfg.Conntrack.MaxPerCore = *v
		check(inRange(int64(*v), 0, 1<<31-1, where("conntrack.maxPerCore")))
	}
	if v := file.Conntrack.Min; v != nil {
		cfg.Conntrack.Min = *v
		check(inRange(int64(*v), 0, 1<<31-1, where("conntrack.min")))
	}
	for _, t := range []struct {
		field string
		value *metav1.Duration // nil when the file does not give it
		to    *time.Duration
		ipvs  bool // checked in mode ipvs only
	}{
		// The conntrack TCP timeouts are pointers, so that 0 (leave it alone) differs
		// from unset (kube-proxy's default); the others are not, and their default is 0.
		{"conntrack.tcpEstablishedTimeout", file.Conntrack.TCPEstablishedTimeout, &cfg.Conntrack.TCPEstablishedTimeout, false},
		{"conntrack.tcpCloseWaitTimeout", file.Conntrack.TCPCloseWaitTimeout, &cfg.Conntrack.TCPCloseWaitTimeout, false},
		{"conntrack.udpTimeout", nonZero(file.Conntrack.UDPTimeout), &cfg.Conntrack.UDPTimeout, false},
		{"conntrack.udpStreamTimeout", nonZero(file.Conntrack.UDPStreamTimeout), &cfg.Conntrack.UDPStreamTimeout, false},
		{"ipvs.tcpTimeout", nonZero(file.IPVS.TCPTimeout), &cfg.IPVSTCPTimeout, true},
		{"ipvs.tcpFinTimeout", nonZero(file.IPVS.TCPFinTimeout), &cfg.IPVSTCPFinTimeout, true},
		{"ipvs.udpTimeout", nonZero(file.IPVS.UDPTimeout), &cfg.IPVSUDPTimeout, true},
	} {
		if t.value != nil {
			*t.to = t.value.Duration
			check(ipvsSectionIf(t.ipvs, nonNegative(t.value.Duration, where(t.field))))
		}
	}
	if file.Conntrack.TCPBeLiberal {
		cfg.Conntrack.TCPBeLiberal = true
	}
	if v := file.OOMScoreAdj; v != nil {
		cfg.OOMScoreAdj = *v
		check(inRange(int64(*v), -1000, 1000, where("oomScoreAdj")))
	}
	if len(file.NodePortAddresses) > 0 {
		cfg.NodePortAddresses = file.NodePortAddresses
		check(validateNodePortAddresses(file.NodePortAddresses, where("nodePortAddresses")))
	}
	return errs
}

// ipvsMode is the proxy mode that reads the ipvs section of the configuration.
const ipvsMode = "ipvs"

// ipvsSectionError is a bad setting of the ipvs section (other than the scheduler), which
// kube-proxy's validation reports in mode ipvs only.
type ipvsSectionError struct{ error }

func (e ipvsSectionError) Unwrap() error { return e.error }

// ipvsSectionIf marks err, when there is one, as an ipvsSectionError when inIPVS is set.
func ipvsSectionIf(inIPVS bool, err error) error {
	if err == nil || !inIPVS {
		return err
	}
	return ipvsSectionError{err}
}

// nonZero is a duration of the file that is no pointer, nil when it is 0: a value only
// the default has.
func nonZero(d metav1.Duration) *metav1.Duration {
	if d.Duration == 0 {
		return nil
	}
	return &d
}

// syncPeriods are the sync periods of one section of a KubeProxyConfiguration.
type syncPeriods struct{ sync, minSync time.Duration }

// fileSyncPeriods are the sync periods a KubeProxyConfiguration gives each proxy mode.
// kube-proxy keeps them in a section named after the mode; this lists every section of
// the file format that has them, so that a mode added to the registry finds its own.
func fileSyncPeriods(file *kpv1alpha1.KubeProxyConfiguration) map[string]syncPeriods {
	return map[string]syncPeriods{
		"iptables": {file.IPTables.SyncPeriod.Duration, file.IPTables.MinSyncPeriod.Duration},
		"ipvs":     {file.IPVS.SyncPeriod.Duration, file.IPVS.MinSyncPeriod.Duration},
		"nftables": {file.NFTables.SyncPeriod.Duration, file.NFTables.MinSyncPeriod.Duration},
	}
}

func validateMode(mode string, modes []string, where string) error {
	if slices.Contains(modes, mode) {
		return nil
	}
	return &InvalidValue{Where: where, Value: mode, Allowed: "valid proxy modes are " + strings.Join(modes, ", ")}
}

// NodePortPrefixes returns the --nodeport-addresses ranges of one IP family. "primary"
// (the node's primary addresses in kube-proxy) is not narrowed further here: it selects
// every non-loopback address, like an empty list.
func (c Config) NodePortPrefixes(ipv4 bool) []netip.Prefix {
	var out []netip.Prefix
	for _, v := range c.NodePortAddresses {
		if p, err := netip.ParsePrefix(v); err == nil && p.Addr().Is4() == ipv4 {
			out = append(out, p.Masked())
		}
	}
	return out
}

// ipv4Loopback is the IPv4 loopback network (RFC 5735).
var ipv4Loopback = netip.MustParsePrefix("127.0.0.0/8")

// LocalhostNodePorts reports whether iptables mode serves NodePorts on 127.0.0.1 for one
// IP family, as kube-proxy's iptables proxier decides it: only IPv4 (a packet from ::1
// is never routed off the node), only with --iptables-localhost-nodeports, and only when
// the family's node-port addresses include loopback: no range of the family (every
// address), or a range that holds some of 127.0.0.0/8. "primary" holds the node's
// primary IP, which is never loopback.
func (c Config) LocalhostNodePorts(ipv4 bool) bool {
	if !ipv4 || !c.IPTablesLocalhostNodePorts || slices.Contains(c.NodePortAddresses, "primary") {
		return false
	}
	prefixes := c.NodePortPrefixes(true)
	return len(prefixes) == 0 || slices.ContainsFunc(prefixes, ipv4Loopback.Overlaps)
}

func validateScheduler(name, where string) error {
	if slices.Contains(IPVSSchedulers, name) {
		return nil
	}
	return &InvalidValue{Where: where, Value: name, Allowed: "valid IPVS schedulers are " + strings.Join(IPVSSchedulers, ", ")}
}

func parseCIDRs(s, where string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	families := map[bool]bool{}
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		p, err := netip.ParsePrefix(part)
		if err != nil {
			return nil, &InvalidValue{Where: where, Value: s, Allowed: "must be a comma-separated list of CIDRs such as 10.244.0.0/16,fd00:10:244::/56"}
		}
		if families[p.Addr().Is4()] {
			return nil, &InvalidValue{Where: where, Value: s, Allowed: "at most one CIDR per IP family"}
		}
		families[p.Addr().Is4()] = true
		out = append(out, p.Masked())
	}
	return out, nil
}

// parseExcludeCIDRs reads --ipvs-exclude-cidrs as kube-proxy does (k8s.io/utils/net's
// sloppy parser, no spaces) and reports the first bad one.
func parseExcludeCIDRs(values []string, where string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, v := range values {
		p, ok := kubeaddr.ParsePrefix(v)
		if !ok {
			return out, &InvalidValue{Where: where, Value: v, Allowed: "must be CIDRs such as 10.0.0.0/8"}
		}
		out = append(out, p)
	}
	return out, nil
}

func validateHostPort(s, where string) error {
	if s == "" {
		return nil // disabled
	}
	host, port, err := net.SplitHostPort(s)
	if err == nil {
		var n int
		n, err = strconv.Atoi(port)
		if err == nil && (n < 0 || n > 65535) {
			err = errors.New("port out of range")
		}
	}
	if err == nil && host != "" {
		_, err = netip.ParseAddr(host)
	}
	if err != nil {
		return &InvalidValue{Where: where, Value: s, Allowed: "must be IP:port, such as 0.0.0.0:10256 or [::]:10256, or empty to disable"}
	}
	return nil
}

func validateNodePortAddresses(values []string, where string) error {
	for _, v := range values {
		if v == "primary" {
			continue
		}
		if _, err := netip.ParsePrefix(v); err != nil {
			return &InvalidValue{Where: where, Value: v, Allowed: "must be CIDRs (such as 192.168.0.0/16) or \"primary\""}
		}
	}
	return nil
}

func positive(d time.Duration, where string) error {
	if d <= 0 {
		return &InvalidValue{Where: where, Value: d.String(), Allowed: "must be greater than 0"}
	}
	return nil
}

func nonNegative(d time.Duration, where string) error {
	if d < 0 {
		return &InvalidValue{Where: where, Value: d.String(), Allowed: "must be 0 or greater"}
	}
	return nil
}

func inRange(v, lo, hi int64, where string) error {
	if v < lo || v > hi {
		return &InvalidValue{Where: where, Value: strconv.FormatInt(v, 10), Allowed: fmt.Sprintf("must be between %d and %d", lo, hi)}
	}
	return nil
}
