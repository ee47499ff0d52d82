package config

import (
	"fmt"
	"math"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation/field"
	logsapi "k8s.io/component-base/logs/api/v1"
	netutils "k8s.io/utils/net"

	"github.com/switchyard/switchyard/internal/kubeaddr"
)

// fieldFlags are the flags that set each validated field, for errors to name what the
// user wrote; the sync periods are named by the flag that set them (processFlags).
var fieldFlags = map[string][]string{
	"featureGates":                        {"feature-gates"},
	"mode":                                {"proxy-mode"},
	"clientConnection.burst":              {"kube-api-burst"},
	"healthzBindAddress":                  {"healthz-bind-address", "healthz-port"},
	"metricsBindAddress":                  {"metrics-bind-address", "metrics-port"},
	"showHiddenMetricsForVersion":         {"show-hidden-metrics-for-version"},
	"iptables.masqueradeBit":              {"iptables-masquerade-bit"},
	"ipvs.scheduler":                      {"ipvs-scheduler"},
	"ipvs.excludeCIDRs":                   {"ipvs-exclude-cidrs"},
	"ipvs.tcpTimeout":                     {"ipvs-tcp-timeout"},
	"ipvs.tcpFinTimeout":                  {"ipvs-tcpfin-timeout"},
	"ipvs.udpTimeout":                     {"ipvs-udp-timeout"},
	"clusterCIDR":                         {"cluster-cidr"},
	"nodePortAddresses":                   {"nodeport-addresses"},
	"oomScoreAdj":                         {"oom-score-adj"},
	"conntrack.maxPerCore":                {"conntrack-max-per-core"},
	"conntrack.min":                       {"conntrack-min"},
	"conntrack.tcpEstablishedTimeout":     {"conntrack-tcp-timeout-established"},
	"conntrack.tcpCloseWaitTimeout":       {"conntrack-tcp-timeout-close-wait"},
	"conntrack.udpTimeout":                {"conntrack-udp-timeout"},
	"conntrack.udpStreamTimeout":          {"conntrack-udp-timeout-stream"},
	"configSyncPeriod":                    {"config-sync-period"},
	"logging.format":                      {"logging-format"},
	"logging.flushFrequency":              {"log-flush-frequency"},
	"logging.verbosity":                   {"v"},
	"logging.vmodule":                     {"vmodule"},
	"logging.options.text.splitStream":    {"log-text-split-stream"},
	"logging.options.text.infoBufferSize": {"log-text-info-buffer-size"},
	"logging.options.json.splitStream":    {"log-json-split-stream"},
	"logging.options.json.infoBufferSize": {"log-json-info-buffer-size"},
}

// where names a field in errors: the flag that set it, or the field in the --config
// file. With --config, only the logging flags still set fields.
func (o *options) where(field string) string {
	flags := fieldFlags[field]
	for _, f := range flags {
		if o.fs.Changed(f) && (o.configFile == "" || strings.HasPrefix(field, "logging.")) {
			return "--" + f
		}
	}
	if o.configFile != "" {
		return fmt.Sprintf("%s (in %s)", field, o.configFile)
	}
	if len(flags) > 0 {
		return "--" + flags[0]
	}
	return field
}

// validate checks the complete configuration as kube-proxy's Validate
// (pkg/proxy/apis/config/validation) and its logging setup do, for the settings
// switchyard acts on, and then what switchyard itself cannot run with.
func (o *options) validate(modes []string) []error {
	c := o.config
	var errs []error
	check := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	check(validateMode(string(c.Mode), modes, o.where("mode")))
	check(inRange(int64(*c.IPTables.MasqueradeBit), 0, 31, o.where("iptables.masqueradeBit")))
	check(inRange(int64(*c.Conntrack.MaxPerCore), 0, math.MaxInt32, o.where("conntrack.maxPerCore")))
	check(inRange(int64(*c.Conntrack.Min), 0, math.MaxInt32, o.where("conntrack.min")))
	// kube-proxy checks its ipvs section (but for the scheduler, below) in mode ipvs
	// only, the one mode that reads it.
	ipvs := c.Mode == modeIPVS
	for _, t := range []struct {
		field string
		value time.Duration
		check bool
	}{
		{"conntrack.tcpEstablishedTimeout", c.Conntrack.TCPEstablishedTimeout.Duration, true},
		{"conntrack.tcpCloseWaitTimeout", c.Conntrack.TCPCloseWaitTimeout.Duration, true},
		{"conntrack.udpTimeout", c.Conntrack.UDPTimeout.Duration, true},
		{"conntrack.udpStreamTimeout", c.Conntrack.UDPStreamTimeout.Duration, true},
		{"ipvs.tcpTimeout", c.IPVS.TCPTimeout.Duration, ipvs},
		{"ipvs.tcpFinTimeout", c.IPVS.TCPFinTimeout.Duration, ipvs},
		{"ipvs.udpTimeout", c.IPVS.UDPTimeout.Duration, ipvs},
	} {
		if t.check {
			check(nonNegative(t.value, o.where(t.field)))
		}
	}
	if ipvs {
		_, err := parseExcludeCIDRs(c.IPVS.ExcludeCIDRs, o.where("ipvs.excludeCIDRs"))
		check(err)
	}
	check(inRange(int64(*c.OOMScoreAdj), -1000, 1000, o.where("oomScoreAdj")))
	check(inRange(int64(c.ClientConnection.Burst), 0, math.MaxInt32, o.where("clientConnection.burst")))
	check(positive(c.ConfigSyncPeriod.Duration, o.where("configSyncPeriod")))

	syncWhere, minSyncWhere := o.syncPeriodBy, o.minSyncPeriodBy
	if o.configFile != "" {
		section := modeSection(c.Mode)
		syncWhere, minSyncWhere = o.where(section+".syncPeriod"), o.where(section+".minSyncPeriod")
	}
	check(positive(c.syncPeriod, syncWhere))
	check(nonNegative(c.minSyncPeriod, minSyncWhere))
	if c.minSyncPeriod > c.syncPeriod {
		errs = append(errs, fmt.Errorf("%s (%s) must not exceed %s (%s)", minSyncWhere, c.minSyncPeriod, syncWhere, c.syncPeriod))
	}

	if c.HealthzBindAddress != "" {
		check(validateHostPort(c.HealthzBindAddress, o.where("healthzBindAddress"), "must be IP:port, with a port from 1 to 65535"))
	}
	// kube-proxy's validation requires a metrics address: --metrics-port=0 and an empty
	// --metrics-bind-address do not disable the server.
	check(validateHostPort(c.MetricsBindAddress, o.where("metricsBindAddress"), "must be IP:port, with a port from 1 to 65535; the metrics server cannot be disabled"))
	check(validateNodePortAddresses(c.NodePortAddresses, o.where("nodePortAddresses")))
	check(validateShowHiddenMetricsVersion(c.ShowHiddenMetricsForVersion, o.where("showHiddenMetricsForVersion")))
	errs = append(errs, o.fieldErrors(logsapi.Validate(&c.Logging, o.gates, field.NewPath("logging")))...)
	errs = append(errs, refusedGates(o.gates, o.where("featureGates"))...)

	// What switchyard checks beyond kube-proxy.
	if c.IPVS.Scheduler != "" {
		check(validateScheduler(c.IPVS.Scheduler, o.where("ipvs.scheduler")))
	}
	if c.ClusterCIDR != "" {
		_, err := parseCIDRs(c.ClusterCIDR, o.where("clusterCIDR"))
		check(err)
	}
	return errs
}

// fieldIndex is the index of a list element in a field path ("vmodule[0]").
var fieldIndex = regexp.MustCompile(`\[[0-9]+\]`)

// fieldErrors are a field.ErrorList's errors, naming the flag or field as where does.
func (o *options) fieldErrors(list field.ErrorList) []error {
	var errs []error
	for _, e := range list {
		errs = append(errs, fmt.Errorf("%s: %s", o.where(fieldIndex.ReplaceAllString(e.Field, "")), e.ErrorBody()))
	}
	return errs
}

func validateMode(mode string, modes []string, where string) error {
	if slices.Contains(modes, mode) {
		return nil
	}
	return &InvalidValue{Where: where, Value: mode, Allowed: "valid proxy modes are " + strings.Join(modes, ", ")}
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
// sloppy parser, no spaces): the CIDRs before the first bad one, and an error naming it.
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

// validateHostPort checks an IP:port as kube-proxy's validation does: an IP (as loosely
// as kube-proxy parses one) and a port from 1 to 65535.
func validateHostPort(s, where, allowed string) error {
	host, port, err := net.SplitHostPort(s)
	if err == nil && netutils.ParseIPSloppy(host) != nil {
		if p, err := strconv.Atoi(port); err == nil && p >= 1 && p <= 65535 {
			return nil
		}
	}
	return &InvalidValue{Where: where, Value: s, Allowed: allowed}
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
