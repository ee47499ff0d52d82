package config

import (
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
	"k8s.io/component-base/featuregate"
)

const header = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n"

// parseNode parses args as on node-a.
func parseNode(args ...string) (*Parsed, error) {
	return Parse(append(args, "--hostname-override=node-a"), modeNames, io.Discard)
}

// TestSyncPeriods follows kube-proxy's processV1Alpha1Flags and its file conversion: each
// mode's sync period flags apply only in that mode, and a file's periods come from the
// section of the file's mode, with that section's defaults.
func TestSyncPeriods(t *testing.T) {
	ipvsFile := writeFile(t, header+"mode: ipvs\nipvs:\n  syncPeriod: 20s\niptables:\n  syncPeriod: 45s\n  minSyncPeriod: 2s\n")
	iptablesFile := writeFile(t, header+"iptables:\n  syncPeriod: 45s\n  minSyncPeriod: 0s\nipvs:\n  syncPeriod: 20s\n  minSyncPeriod: 3s\n")
	tests := []struct {
		name          string
		args          []string
		sync, minSync time.Duration
	}{
		{name: "defaults", sync: 30 * time.Second, minSync: time.Second},
		{name: "iptables flags without a mode", args: []string{"--iptables-sync-period=45s", "--iptables-min-sync-period=0s"}, sync: 45 * time.Second},
		{name: "iptables flags in IPVS mode are ignored", args: []string{"--proxy-mode=ipvs", "--iptables-sync-period=45s", "--iptables-min-sync-period=0s"}, sync: 30 * time.Second, minSync: time.Second},
		{name: "IPVS flags in iptables mode are ignored", args: []string{"--ipvs-sync-period=20s", "--ipvs-min-sync-period=0s"}, sync: 30 * time.Second, minSync: time.Second},
		{name: "IPVS flags in IPVS mode", args: []string{"--proxy-mode=ipvs", "--ipvs-sync-period=20s", "--ipvs-min-sync-period=0s"}, sync: 20 * time.Second},
		{name: "switchyard's flags in any mode, over the mode's", args: []string{"--proxy-mode=ipvs", "--ipvs-sync-period=20s", "--sync-period=40s", "--min-sync-period=3s"}, sync: 40 * time.Second, minSync: 3 * time.Second},
		{name: "a file in IPVS mode: its ipvs section, where minSyncPeriod has no default", args: []string{"--config=" + ipvsFile}, sync: 20 * time.Second},
		{name: "a file in iptables mode: its iptables section, where 0s is the 1s default", args: []string{"--config=" + iptablesFile}, sync: 45 * time.Second, minSync: time.Second},
		{name: "flags are ignored with a file", args: []string{"--config=" + iptablesFile, "--sync-period=1m", "--iptables-sync-period=1m", "--min-sync-period=0s"}, sync: 45 * time.Second, minSync: time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseNode(tc.args...)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if got.Config.SyncPeriod != tc.sync || got.Config.MinSyncPeriod != tc.minSync {
				t.Errorf("sync period %s, min %s; want %s, %s", got.Config.SyncPeriod, got.Config.MinSyncPeriod, tc.sync, tc.minSync)
			}
		})
	}
}

// TestServerAddresses follows kube-proxy's address flags: an empty value changes nothing,
// an IP alone takes the port of the deprecated --healthz-port or --metrics-port (default
// 10256 and 10249), port 0 disables the health server, and none of that applies with
// --config or --write-config-to.
func TestServerAddresses(t *testing.T) {
	file := writeFile(t, header+"healthzBindAddress: 10.0.0.1\nmetricsBindAddress: \"::\"\n")
	tests := []struct {
		name            string
		args            []string
		healthz, metric string
	}{
		{name: "defaults", healthz: "0.0.0.0:10256", metric: "127.0.0.1:10249"},
		{name: "an empty value changes nothing", args: []string{"--healthz-bind-address=", "--metrics-bind-address="}, healthz: "0.0.0.0:10256", metric: "127.0.0.1:10249"},
		{name: "an IP alone takes the default port", args: []string{"--healthz-bind-address=127.0.0.1", "--metrics-bind-address=::"}, healthz: "127.0.0.1:10256", metric: "[::]:10249"},
		{name: "an IP alone takes the port flag's", args: []string{"--healthz-bind-address=127.0.0.1", "--healthz-port=1234", "--metrics-bind-address=10.0.0.1", "--metrics-port=9000"}, healthz: "127.0.0.1:1234", metric: "10.0.0.1:9000"},
		{name: "an address with a port keeps it", args: []string{"--healthz-port=1234", "--metrics-port=9000"}, healthz: "0.0.0.0:10256", metric: "127.0.0.1:10249"},
		{name: "port 0 disables the health server", args: []string{"--healthz-port=0"}, metric: "127.0.0.1:10249"},
		{name: "the file's, defaulted", args: []string{"--config=" + file, "--healthz-port=0", "--metrics-port=1", "--healthz-bind-address=1.1.1.1:1"}, healthz: "10.0.0.1:10256", metric: "[::]:10249"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseNode(tc.args...)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if got.Config.HealthzBindAddress != tc.healthz || got.Config.MetricsBindAddress != tc.metric {
				t.Errorf("healthz %q, metrics %q; want %q, %q", got.Config.HealthzBindAddress, got.Config.MetricsBindAddress, tc.healthz, tc.metric)
			}
		})
	}
}

// TestFileDecoding follows kube-proxy's loadConfig: strict decoding, then lenient
// decoding, which ignores unknown fields, keys in another case and repeated keys (the
// last wins), with a warning; only the first YAML document counts.
func TestFileDecoding(t *testing.T) {
	tests := []struct {
		name, file string
		wantMode   string
		wantCIDR   bool
	}{
		{name: "exact keys", file: "mode: ipvs\nclusterCIDR: 10.0.0.0/8\n", wantMode: "ipvs", wantCIDR: true},
		{name: "keys in another case are ignored", file: "Mode: ipvs\nclustercidr: 10.0.0.0/8\n", wantMode: "iptables"},
		{name: "an unknown field is ignored", file: "mode: ipvs\nmodee: iptables\n", wantMode: "ipvs"},
		{name: "a repeated key: the last wins", file: "mode: ipvs\nmode: iptables\n", wantMode: "iptables"},
		{name: "the second document is ignored", file: "mode: ipvs\n---\n" + header + "mode: iptables\nclusterCIDR: 10.0.0.0/8\n", wantMode: "ipvs"},
		{name: "JSON", file: `{"apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration", "mode": "ipvs"}`, wantMode: "ipvs"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			content := header + tc.file
			if strings.HasPrefix(tc.file, "{") {
				content = tc.file
			}
			got, err := parseNode("--config=" + writeFile(t, content))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if got.Config.Mode != tc.wantMode || (len(got.Config.ClusterCIDRs) > 0) != tc.wantCIDR {
				t.Errorf("mode %q, cluster CIDRs %v; want %q, some: %t", got.Config.Mode, got.Config.ClusterCIDRs, tc.wantMode, tc.wantCIDR)
			}
		})
	}
}

// TestFeatureGates: gates are validated against kube-proxy's, with its errors, and the
// gates that would make kube-proxy serve pages switchyard has not are refused.
func TestFeatureGates(t *testing.T) {
	unknownInFile := writeFile(t, header+"featureGates:\n  NoSuchGate: true\n")
	tests := []struct {
		name string
		args []string
		// wantErr lists what the error must say; empty for none.
		wantErr []string
		// enabled and disabled are gates the result must have so.
		enabled, disabled []featuregate.Feature
	}{
		{name: "defaults", enabled: []featuregate.Feature{"WatchListClient", "LoggingBetaOptions"}, disabled: []featuregate.Feature{"LoggingAlphaOptions", "ComponentFlagz"}},
		{name: "set", args: []string{"--feature-gates=WatchListClient=false,LoggingAlphaOptions=true"}, enabled: []featuregate.Feature{"LoggingAlphaOptions"}, disabled: []featuregate.Feature{"WatchListClient"}},
		{name: "a gate of another component, accepted", args: []string{"--feature-gates=ClusterTrustBundle=true"}, enabled: []featuregate.Feature{"ClusterTrustBundle"}},
		{name: "unknown", args: []string{"--feature-gates=NoSuchGate=true"}, wantErr: []string{"--feature-gates: unrecognized feature gate: NoSuchGate"}},
		{name: "unknown in the file", args: []string{"--config=" + unknownInFile}, wantErr: []string{"featureGates (in " + unknownInFile + "): unrecognized feature gate: NoSuchGate"}},
		{name: "ignored with --config", args: []string{"--config=" + writeFile(t, header), "--feature-gates=NoSuchGate=true"}},
		{name: "locked", args: []string{"--feature-gates=PreferSameTrafficDistribution=false"}, wantErr: []string{"cannot set feature gate PreferSameTrafficDistribution to false, feature is locked to true"}},
		{name: "a dependency disabled", args: []string{"--feature-gates=ClusterTrustBundleProjection=true"}, wantErr: []string{"ClusterTrustBundleProjection is enabled, but depends on features that are disabled: [ClusterTrustBundle]"}},
		{name: "a gate switchyard cannot honour", args: []string{"--feature-gates=ComponentFlagz=true"}, wantErr: []string{"--feature-gates: feature gate ComponentFlagz is enabled", "/flagz"}},
		{name: "enabled by AllAlpha", args: []string{"--feature-gates=AllAlpha=true"}, wantErr: []string{"ComponentFlagz is enabled", "ComponentStatusz is enabled"}},
		{name: "AllAlpha without them", args: []string{"--feature-gates=AllAlpha=true,ComponentFlagz=false,ComponentStatusz=false"}, enabled: []featuregate.Feature{"LoggingAlphaOptions"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseNode(tc.args...)
			if checkErr(t, err, tc.wantErr) {
				return
			}
			for _, g := range tc.enabled {
				if !got.gates.Enabled(g) {
					t.Errorf("gate %s disabled, want enabled", g)
				}
			}
			for _, g := range tc.disabled {
				if got.gates.Enabled(g) {
					t.Errorf("gate %s enabled, want disabled", g)
				}
			}
		})
	}
}

// TestLoggingAndMetricsSettings: the logging section and flags are validated as kube-proxy
// validates them (component-base's logs API), the logging flags apply over a file, and
// --show-hidden-metrics-for-version takes only the release before kube-proxy's.
func TestLoggingAndMetricsSettings(t *testing.T) {
	jsonFile := writeFile(t, header+"logging:\n  format: json\n  verbosity: 2\nenableProfiling: true\nbindAddressHardFail: true\n")
	badFile := writeFile(t, header+"logging:\n  format: xml\n")
	tests := []struct {
		name    string
		args    []string
		wantErr []string
		// format and verbosity are the logging configuration's.
		format    string
		verbosity uint32
		// profiling and hardFail are the Config's.
		profiling, hardFail bool
	}{
		{name: "defaults", format: "text"},
		{name: "flags", args: []string{"--logging-format=json", "-v=3", "--profiling", "--bind-address-hard-fail", "--show-hidden-metrics-for-version=1.34"}, format: "json", verbosity: 3, profiling: true, hardFail: true},
		{name: "the file", args: []string{"--config=" + jsonFile}, format: "json", verbosity: 2, profiling: true, hardFail: true},
		{name: "logging flags apply over the file, others not", args: []string{"--config=" + jsonFile, "--logging-format=text", "--v=5", "--profiling=false"}, format: "text", verbosity: 5, profiling: true, hardFail: true},
		{name: "an unknown format", args: []string{"--logging-format=xml"}, wantErr: []string{`--logging-format: Invalid value: "xml": Unsupported log format`}},
		{name: "an unknown format in the file", args: []string{"--config=" + badFile}, wantErr: []string{"logging.format (in " + badFile + "): ", "Unsupported log format"}},
		{name: "a flush frequency of 0", args: []string{"--log-flush-frequency=0"}, wantErr: []string{"--log-flush-frequency", "Must be greater than zero"}},
		{name: "split streams need LoggingAlphaOptions", args: []string{"--log-text-split-stream"}, wantErr: []string{"--log-text-split-stream: Forbidden: Feature LoggingAlphaOptions is disabled"}},
		{name: "split streams with LoggingAlphaOptions", args: []string{"--log-json-split-stream", "--log-json-info-buffer-size=1Mi", "--logging-format=json", "--feature-gates=LoggingAlphaOptions=true"}, format: "json"},
		{name: "vmodule with json", args: []string{"--logging-format=json", "--vmodule=proxier=4"}, wantErr: []string{"--vmodule: Forbidden: Only supported for text log format"}},
		{name: "a negative verbosity", args: []string{"-v=-1"}, wantErr: []string{`invalid argument "-1" for "-v, --v" flag`}},
		{name: "hidden metrics of an older release", args: []string{"--show-hidden-metrics-for-version=1.33"}, wantErr: []string{`invalid value "1.33" for --show-hidden-metrics-for-version: must be omitted or have the value '1.34'`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseNode(tc.args...)
			if checkErr(t, err, tc.wantErr) {
				return
			}
			logging := got.kubeProxy.Logging
			if logging.Format != tc.format || uint32(logging.Verbosity) != tc.verbosity {
				t.Errorf("logging format %q, verbosity %d; want %q, %d", logging.Format, logging.Verbosity, tc.format, tc.verbosity)
			}
			if got.Config.EnableProfiling != tc.profiling || got.Config.BindAddressHardFail != tc.hardFail {
				t.Errorf("profiling %t, hard fail %t; want %t, %t", got.Config.EnableProfiling, got.Config.BindAddressHardFail, tc.profiling, tc.hardFail)
			}
		})
	}
}

// TestFlagNames: as in every Kubernetes command, words in flag names may be separated by
// underscores, and --help is left to the command, which prints FlagUsages.
func TestFlagNames(t *testing.T) {
	got, err := Parse([]string{"--hostname_override=node-b", "--kube_api_qps=7"}, modeNames, io.Discard)
	if err != nil || got.Config.NodeName != "node-b" || got.Config.KubeAPIQPS != 7 {
		t.Errorf("Parse with underscores = %+v, %v; want node-b, QPS 7", got, err)
	}
	var out strings.Builder
	if _, err := Parse([]string{"--help"}, modeNames, &out); !errors.Is(err, pflag.ErrHelp) || out.Len() > 0 {
		t.Errorf("Parse(--help) = %v and printed %q; want pflag.ErrHelp and nothing", err, out.String())
	}
	usages := FlagUsages(modeNames)
	for _, want := range []string{"--config string", "--write-config-to string", "--feature-gates", "--logging-format", "--boot-id-file"} {
		if !strings.Contains(usages, want) {
			t.Errorf("FlagUsages lacks %q", want)
		}
	}
	// Deprecated, as in kube-proxy: hidden.
	if strings.Contains(usages, "--healthz-port int32") {
		t.Errorf("FlagUsages shows the deprecated --healthz-port")
	}
}

// checkErr reports whether err was expected (want not empty), failing the test when err
// is not what want says.
func checkErr(t *testing.T, err error, want []string) bool {
	t.Helper()
	if len(want) == 0 {
		if err != nil {
			t.Fatalf("Parse: %v", err)
		}
		return false
	}
	if err == nil {
		t.Fatalf("Parse succeeded, want an error with %q", want)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q lacks %q", err, w)
		}
	}
	return true
}
