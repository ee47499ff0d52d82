package config

import (
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/spf13/pflag"
	cliflag "k8s.io/component-base/cli/flag"
	"k8s.io/component-base/featuregate"
	logsapi "k8s.io/component-base/logs/api/v1"
	// The json log format, as kube-proxy's main package registers it; before the flags are
	// defined, which offer --log-json-* only when it is registered.
	_ "k8s.io/component-base/logs/json/register"
	netutils "k8s.io/utils/net"
)

// options is the command line, as kube-proxy's Options (cmd/kube-proxy/app/options.go):
// most flags are bound to the fields of the default configuration, so that a file given
// with --config, which replaces that configuration, leaves them without effect; the
// others are kept here and applied by complete.
type options struct {
	// fs is the command line, which says which flags were given.
	fs                        *pflag.FlagSet
	configFile, writeConfigTo string
	cleanup, initOnly         bool
	// config is the configuration: the defaults the flags are bound to, or the file's.
	config *kubeProxyConfig
	// gates are kube-proxy's feature gates, set from the configuration by complete.
	gates  featuregate.MutableVersionedFeatureGate
	master string
	// healthzPort and metricsPort are the deprecated --healthz-port and --metrics-port.
	healthzPort, metricsPort int32
	// hostnameOverride applies even with --config.
	hostnameOverride string
	// The sync period flags of each mode apply only in that mode.
	iptablesSyncPeriod, iptablesMinSyncPeriod, ipvsSyncPeriod, ipvsMinSyncPeriod time.Duration

	// syncPeriodBy and minSyncPeriodBy are the flags that set the sync periods, for errors.
	syncPeriodBy, minSyncPeriodBy string

	// switchyard's own flags.
	syncPeriod, minSyncPeriod time.Duration
	serviceProxyName          string
	version                   bool
}

func newOptions() *options {
	return &options{
		config:      defaultKubeProxyConfig(),
		healthzPort: healthzPort, metricsPort: metricsPort,
		// Until a flag sets them, errors name switchyard's flags of any mode.
		syncPeriodBy: "--sync-period", minSyncPeriodBy: "--min-sync-period",
	}
}

// addFlags defines the command line: kube-proxy's flags with its names, types, defaults
// and bindings (Options.AddFlags), then switchyard's own.
func (o *options) addFlags(fs *pflag.FlagSet, modes []string) {
	c := o.config
	// Like every Kubernetes command (component-base's cli.Run), words in flag names may
	// be separated by underscores too: --hostname_override.
	fs.SetNormalizeFunc(cliflag.WordSepNormalizeFunc)

	fs.StringVar(&o.configFile, "config", o.configFile, "The path to the configuration file (a KubeProxyConfiguration, kubeproxy.config.k8s.io/v1alpha1). When given, the other flags are ignored, except --hostname-override, --master, --cleanup, --init-only, --write-config-to, the logging flags, and switchyard's --service-proxy-name.")
	fs.StringVar(&o.writeConfigTo, "write-config-to", o.writeConfigTo, "If set, write the configuration (the defaults, what the flags set, or the --config file's) to this file as YAML and exit.")
	fs.BoolVar(&o.cleanup, "cleanup", o.cleanup, "If true, remove everything switchyard owns on this node and exit.")
	fs.Var(cliflag.NewMapStringBool(&c.FeatureGates), "feature-gates", "A set of key=value pairs that describe kube-proxy's feature gates for alpha/experimental features (docs/configuration.md says which change what switchyard does). Ignored if a config file is specified by --config.")

	fs.StringVar(&c.ClientConnection.Kubeconfig, "kubeconfig", c.ClientConnection.Kubeconfig, "Path to kubeconfig file with authorization information (the master location can be overridden by the master flag); in-cluster configuration is used when neither is given.")
	fs.StringVar(&o.master, "master", o.master, "The address of the Kubernetes API server (overrides any value in kubeconfig).")
	fs.StringVar(&c.ClientConnection.ContentType, "kube-api-content-type", c.ClientConnection.ContentType, "Content type of requests sent to apiserver.")
	fs.Int32Var(&c.ClientConnection.Burst, "kube-api-burst", c.ClientConnection.Burst, "Burst to use while talking with kubernetes apiserver.")
	fs.Float32Var(&c.ClientConnection.QPS, "kube-api-qps", c.ClientConnection.QPS, "QPS to use while talking with kubernetes apiserver.")

	fs.StringVar(&o.hostnameOverride, "hostname-override", o.hostnameOverride, "If non-empty, will be used as the name of the Node that switchyard is running on. If unset, the node name is assumed to be the same as the node's hostname.")
	fs.Var(&ipVar{&c.BindAddress}, "bind-address", "Overrides kube-proxy's idea of what its node's primary IP is. Ignored if a config file is specified by --config.")
	fs.Var(&ipPortVar{&c.HealthzBindAddress}, "healthz-bind-address", "The IP address and port for the health check server to serve on (an IP alone takes the port of --healthz-port, 10256). Ignored if a config file is specified by --config.")
	fs.Var(&ipPortVar{&c.MetricsBindAddress}, "metrics-bind-address", "The IP address and port for the metrics server to serve on (an IP alone takes the port of --metrics-port, 10249). Set to \"0.0.0.0:10249\" / \"[::]:10249\" to bind on all interfaces. Ignored if a config file is specified by --config.")
	fs.BoolVar(&c.BindAddressHardFail, "bind-address-hard-fail", c.BindAddressHardFail, "If true, switchyard treats failure to bind to a port of the health check or metrics server as fatal and exits.")
	fs.BoolVar(&c.EnableProfiling, "profiling", c.EnableProfiling, "If true, enables profiling via web interface on the metrics server's /debug/pprof handler. Ignored if a config file is specified by --config.")
	fs.StringVar(&c.ShowHiddenMetricsForVersion, "show-hidden-metrics-for-version", c.ShowHiddenMetricsForVersion, "The previous version for which you want to show hidden metrics. Only the previous minor version of kube-proxy's (for switchyard, "+previousMinor()+") is allowed. Ignored if a config file is specified by --config.")
	fs.BoolVar(&o.initOnly, "init-only", o.initOnly, "If true, load the kernel modules and set the sysctls the proxy mode needs, which takes full root privileges, and exit. Run switchyard again without it, with only the NET_ADMIN and NET_RAW capabilities.")
	fs.StringVar((*string)(&c.Mode), "proxy-mode", string(c.Mode), "Which proxy mode to use: "+strings.Join(modes, " or ")+" (default iptables). Ignored if a config file is specified by --config.")

	fs.Int32Var(c.IPTables.MasqueradeBit, "iptables-masquerade-bit", *c.IPTables.MasqueradeBit, "The bit of the fwmark space to mark packets requiring SNAT with. Must be within the range [0, 31].")
	fs.BoolVar(&c.masqueradeAll, "masquerade-all", c.masqueradeAll, "SNAT all traffic sent via Service cluster IPs.")
	fs.BoolVar(c.IPTables.LocalhostNodePorts, "iptables-localhost-nodeports", *c.IPTables.LocalhostNodePorts, "If false, NodePorts are not served on 127.0.0.1. (iptables mode and IPv4 only: localhost NodePorts are never served in IPVS mode or over IPv6.) When served, net.ipv4.conf.all.route_localnet is set to 1.")
	fs.DurationVar(&o.iptablesSyncPeriod, "iptables-sync-period", c.syncPeriod, "In iptables mode, how often all rules are fully refreshed (e.g. '5s', '1m', '2h22m'). Must be greater than 0.")
	fs.DurationVar(&o.iptablesMinSyncPeriod, "iptables-min-sync-period", c.minSyncPeriod, "In iptables mode, the minimum period between rule resyncs (e.g. '5s', '1m', '2h22m'). A value of 0 means every Service or EndpointSlice change will result in an immediate resync.")
	fs.DurationVar(&o.ipvsSyncPeriod, "ipvs-sync-period", c.syncPeriod, "In IPVS mode, how often all rules are fully refreshed (e.g. '5s', '1m', '2h22m'). Must be greater than 0.")
	fs.DurationVar(&o.ipvsMinSyncPeriod, "ipvs-min-sync-period", c.minSyncPeriod, "In IPVS mode, the minimum period between rule resyncs (e.g. '5s', '1m', '2h22m'). A value of 0 means every Service or EndpointSlice change will result in an immediate resync.")
	fs.StringVar(&c.IPVS.Scheduler, "ipvs-scheduler", c.IPVS.Scheduler, "The IPVS scheduler to use when the proxy mode is ipvs (default rr).")
	fs.StringSliceVar(&c.IPVS.ExcludeCIDRs, "ipvs-exclude-cidrs", c.IPVS.ExcludeCIDRs, "A comma-separated list of CIDRs which the ipvs proxier should not touch when cleaning up IPVS rules.")
	fs.BoolVar(&c.IPVS.StrictARP, "ipvs-strict-arp", c.IPVS.StrictARP, "Enable strict ARP by setting arp_ignore to 1 and arp_announce to 2.")
	fs.DurationVar(&c.IPVS.TCPTimeout.Duration, "ipvs-tcp-timeout", c.IPVS.TCPTimeout.Duration, "The timeout for idle IPVS TCP connections, 0 to leave as-is. (e.g. '5s', '1m', '2h22m').")
	fs.DurationVar(&c.IPVS.TCPFinTimeout.Duration, "ipvs-tcpfin-timeout", c.IPVS.TCPFinTimeout.Duration, "The timeout for IPVS TCP connections after receiving a FIN packet, 0 to leave as-is. (e.g. '5s', '1m', '2h22m').")
	fs.DurationVar(&c.IPVS.UDPTimeout.Duration, "ipvs-udp-timeout", c.IPVS.UDPTimeout.Duration, "The timeout for IPVS UDP packets, 0 to leave as-is. (e.g. '5s', '1m', '2h22m').")

	fs.StringVar(&c.ClusterCIDR, "cluster-cidr", c.ClusterCIDR, "The CIDR range of the pods in the cluster (for dual-stack clusters, a comma-separated pair, one per IP family). Traffic to a Service from outside it is masqueraded. Ignored if a config file is specified by --config.")
	fs.StringSliceVar(&c.NodePortAddresses, "nodeport-addresses", c.NodePortAddresses, "A list of CIDR ranges that contain valid node IPs, or alternatively, the single string 'primary'. NodePorts are served on node IPs in these ranges only; if unset, on all local IPs. Ignored if a config file is specified by --config.")
	fs.Int32Var(c.OOMScoreAdj, "oom-score-adj", *c.OOMScoreAdj, "The oom-score-adj value for the switchyard process. Values must be within the range [-1000, 1000]. Ignored if a config file is specified by --config.")
	fs.Int32Var(c.Conntrack.MaxPerCore, "conntrack-max-per-core", *c.Conntrack.MaxPerCore, "Maximum number of NAT connections to track per CPU core (0 to leave the limit as-is and ignore conntrack-min).")
	fs.Int32Var(c.Conntrack.Min, "conntrack-min", *c.Conntrack.Min, "Minimum number of conntrack entries to allocate, regardless of conntrack-max-per-core (set conntrack-max-per-core=0 to leave the limit as-is).")
	fs.DurationVar(&c.Conntrack.TCPEstablishedTimeout.Duration, "conntrack-tcp-timeout-established", c.Conntrack.TCPEstablishedTimeout.Duration, "Idle timeout for established TCP connections (0 to leave as-is)")
	fs.DurationVar(&c.Conntrack.TCPCloseWaitTimeout.Duration, "conntrack-tcp-timeout-close-wait", c.Conntrack.TCPCloseWaitTimeout.Duration, "NAT timeout for TCP connections in the CLOSE_WAIT state")
	fs.BoolVar(&c.Conntrack.TCPBeLiberal, "conntrack-tcp-be-liberal", c.Conntrack.TCPBeLiberal, "Enable liberal mode for tracking TCP packets by setting nf_conntrack_tcp_be_liberal to 1")
	fs.DurationVar(&c.Conntrack.UDPTimeout.Duration, "conntrack-udp-timeout", c.Conntrack.UDPTimeout.Duration, "Idle timeout for UNREPLIED UDP connections (0 to leave as-is)")
	fs.DurationVar(&c.Conntrack.UDPStreamTimeout.Duration, "conntrack-udp-timeout-stream", c.Conntrack.UDPStreamTimeout.Duration, "Idle timeout for ASSURED UDP connections (0 to leave as-is)")
	fs.DurationVar(&c.ConfigSyncPeriod.Duration, "config-sync-period", c.ConfigSyncPeriod.Duration, "How often configuration from the apiserver is refreshed. Must be greater than 0.")

	fs.Int32Var(&o.healthzPort, "healthz-port", o.healthzPort, "The port to bind the health check server. Use 0 to disable.")
	fs.Int32Var(&o.metricsPort, "metrics-port", o.metricsPort, "The port to bind the metrics server. Use 0 to disable.")
	// As kube-proxy: hidden from --help, and a warning when given.
	_ = fs.MarkDeprecated("healthz-port", "This flag is deprecated and will be removed in a future release. Please use --healthz-bind-address instead.")
	_ = fs.MarkDeprecated("metrics-port", "This flag is deprecated and will be removed in a future release. Please use --metrics-bind-address instead.")

	// --logging-format, --log-flush-frequency, -v, --vmodule and the output routing flags,
	// bound to the configuration's logging section, from the same library as kube-proxy's.
	logsapi.AddFlags(&c.Logging, fs)

	fs.BoolVar(&o.version, "version", false, "Print the version and exit.")
	// cadvisor's machine package, which kube-proxy imports to count CPUs, registers these
	// on Go's flag set, which kube-proxy adds to its own; only cadvisor's machine.Info
	// reads them, which kube-proxy never calls. switchyard imports it too, to count CPUs
	// the same way (package conntrack), and does not call machine.Info either; these are
	// its own, not adding Go's flag set. Accepted, and read by neither.
	fs.String("boot-id-file", "/proc/sys/kernel/random/boot_id", "Comma-separated list of files to check for boot-id. Use the first one that exists. (Accepted for kube-proxy compatibility; not read.)")
	fs.String("machine-id-file", "/etc/machine-id,/var/lib/dbus/machine-id", "Comma-separated list of files to check for machine-id. Use the first one that exists. (Accepted for kube-proxy compatibility; not read.)")

	fs.DurationVar(&o.syncPeriod, "sync-period", c.syncPeriod, "How often all rules are fully refreshed, in any mode (e.g. '5s', '1m'). Must be greater than 0. Ignored if a config file is specified by --config.")
	fs.DurationVar(&o.minSyncPeriod, "min-sync-period", c.minSyncPeriod, "The minimum period between rule resyncs, in any mode (e.g. '5s', '1m'); 0 resyncs on every change. Ignored if a config file is specified by --config.")
	fs.StringVar(&o.serviceProxyName, "service-proxy-name", "", "Serve only Services labelled service.kubernetes.io/service-proxy-name=<this>; by default only Services without the label. Applies with --config too.")
}

// processFlags applies the flags that are not bound to the configuration, when there is
// no --config (kube-proxy's processV1Alpha1Flags): each mode's sync periods only in that
// mode, decided by --proxy-mode before it defaults to iptables. switchyard's
// --sync-period and --min-sync-period apply in any mode, after them.
func (o *options) processFlags() {
	c := o.config
	ipvs := c.Mode == modeIPVS
	apply := func(flag string, inMode bool, value time.Duration, to *time.Duration, by *string) {
		if o.fs.Changed(flag) && inMode {
			*to, *by = value, "--"+flag
		}
	}
	apply("iptables-sync-period", !ipvs, o.iptablesSyncPeriod, &c.syncPeriod, &o.syncPeriodBy)
	apply("iptables-min-sync-period", !ipvs, o.iptablesMinSyncPeriod, &c.minSyncPeriod, &o.minSyncPeriodBy)
	apply("ipvs-sync-period", ipvs, o.ipvsSyncPeriod, &c.syncPeriod, &o.syncPeriodBy)
	apply("ipvs-min-sync-period", ipvs, o.ipvsMinSyncPeriod, &c.minSyncPeriod, &o.minSyncPeriodBy)
	apply("sync-period", true, o.syncPeriod, &c.syncPeriod, &o.syncPeriodBy)
	apply("min-sync-period", true, o.minSyncPeriod, &c.minSyncPeriod, &o.minSyncPeriodBy)
}

// addressFromDeprecatedFlags applies --healthz-port or --metrics-port to an address, as
// kube-proxy does without --config and --write-config-to: 0 disables the server, another
// port is given to an address that has none.
func addressFromDeprecatedFlags(addr string, port int32) string {
	if port == 0 {
		return ""
	}
	return appendPortIfNeeded(addr, port)
}

// copyLogsFromFlags applies the logging flags given on the command line to a file's
// logging section, as kube-proxy does so that `--config ... -v=5` works: a flag given
// wins over the file, and --vmodule's patterns come before the file's.
func copyLogsFromFlags(from *pflag.FlagSet, to *logsapi.LoggingConfiguration) error {
	var clone pflag.FlagSet
	logsapi.AddFlags(to, &clone)
	vmodule := to.VModule
	to.VModule = nil
	var err error
	clone.VisitAll(func(f *pflag.Flag) {
		given := from.Lookup(f.Name)
		if err != nil || given == nil || !given.Changed {
			return
		}
		if setErr := f.Value.Set(given.Value.String()); setErr != nil {
			err = fmt.Errorf("--%s: %w", f.Name, setErr)
		}
	})
	to.VModule = append(to.VModule, vmodule...)
	return err
}

// ipVar is kube-proxy's IPVar: an IP address. Like kube-proxy's, an empty value leaves
// the setting as it was.
type ipVar struct{ val *string }

func (v *ipVar) Set(s string) error {
	if s == "" {
		return nil
	}
	if netutils.ParseIPSloppy(s) == nil {
		return fmt.Errorf("%q is not a valid IP address", s)
	}
	*v.val = s
	return nil
}

func (v *ipVar) String() string { return *v.val }
func (v *ipVar) Type() string   { return "ip" }

// ipPortVar is kube-proxy's IPPortVar: an IP, or an IP and a port. Like kube-proxy's, an
// empty value leaves the setting as it was, so that --metrics-bind-address= does not
// disable the metrics server.
type ipPortVar struct{ val *string }

func (v *ipPortVar) Set(s string) error {
	if s == "" {
		return nil
	}
	if netutils.ParseIPSloppy(s) != nil {
		*v.val = s
		return nil
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("%q is not in a valid format (ip or ip:port): %w", s, err)
	}
	if netutils.ParseIPSloppy(host) == nil {
		return fmt.Errorf("%q is not a valid IP address", host)
	}
	if _, err := netutils.ParsePort(port, true); err != nil {
		return fmt.Errorf("%q is not a valid number", port)
	}
	*v.val = s
	return nil
}

func (v *ipPortVar) String() string { return *v.val }
func (v *ipPortVar) Type() string   { return "ipport" }
