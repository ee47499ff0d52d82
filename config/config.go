// Package config turns switchyard's command line and its optional KubeProxyConfiguration
// file into one validated Config. Flags and file keep kube-proxy's names and meanings,
// and are combined as kube-proxy combines them, so that an operator's existing DaemonSet
// arguments and ConfigMap work unchanged: with --config the file is the configuration,
// and almost every flag is ignored.
package config

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/pflag"
	clientfeatures "k8s.io/client-go/features"
	"k8s.io/component-base/featuregate"
	"k8s.io/component-base/logs"
	logsapi "k8s.io/component-base/logs/api/v1"
	"k8s.io/klog/v2"

	"github.com/switchyard/switchyard/conntrack"
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
	// MetricsBindAddress and HealthzBindAddress are IP:port; an empty HealthzBindAddress
	// (--healthz-port=0) disables the health server. The metrics server cannot be
	// disabled, as in kube-proxy.
	MetricsBindAddress string
	HealthzBindAddress string
	// BindAddressHardFail makes a health or metrics server that fails stop the process
	// instead of retrying.
	BindAddressHardFail bool
	// EnableProfiling serves /debug/pprof and /debug/flags/v on the metrics server.
	EnableProfiling  bool
	ServiceProxyName string
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
	// ConfigFile is the --config file, which switchyard watches as kube-proxy does: it
	// exits when the file is written.
	ConfigFile string
	// Cleanup asks to remove everything switchyard owns on the node and exit.
	Cleanup bool
	// InitOnly asks to make the node settings that need full privileges and exit.
	InitOnly bool
}

// Defaults are kube-proxy's defaults for the same settings, without a node name.
func Defaults() Config {
	c := defaultKubeProxyConfig()
	c.Mode = modeIPTables
	return c.switchyardConfig()
}

// switchyardConfig is what switchyard runs with from a complete, valid kube-proxy
// configuration; the node name and switchyard's own settings are not in it.
func (c *kubeProxyConfig) switchyardConfig() Config {
	// Validation has parsed them already.
	clusterCIDRs, _ := parseCIDRs(c.ClusterCIDR, "clusterCIDR")
	scheduler := c.IPVS.Scheduler
	if scheduler == "" {
		// kube-proxy's IPVS proxier schedules with round robin when none is given.
		scheduler = "rr"
	}
	// validate checks them in mode ipvs only, as kube-proxy does; outside it, where no
	// mode reads them, Config holds those before the first bad one.
	excludeCIDRs, _ := parseExcludeCIDRs(c.IPVS.ExcludeCIDRs, "ipvs.excludeCIDRs")
	return Config{
		Mode:                      string(c.Mode),
		Kubeconfig:                c.ClientConnection.Kubeconfig,
		KubeAPIContentType:        c.ClientConnection.ContentType,
		KubeAPIAcceptContentTypes: c.ClientConnection.AcceptContentTypes,
		KubeAPIQPS:                c.ClientConnection.QPS,
		KubeAPIBurst:              c.ClientConnection.Burst,
		ClusterCIDRs:              clusterCIDRs,
		MasqueradeAll:             c.masqueradeAll,
		MasqueradeBit:             *c.IPTables.MasqueradeBit,
		SyncPeriod:                c.syncPeriod,
		MinSyncPeriod:             c.minSyncPeriod,
		ConfigSyncPeriod:          c.ConfigSyncPeriod.Duration,
		MetricsBindAddress:        c.MetricsBindAddress,
		HealthzBindAddress:        c.HealthzBindAddress,
		BindAddressHardFail:       c.BindAddressHardFail,
		EnableProfiling:           c.EnableProfiling,
		Conntrack: conntrack.Settings{
			MaxPerCore: *c.Conntrack.MaxPerCore,
			Min:        *c.Conntrack.Min,
			// Never nil: defaulted, as kube-proxy defaults them (24h and 1h), when the
			// file leaves them out; a 0 given leaves the sysctl alone.
			TCPEstablishedTimeout: c.Conntrack.TCPEstablishedTimeout.Duration,
			TCPCloseWaitTimeout:   c.Conntrack.TCPCloseWaitTimeout.Duration,
			TCPBeLiberal:          c.Conntrack.TCPBeLiberal,
			UDPTimeout:            c.Conntrack.UDPTimeout.Duration,
			UDPStreamTimeout:      c.Conntrack.UDPStreamTimeout.Duration,
		},
		OOMScoreAdj:                *c.OOMScoreAdj,
		NodePortAddresses:          c.NodePortAddresses,
		IPTablesLocalhostNodePorts: *c.IPTables.LocalhostNodePorts,
		IPVSScheduler:              scheduler,
		IPVSStrictARP:              c.IPVS.StrictARP,
		IPVSTCPTimeout:             c.IPVS.TCPTimeout.Duration,
		IPVSTCPFinTimeout:          c.IPVS.TCPFinTimeout.Duration,
		IPVSUDPTimeout:             c.IPVS.UDPTimeout.Duration,
		IPVSExcludeCIDRs:           excludeCIDRs,
	}
}

// resolve is the Config of a complete, valid command line.
func (o *options) resolve() (Config, error) {
	cfg := o.config.switchyardConfig()
	name, err := hostname(o.config.HostnameOverride)
	if err != nil {
		return Config{}, fmt.Errorf("the node name: %w", err)
	}
	cfg.NodeName = name
	cfg.Master = o.master
	cfg.ConfigFile = o.configFile
	cfg.ServiceProxyName = o.serviceProxyName
	cfg.Cleanup = o.cleanup
	cfg.InitOnly = o.initOnly
	return cfg, nil
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
	// WriteConfigTo is --write-config-to: write the configuration there (WriteConfig)
	// and exit.
	WriteConfigTo string

	kubeProxy *kubeProxyConfig
	gates     featuregate.FeatureGate
}

// Parse reads the command line (without the program name) and, when --config names one,
// the configuration file, and resolves them as kube-proxy v1.35 does (its Options.Complete
// and Validate): with --config, the file is the whole configuration and the other flags
// are ignored, except --hostname-override, --master, --cleanup, --init-only,
// --write-config-to, the logging flags, and switchyard's --service-proxy-name. modes are
// the names of the proxy modes, in the order help and errors list them; they come from
// the registry of modes (package modes), which builds backends from a Config and so
// cannot be imported here. On --help it returns pflag.ErrHelp and prints nothing: the
// command prints FlagUsages under its own usage. All problems found are returned
// together in a *UsageError.
func Parse(args, modes []string, output io.Writer) (*Parsed, error) {
	o := newOptions()
	fs := newFlagSet(o, modes)
	fs.SetOutput(output)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return nil, err
		}
		return nil, &UsageError{Errs: []error{err}}
	}
	if fs.NArg() > 0 {
		return nil, &UsageError{Errs: []error{fmt.Errorf("unexpected arguments %q: switchyard takes only flags", fs.Args())}}
	}
	if o.version {
		return &Parsed{Version: true}, nil
	}
	// As kube-proxy, problems completing the configuration (reading the file, the
	// hostname, the feature gates) are reported before, and instead of, validation's.
	if errs := o.complete(klog.Background()); len(errs) > 0 {
		return nil, &UsageError{Errs: errs}
	}
	if errs := o.validate(modes); len(errs) > 0 {
		return nil, &UsageError{Errs: errs}
	}
	cfg, err := o.resolve()
	if err != nil {
		return nil, &UsageError{Errs: []error{err}}
	}
	return &Parsed{Config: cfg, WriteConfigTo: o.writeConfigTo, kubeProxy: o.config, gates: o.gates}, nil
}

// FlagUsages is the flags' part of switchyard's usage.
func FlagUsages(modes []string) string {
	return newFlagSet(newOptions(), modes).FlagUsages()
}

func newFlagSet(o *options, modes []string) *pflag.FlagSet {
	fs := pflag.NewFlagSet("switchyard", pflag.ContinueOnError)
	fs.SortFlags = false
	fs.Usage = func() {}
	o.addFlags(fs, modes)
	o.fs = fs
	return fs
}

// complete resolves the configuration as kube-proxy's Options.Complete: the deprecated
// port flags (only without --config and --write-config-to), then either the file with
// the logging flags copied over it or the flags kube-proxy applies itself, then the
// defaults that depend on the mode, --hostname-override, and the feature gates.
func (o *options) complete(logger klog.Logger) []error {
	if o.configFile == "" && o.writeConfigTo == "" {
		o.config.HealthzBindAddress = addressFromDeprecatedFlags(o.config.HealthzBindAddress, o.healthzPort)
		o.config.MetricsBindAddress = addressFromDeprecatedFlags(o.config.MetricsBindAddress, o.metricsPort)
	}
	if o.configFile != "" {
		c, err := loadFile(o.configFile, logger)
		if err != nil {
			return []error{err}
		}
		if err := copyLogsFromFlags(o.fs, &c.Logging); err != nil {
			return []error{err}
		}
		o.config = c
	} else {
		o.processFlags()
	}
	// kube-proxy's platformApplyDefaults, where they concern switchyard's modes.
	if o.config.Mode == "" {
		o.config.Mode = modeIPTables
	}
	if o.config.DetectLocalMode == "" {
		o.config.DetectLocalMode = "ClusterCIDR"
	}
	var errs []error
	if o.hostnameOverride != "" {
		name := strings.TrimSpace(o.hostnameOverride)
		if name == "" {
			errs = append(errs, &InvalidValue{Where: "--hostname-override", Value: o.hostnameOverride, Allowed: "must not be blank"})
		}
		o.config.HostnameOverride = strings.ToLower(name)
	}
	o.gates = newFeatureGate()
	if err := o.gates.SetFromMap(o.config.FeatureGates); err != nil {
		errs = append(errs, fmt.Errorf("%s: %w", o.where("featureGates"), err))
	}
	return errs
}

// WriteConfig writes the configuration to WriteConfigTo as kube-proxy's --write-config-to
// does: a KubeProxyConfiguration in YAML, every field given.
func (p *Parsed) WriteConfig() (err error) {
	f, err := os.Create(p.WriteConfigTo)
	if err != nil {
		return fmt.Errorf("--write-config-to: %w", err)
	}
	defer func() {
		if cerr := f.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("--write-config-to: %w", cerr)
		}
	}()
	if err := p.kubeProxy.writeFile(f); err != nil {
		return fmt.Errorf("--write-config-to: writing %s: %w", p.WriteConfigTo, err)
	}
	return nil
}

// Apply makes the logging configuration and the feature gates take effect in this process
// as they do in kube-proxy: logging as its logging section and flags say (the same
// component-base code), and client-go reading the gates. It may be called once per
// process, before anything else logs.
func (p *Parsed) Apply() error {
	// As kube-proxy (component-base's cli.Run): the standard library's log goes to klog.
	logs.InitLogs()
	if err := logsapi.ValidateAndApply(&p.kubeProxy.Logging, p.gates); err != nil {
		return fmt.Errorf("applying the logging configuration: %w", err)
	}
	clientfeatures.ReplaceFeatureGates(clientGates{p.gates})
	return nil
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
