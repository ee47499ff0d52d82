package config

import (
	"fmt"
	"io"
	"strings"
)

// Support is what switchyard does with one of kube-proxy's settings (a flag or a
// KubeProxyConfiguration field). The reference table below gives one for every setting of
// kube-proxy v1.35 on Linux; its tests fail when kube-proxy has a setting the table does
// not classify, or the table one kube-proxy does not have.
type Support int

const (
	// Implemented: parsed, and acted on with kube-proxy's meaning and default (the entry
	// names the code, and any difference).
	Implemented Support = iota
	// NoEffect: accepted, and ignored because kube-proxy does nothing with it either on
	// Linux in the iptables and IPVS modes (Windows settings, nftables-mode settings).
	NoEffect
	// Refused: switchyard stops with an error that names the setting and says why.
	Refused
	// Ignored: accepted and ignored although kube-proxy acts on it: a gap.
	Ignored
	// Unparsed: a kube-proxy flag switchyard does not define, so it stops at startup
	// with pflag's "unknown flag", which does not say why: a gap.
	Unparsed
)

var supportLabels = map[Support]string{
	Implemented: "implemented",
	NoEffect:    "ignored: no effect",
	Refused:     "refused",
	Ignored:     "accepted and ignored",
	Unparsed:    "unknown flag",
}

func (s Support) String() string { return supportLabels[s] }

// Setting is one kube-proxy setting and what switchyard does with it.
type Setting struct {
	// Name is the flag without its dashes, or the field's path in the file's JSON names
	// ("iptables.localhostNodePorts").
	Name    string
	Support Support
	// KubeProxy is what kube-proxy v1.35 does with it on Linux, and its default.
	KubeProxy string
	// Switchyard is where switchyard does it (Implemented), or why not; it ends with any
	// difference from kube-proxy.
	Switchyard string
}

// Shared wording of entries that a flag and a field have in common.
const (
	bindAddressKP     = "Overrides kube-proxy's idea of the node's primary IP (otherwise taken from the Node object): the primary IP family, and the node IP of `nodePortAddresses: primary` and of local-traffic detection; an IPv6 one also makes the default healthz and metrics addresses `[::]:10256` and `[::1]:10249`. Default `0.0.0.0`."
	bindAddressSY     = "Parsed and never read: the node's primary IP comes from the Node object, and the default addresses stay IPv4."
	hardFailKP        = "If true, failing to bind the healthz or metrics server stops kube-proxy; if false (default) it logs and retries."
	hardFailSY        = "switchyard always logs and retries (`listen` in cmd/switchyard/main.go): kube-proxy's default."
	profilingKP       = "If true, serves `/debug/pprof` on the metrics server. Default false."
	hiddenMetricsKP   = "Re-enables the metrics hidden since the given previous minor version (`1.34`). Default empty."
	hiddenMetricsSY   = "switchyard hides none of its metrics, but does not check the value as kube-proxy does."
	featureGatesKP    = "Enables or disables kube-proxy's feature gates (`Name=true,...`)."
	featureGatesSY    = "switchyard has no feature gates: it behaves as kube-proxy with every gate at its v1.35 default, whatever is given."
	contentTypeKP     = "Content type of requests to the apiserver (client-go `rest.Config.ContentType`). Default `application/vnd.kubernetes.protobuf`."
	qpsKP             = "Client-side rate limit of requests to the apiserver (client-go `rest.Config.QPS`). Default 5."
	burstKP           = "Client-side burst of requests to the apiserver (client-go `rest.Config.Burst`). Default 10."
	clientConnSY      = "`Config.KubeAPI*` → `clientConfig` (cmd/switchyard/main.go), replacing the kubeconfig's as kube-proxy's createClient does."
	masqBitKP         = "The fwmark bit (0-31) marking packets to masquerade, in iptables and IPVS modes. Default 14."
	masqBitSY         = "`Config.MasqueradeBit` → `masqueradeMark` (cmd/switchyard/main.go), used by both modes' rules."
	masqAllKP         = "Masquerades all traffic sent to Service cluster IPs. Default false."
	masqAllSY         = "`Config.MasqueradeAll` → `proxier.ResolveConfig.MasqueradeAll`."
	localhostNPKP     = "In iptables mode over IPv4, NodePorts also answer on 127.0.0.1 (and `route_localnet` is set) when the node-port addresses include loopback. Default true."
	localhostNPSY     = "`Config.LocalhostNodePorts` (config/config.go), modes/iptables.go."
	schedulerKP       = "The IPVS scheduler of Services in IPVS mode. Default `rr`."
	schedulerSY       = "`Config.IPVSScheduler` → modes/ipvs.go; checked against the kernel at startup. Difference: a name outside Linux's schedulers is refused (exit 2)."
	excludeCIDRsKP    = "In IPVS mode, a virtual server with an address in these CIDRs is never deleted by kube-proxy's syncs (`cleanLegacyService`), whoever made it; `--cleanup` flushes them all the same. A bad CIDR is refused in IPVS mode only. Default none."
	excludeCIDRsSY    = "`Config.IPVSExcludeCIDRs` → `ipvs.Config.ExcludeCIDRs` (`deleteVirtualServer`, ipvs/backend.go): switchyard's syncs delete only its own virtual servers (node contract), and none in these CIDRs; `--cleanup` removes its own there too."
	strictARPKP       = "In IPVS mode, sets `arp_ignore=1` and `arp_announce=2`. Default false."
	strictARPSY       = "`Config.IPVSStrictARP` → `ipvs.PrepareNode` (modes/ipvs.go)."
	ipvsTimeoutSY     = "`Config.IPVS*Timeout` → `ipvs.PrepareNode` (modes/ipvs.go) over netlink, at startup and with `--init-only`."
	detectLocalModeKP = "How traffic from local pods is told apart (it is not masqueraded): `ClusterCIDR` (default), `NodeCIDR`, `BridgeInterface`, `InterfaceNamePrefix`."
	detectLocalModeSY = "switchyard always behaves as `ClusterCIDR` (with `--cluster-cidr`), whatever is given."
	bridgeKP          = "With detect-local-mode `BridgeInterface`, traffic from this bridge is local."
	prefixKP          = "With detect-local-mode `InterfaceNamePrefix`, traffic from interfaces with this prefix is local."
	detectLocalSY     = "Never read: switchyard has only `ClusterCIDR` local detection."
	clusterCIDRKP     = "The pods' CIDRs (one per family). With detect-local-mode `ClusterCIDR`, traffic to a Service from outside them is masqueraded. Default none."
	clusterCIDRSY     = "`Config.ClusterCIDRs` → `proxier.ResolveConfig.ClusterCIDR` per family (`newBackend`, cmd/switchyard/main.go)."
	nodePortAddrsKP   = "CIDRs selecting the node addresses NodePorts answer on, or `primary` (the Node's primary IPs). Default: every address."
	nodePortAddrsSY   = "`Config.NodePortPrefixes` → both modes. Difference: `primary` selects every non-loopback address, not only the primary IPs."
	oomKP             = "The process's oom_score_adj, in [-1000, 1000]. Default -999."
	oomSY             = "`setOOMScoreAdj` (cmd/switchyard/main.go)."
	conntrackMaxKP    = "Sets nf_conntrack_max to max(maxPerCore × CPUs, min), raising the hash size too, and fails startup if it cannot (except on a read-only /sys); maxPerCore 0 leaves it alone. Defaults 32768 and 131072."
	tcpEstablishedKP  = "Sets nf_conntrack_tcp_timeout_established; 0 leaves it alone. Default 24h, so kube-proxy sets it by default."
	tcpCloseWaitKP    = "Sets nf_conntrack_tcp_timeout_close_wait; 0 leaves it alone. Default 1h, so kube-proxy sets it by default."
	tcpBeLiberalKP    = "If true, sets nf_conntrack_tcp_be_liberal to 1. Default false."
	tcpBeLiberalSY    = conntrackSY + " Set before iptables mode reads it (to leave out the INVALID-drop rule when it is on), as kube-proxy does."
	udpTimeoutKP      = "Sets nf_conntrack_udp_timeout; 0 (default) leaves it alone."
	udpStreamKP       = "Sets nf_conntrack_udp_timeout_stream; 0 (default) leaves it alone."
	conntrackSY       = "`Config.Conntrack` → `conntrack.Configure` (conntrack/settings.go), at startup and with `--init-only`."
	configSyncKP      = "The resync period of the Service, EndpointSlice and Node informers. Default 15m."
	configSyncSY      = "`Config.ConfigSyncPeriod` → `proxier.Watch`."
	syncAliasSY       = "Sets `Config.SyncPeriod` (the proxier's full-sync bound). Difference: applied whatever the mode."
	minSyncAliasSY    = "Sets `Config.MinSyncPeriod`. Difference: applied whatever the mode."
	metricsAddrKP     = "IP[:port] of the metrics server (`/metrics`, `/healthz`, `/proxyMode`); the port defaults to 10249. Default `127.0.0.1:10249`."
	healthzAddrKP     = "IP[:port] of the health server (`/healthz`, `/livez`); the port defaults to 10256. Default `0.0.0.0:10256`."
	addrSY            = "`listen` (cmd/switchyard/main.go). Difference: an IP without a port is refused (exit 2)."
	hostnameKP        = "The Node's name, trimmed and lower-cased; default the hostname."
	hostnameSY        = "`Config.NodeName` (config/config.go)."
	kubeconfigKP      = "The kubeconfig file; empty (default) uses the in-cluster configuration."
	kubeconfigSY      = "`newClient` (cmd/switchyard/main.go)."
	modeKP            = "The proxy mode: `iptables` (default), `ipvs` or `nftables`."
	modeSY            = "`Config.Mode` → the registry of modes (package modes). `nftables` is refused (exit 2, with the valid modes)."
	loggingFormatKP   = "Log format, `text` (default) or `json`."
	flushKP           = "Longest time between log flushes. Default 5s."
	verbosityKP       = "Log verbosity (klog `-v`). Default 0."
	vmoduleKP         = "Per-file log verbosity (klog `--vmodule`)."
	splitStreamKP     = "Alpha (gate LoggingAlphaOptions): info messages to stdout, errors to stderr. Default false."
	infoBufferKP      = "Alpha (gate LoggingAlphaOptions): buffer for info messages of a split stream. Default 0."
	loggingFileSY     = "The file's `logging` section is never read; only the `-v` and `--vmodule` flags set logging."
	windowsKP         = "Windows (kernelspace mode) only: no effect on Linux."
	windowsSY         = "Never read, as on Linux kube-proxy."
	nftablesKP        = "Read only in mode `nftables`."
	nftablesSY        = "Never read: switchyard refuses mode `nftables`, and kube-proxy's iptables and IPVS modes do not read it."
	logFlagsSY        = "Not defined: switchyard logs klog's text format."
)

// ipvsTimeoutKP is what kube-proxy does with one of the IPVS timeouts.
func ipvsTimeoutKP(of string) string {
	return "In IPVS mode, sets IPVS's timeout of " + of + " (`ipvsadm --set`) at startup, and only logs a failure; 0 (default) leaves it as is. A negative one is refused, in IPVS mode only."
}

// Flags are kube-proxy v1.35's command-line flags on Linux, in the order kube-proxy
// defines them (cmd/kube-proxy/app/options.go, then the logging flags of
// k8s.io/component-base/logs/api/v1, then those the command gets elsewhere).
var Flags = []Setting{
	{"config", Implemented, "Path of a KubeProxyConfiguration file. When given, kube-proxy ignores every other flag except `--hostname-override`, `--master`, `--cleanup`, `--init-only`, `--write-config-to` and the logging flags.",
		"`loadFile`, `applyFile` (config/config.go). Difference: flags given explicitly override the file's values."},
	{"write-config-to", Unparsed, "Writes the resolved configuration (defaults, or the `--config` file's) as YAML to this path and exits.", ""},
	{"cleanup", Implemented, "Removes the rules of every proxy mode and exits.", "`cleanup` (cmd/switchyard/main.go)."},
	{"feature-gates", Ignored, featureGatesKP + " Ignored with `--config`.", featureGatesSY},
	{"kubeconfig", Implemented, kubeconfigKP, kubeconfigSY},
	{"master", Implemented, "The apiserver's address, overriding the kubeconfig's.", kubeconfigSY},
	{"kube-api-content-type", Implemented, contentTypeKP, clientConnSY},
	{"kube-api-burst", Implemented, burstKP, clientConnSY},
	{"kube-api-qps", Implemented, qpsKP, clientConnSY},
	{"hostname-override", Implemented, hostnameKP + " Applies even with `--config`.", hostnameSY},
	{"bind-address", Ignored, bindAddressKP + " Ignored with `--config`.", bindAddressSY},
	{"healthz-bind-address", Implemented, healthzAddrKP, addrSY},
	{"metrics-bind-address", Implemented, metricsAddrKP + " Empty disables it.", addrSY},
	{"bind-address-hard-fail", Unparsed, hardFailKP, ""},
	{"profiling", Unparsed, profilingKP, ""},
	{"show-hidden-metrics-for-version", Unparsed, hiddenMetricsKP, ""},
	{"init-only", Implemented, "Makes the node settings that need full privileges, and exits.", "`initNode` (cmd/switchyard/main.go)."},
	{"proxy-mode", Implemented, modeKP + " Ignored with `--config`.", modeSY},
	{"iptables-masquerade-bit", Implemented, masqBitKP, masqBitSY},
	{"masquerade-all", Implemented, masqAllKP, masqAllSY},
	{"iptables-localhost-nodeports", Implemented, localhostNPKP, localhostNPSY},
	{"iptables-sync-period", Implemented, "The longest time between full syncs, when the mode is not `ipvs`. Default 30s.", syncAliasSY},
	{"iptables-min-sync-period", Implemented, "The shortest time between syncs, when the mode is not `ipvs`; 0 syncs on every change. Default 1s.", minSyncAliasSY},
	{"ipvs-sync-period", Implemented, "The longest time between full syncs, in mode `ipvs`. Default 30s.", syncAliasSY},
	{"ipvs-min-sync-period", Implemented, "The shortest time between syncs, in mode `ipvs`. Default 1s.", minSyncAliasSY},
	{"ipvs-scheduler", Implemented, schedulerKP, schedulerSY},
	{"ipvs-exclude-cidrs", Implemented, excludeCIDRsKP, excludeCIDRsSY},
	{"ipvs-strict-arp", Implemented, strictARPKP, strictARPSY},
	{"ipvs-tcp-timeout", Implemented, ipvsTimeoutKP("idle TCP connections"), ipvsTimeoutSY},
	{"ipvs-tcpfin-timeout", Implemented, ipvsTimeoutKP("TCP connections after a FIN"), ipvsTimeoutSY},
	{"ipvs-udp-timeout", Implemented, ipvsTimeoutKP("UDP flows"), ipvsTimeoutSY},
	{"detect-local-mode", Unparsed, detectLocalModeKP, ""},
	{"pod-bridge-interface", Unparsed, bridgeKP, ""},
	{"pod-interface-name-prefix", Unparsed, prefixKP, ""},
	{"cluster-cidr", Implemented, clusterCIDRKP, clusterCIDRSY},
	{"nodeport-addresses", Implemented, nodePortAddrsKP, nodePortAddrsSY},
	{"oom-score-adj", Implemented, oomKP, oomSY},
	{"conntrack-max-per-core", Implemented, conntrackMaxKP, conntrackSY},
	{"conntrack-min", Implemented, conntrackMaxKP, conntrackSY},
	{"conntrack-tcp-timeout-established", Implemented, tcpEstablishedKP, conntrackSY},
	{"conntrack-tcp-timeout-close-wait", Implemented, tcpCloseWaitKP, conntrackSY},
	{"conntrack-tcp-be-liberal", Implemented, tcpBeLiberalKP, tcpBeLiberalSY},
	{"conntrack-udp-timeout", Implemented, udpTimeoutKP, conntrackSY},
	{"conntrack-udp-timeout-stream", Implemented, udpStreamKP, conntrackSY},
	{"config-sync-period", Implemented, configSyncKP, configSyncSY},
	{"healthz-port", Unparsed, "Deprecated and hidden: without `--config`, the port of the health server; 0 disables it. Default 10256.", ""},
	{"metrics-port", Unparsed, "Deprecated and hidden: without `--config`, the port of the metrics server; 0 disables it. Default 10249.", ""},
	{"logging-format", Unparsed, loggingFormatKP, logFlagsSY},
	{"log-flush-frequency", Unparsed, flushKP, logFlagsSY},
	{"v", Implemented, verbosityKP, "klog's own flag (`bindFlags`, config/config.go)."},
	{"vmodule", Implemented, vmoduleKP, "klog's own flag (`bindFlags`, config/config.go)."},
	{"log-text-split-stream", Unparsed, splitStreamKP, logFlagsSY},
	{"log-text-info-buffer-size", Unparsed, infoBufferKP, logFlagsSY},
	{"log-json-split-stream", Unparsed, splitStreamKP + " (json format)", logFlagsSY},
	{"log-json-info-buffer-size", Unparsed, infoBufferKP + " (json format)", logFlagsSY},
	{"version", Implemented, "Prints the version and exits; `--version=raw` prints details.", "cmd/switchyard/main.go prints switchyard's version. Difference: a boolean, so `--version=raw` is refused."},
	{"help", Implemented, "Prints the usage and exits.", "pflag."},
	{"boot-id-file", Unparsed, "Registered on Go's flag set by cadvisor's machine package, which kube-proxy imports to count CPUs; kube-proxy does not read it.", ""},
	{"machine-id-file", Unparsed, "Registered on Go's flag set by cadvisor's machine package, which kube-proxy imports to count CPUs; kube-proxy does not read it.", ""},
}

// OwnFlags are switchyard's flags that kube-proxy does not have.
var OwnFlags = []Setting{
	{"sync-period", Implemented, "", "The longest time between full syncs, in any mode (kube-proxy's `--iptables-sync-period`/`--ipvs-sync-period`). Default 30s."},
	{"min-sync-period", Implemented, "", "The shortest time between syncs, in any mode. Default 1s."},
	{"service-proxy-name", Implemented, "", "Serve only Services labelled `service.kubernetes.io/service-proxy-name` with this value; kube-proxy serves only Services without the label (the default here too)."},
}

// Fields are the fields of kube-proxy v1.35's KubeProxyConfiguration
// (kubeproxy.config.k8s.io/v1alpha1), in the order of the type, nested fields by path.
var Fields = []Setting{
	{"apiVersion", Implemented, "Must be `kubeproxy.config.k8s.io/v1alpha1`.", "`loadFile` (config/config.go)."},
	{"kind", Implemented, "Must be `KubeProxyConfiguration`.", "`loadFile` (config/config.go)."},
	{"featureGates", Ignored, featureGatesKP, featureGatesSY},
	{"clientConnection.kubeconfig", Implemented, kubeconfigKP, kubeconfigSY},
	{"clientConnection.acceptContentTypes", Implemented, "Accept header of requests to the apiserver (client-go `rest.Config.AcceptContentTypes`). Default empty.", clientConnSY},
	{"clientConnection.contentType", Implemented, contentTypeKP, clientConnSY},
	{"clientConnection.qps", Implemented, qpsKP, clientConnSY},
	{"clientConnection.burst", Implemented, burstKP, clientConnSY},
	{"logging.format", Ignored, loggingFormatKP, loggingFileSY},
	{"logging.flushFrequency", Ignored, flushKP, loggingFileSY},
	{"logging.verbosity", Ignored, verbosityKP, loggingFileSY},
	{"logging.vmodule", Ignored, vmoduleKP, loggingFileSY},
	{"logging.options.text.splitStream", Ignored, splitStreamKP, loggingFileSY},
	{"logging.options.text.infoBufferSize", Ignored, infoBufferKP, loggingFileSY},
	{"logging.options.json.splitStream", Ignored, splitStreamKP + " (json format)", loggingFileSY},
	{"logging.options.json.infoBufferSize", Ignored, infoBufferKP + " (json format)", loggingFileSY},
	{"hostnameOverride", Implemented, hostnameKP, hostnameSY},
	{"bindAddress", Ignored, bindAddressKP, "Never read: the node's primary IP comes from the Node object, and the default addresses stay IPv4."},
	{"healthzBindAddress", Implemented, healthzAddrKP, addrSY},
	{"metricsBindAddress", Implemented, metricsAddrKP, addrSY},
	{"bindAddressHardFail", Ignored, hardFailKP, hardFailSY},
	{"enableProfiling", Ignored, profilingKP, "Never read: switchyard serves no `/debug/pprof`."},
	{"showHiddenMetricsForVersion", Ignored, hiddenMetricsKP, hiddenMetricsSY},
	{"mode", Implemented, modeKP, modeSY},
	{"iptables.masqueradeBit", Implemented, masqBitKP, masqBitSY},
	{"iptables.masqueradeAll", Implemented, masqAllKP, masqAllSY},
	{"iptables.localhostNodePorts", Implemented, localhostNPKP, localhostNPSY},
	{"iptables.syncPeriod", Implemented, "With a mode other than `ipvs` and `nftables`: the longest time between full syncs. Default 30s.", "`fileSyncPeriods` (config/config.go), chosen by the file's mode."},
	{"iptables.minSyncPeriod", Implemented, "With a mode other than `ipvs` and `nftables`: the shortest time between syncs. Default 1s.", "`fileSyncPeriods` (config/config.go), chosen by the file's mode."},
	{"ipvs.syncPeriod", Implemented, "In mode `ipvs`: the longest time between full syncs. Default 30s.", "`fileSyncPeriods` (config/config.go), chosen by the file's mode (not by a `--proxy-mode` given with it)."},
	{"ipvs.minSyncPeriod", Implemented, "In mode `ipvs`: the shortest time between syncs. No default: unset or 0, a file of mode `ipvs` syncs on every change.", "`fileSyncPeriods` (config/config.go), chosen by the file's mode (not by a `--proxy-mode` given with it). Difference: unset or 0 keeps 1s."},
	{"ipvs.scheduler", Implemented, schedulerKP, schedulerSY},
	{"ipvs.excludeCIDRs", Implemented, excludeCIDRsKP, excludeCIDRsSY},
	{"ipvs.strictARP", Implemented, strictARPKP, strictARPSY},
	{"ipvs.tcpTimeout", Implemented, ipvsTimeoutKP("idle TCP connections"), ipvsTimeoutSY},
	{"ipvs.tcpFinTimeout", Implemented, ipvsTimeoutKP("TCP connections after a FIN"), ipvsTimeoutSY},
	{"ipvs.udpTimeout", Implemented, ipvsTimeoutKP("UDP flows"), ipvsTimeoutSY},
	{"nftables.masqueradeBit", NoEffect, nftablesKP, nftablesSY},
	{"nftables.masqueradeAll", NoEffect, nftablesKP, nftablesSY},
	{"nftables.syncPeriod", NoEffect, nftablesKP, nftablesSY},
	{"nftables.minSyncPeriod", NoEffect, nftablesKP, nftablesSY},
	{"winkernel.networkName", NoEffect, windowsKP, windowsSY},
	{"winkernel.sourceVip", NoEffect, windowsKP, windowsSY},
	{"winkernel.enableDSR", NoEffect, windowsKP, windowsSY},
	{"winkernel.rootHnsEndpointName", NoEffect, windowsKP, windowsSY},
	{"winkernel.forwardHealthCheckVip", NoEffect, windowsKP, windowsSY},
	{"detectLocalMode", Ignored, detectLocalModeKP, detectLocalModeSY},
	{"detectLocal.bridgeInterface", Ignored, bridgeKP, detectLocalSY},
	{"detectLocal.interfaceNamePrefix", Ignored, prefixKP, detectLocalSY},
	{"clusterCIDR", Implemented, clusterCIDRKP, clusterCIDRSY},
	{"nodePortAddresses", Implemented, nodePortAddrsKP, nodePortAddrsSY},
	{"oomScoreAdj", Implemented, oomKP, oomSY},
	{"conntrack.maxPerCore", Implemented, conntrackMaxKP, conntrackSY},
	{"conntrack.min", Implemented, conntrackMaxKP, conntrackSY},
	{"conntrack.tcpEstablishedTimeout", Implemented, tcpEstablishedKP, conntrackSY},
	{"conntrack.tcpCloseWaitTimeout", Implemented, tcpCloseWaitKP, conntrackSY},
	{"conntrack.tcpBeLiberal", Implemented, tcpBeLiberalKP, tcpBeLiberalSY},
	{"conntrack.udpTimeout", Implemented, udpTimeoutKP, conntrackSY},
	{"conntrack.udpStreamTimeout", Implemented, udpStreamKP, conntrackSY},
	{"configSyncPeriod", Implemented, configSyncKP, configSyncSY},
	{"portRange", NoEffect, "Unused since the userspace proxy was removed.", "Never read."},
	{"windowsRunAsService", NoEffect, windowsKP, windowsSY},
}

// FileBehaviour is how switchyard reads the file as a whole, where it differs from
// kube-proxy (checked against the v1.35.4 binary's --write-config-to).
var FileBehaviour = []string{
	"kube-proxy ignores almost every flag when `--config` is given (see `--config`); switchyard lets flags given explicitly override the file. So `--config` with `--proxy-mode=ipvs` runs IPVS mode in switchyard, while kube-proxy runs the file's mode; the file's sync periods are then still taken from the section of the file's mode.",
	"An unknown field stops switchyard (strict decoding); kube-proxy falls back to lenient decoding, logs a warning and ignores the field.",
	"Keys match case-insensitively in switchyard (`Mode: ipvs` sets the mode); kube-proxy treats a key spelled in another case as unknown and ignores it.",
	"Only the first YAML document is read, in both (a second document is dropped silently).",
}

// WriteReference writes docs/configuration.md: the reference tables, generated from
// Flags, OwnFlags, Fields and FileBehaviour (go run ./hack/configdoc).
func WriteReference(w io.Writer) error {
	var b strings.Builder
	b.WriteString("<!-- Generated by `go run ./hack/configdoc` from config/reference.go. DO NOT EDIT. -->\n\n")
	b.WriteString("# Configuration reference\n\n")
	b.WriteString("Every command-line flag and every `KubeProxyConfiguration` (`kubeproxy.config.k8s.io/v1alpha1`) field of kube-proxy v1.35 on Linux, and what switchyard does with it:\n\n")
	for _, s := range []Support{Implemented, NoEffect, Refused, Ignored, Unparsed} {
		fmt.Fprintf(&b, "- **%s**: %s\n", s, supportMeanings[s])
	}
	b.WriteString("\nThe unit tests of package config fail when kube-proxy has a flag or field this page does not classify, or this page one kube-proxy does not have.\n")
	writeSection(&b, "Flags", "flag", "--", Flags)
	writeSection(&b, "switchyard's own flags", "flag", "--", OwnFlags)
	writeSection(&b, "KubeProxyConfiguration fields", "field", "", Fields)
	b.WriteString("\n## Reading the file\n\n")
	for _, s := range FileBehaviour {
		fmt.Fprintf(&b, "- %s\n", s)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

var supportMeanings = map[Support]string{
	Implemented: "parsed and acted on with kube-proxy's meaning and default; the entry names the code, and any difference.",
	NoEffect:    "accepted and ignored, as kube-proxy itself does nothing with it on Linux in the iptables and IPVS modes.",
	Refused:     "switchyard stops with an error naming it and saying why.",
	Ignored:     "accepted, and ignored although kube-proxy acts on it: a gap.",
	Unparsed:    "switchyard stops at startup with `unknown flag`, which does not say why, although kube-proxy accepts it: a gap.",
}

func writeSection(b *strings.Builder, title, column, prefix string, settings []Setting) {
	counts := map[Support]int{}
	for _, s := range settings {
		counts[s.Support]++
	}
	fmt.Fprintf(b, "\n## %s\n\n", title)
	var summary []string
	for _, s := range []Support{Implemented, NoEffect, Refused, Ignored, Unparsed} {
		if counts[s] > 0 {
			summary = append(summary, fmt.Sprintf("%d %s", counts[s], s))
		}
	}
	fmt.Fprintf(b, "%d: %s.\n\n", len(settings), strings.Join(summary, ", "))
	fmt.Fprintf(b, "| %s | switchyard | kube-proxy | in switchyard |\n|---|---|---|---|\n", column)
	for _, s := range settings {
		fmt.Fprintf(b, "| `%s%s` | %s | %s | %s |\n", prefix, s.Name, s.Support, cell(s.KubeProxy), cell(s.Switchyard))
	}
}

// cell keeps a table cell on one row.
func cell(s string) string {
	if s == "" {
		return "—"
	}
	return strings.ReplaceAll(s, "|", `\|`)
}
