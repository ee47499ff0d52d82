package config

import (
	"errors"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func writeFile(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// modeNames are the proxy modes Parse is given, as the registry (package modes) lists
// them; its tests check that the command gets the same list and error message.
var modeNames = []string{"iptables", "ipvs"}

func TestParseValid(t *testing.T) {
	file := writeFile(t, `apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clusterCIDR: 10.100.0.0/16
hostnameOverride: from-file
metricsBindAddress: 0.0.0.0:9999
iptables:
  syncPeriod: 45s
  minSyncPeriod: 2s
  masqueradeAll: true
conntrack:
  maxPerCore: 0
`)
	noLocalhost := writeFile(t, `apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
iptables:
  localhostNodePorts: false
`)
	clientConnection := writeFile(t, `apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  contentType: application/json
  acceptContentTypes: application/json
  qps: 20
  burst: 30
`)
	conntrackFile := writeFile(t, `apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
conntrack:
  tcpEstablishedTimeout: 0s
  tcpBeLiberal: true
  udpTimeout: 45s
`)
	ipvsFile := writeFile(t, `apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: ipvs
ipvs:
  tcpTimeout: 2h
  udpTimeout: 45s
  excludeCIDRs: [10.0.0.0/8, "fd00::/8"]
`)
	// fromFile is what file sets.
	fromFile := func(c *Config) {
		c.ClusterCIDRs = []netip.Prefix{netip.MustParsePrefix("10.100.0.0/16")}
		c.MetricsBindAddress = "0.0.0.0:9999"
		c.SyncPeriod, c.MinSyncPeriod = 45*time.Second, 2*time.Second
		c.MasqueradeAll = true
		c.Conntrack.MaxPerCore = 0
	}
	defaults := Defaults()
	defaults.NodeName = "node-a"
	tests := []struct {
		name string
		args []string
		want func(c *Config)
	}{
		{name: "defaults", args: []string{"--hostname-override=node-a"}, want: func(*Config) {}},
		{name: "kube-proxy flags of the acceptance suite", args: []string{
			"--proxy-mode=iptables", "--kubeconfig=/k", "--hostname-override=Node-A", "--cluster-cidr=10.244.0.0/16",
			"--metrics-bind-address=127.0.0.1:10249", "--healthz-bind-address=0.0.0.0:10256", "--conntrack-max-per-core=0", "-v=2",
		}, want: func(c *Config) {
			c.Kubeconfig = "/k"
			c.ClusterCIDRs = []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}
			c.Conntrack.MaxPerCore = 0
		}},
		{name: "dual-stack cluster CIDR is masked", args: []string{"--hostname-override=node-a", "--cluster-cidr=10.244.1.0/16, fd00:10::/64"}, want: func(c *Config) {
			c.ClusterCIDRs = []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:10::/64")}
		}},
		{name: "init-only", args: []string{"--hostname-override=node-a", "--init-only"}, want: func(c *Config) {
			c.InitOnly = true
		}},
		{name: "deprecated sync period aliases", args: []string{"--hostname-override=node-a", "--iptables-sync-period=1m", "--iptables-min-sync-period=0s"}, want: func(c *Config) {
			c.SyncPeriod = time.Minute
			c.MinSyncPeriod = 0
		}},
		{name: "file is the base", args: []string{"--config=" + file}, want: func(c *Config) {
			c.NodeName = "from-file"
			fromFile(c)
		}},
		{name: "apiserver client by flag", args: []string{"--hostname-override=node-a", "--kube-api-content-type=application/json", "--kube-api-qps=50.5", "--kube-api-burst=100"}, want: func(c *Config) {
			c.KubeAPIContentType, c.KubeAPIQPS, c.KubeAPIBurst = "application/json", 50.5, 100
		}},
		{name: "apiserver client in the file", args: []string{"--config=" + clientConnection, "--hostname-override=node-a"}, want: func(c *Config) {
			c.KubeAPIContentType, c.KubeAPIAcceptContentTypes, c.KubeAPIQPS, c.KubeAPIBurst = "application/json", "application/json", 20, 30
		}},
		{name: "the flag does not override the file's QPS", args: []string{"--config=" + clientConnection, "--hostname-override=node-a", "--kube-api-qps=7"}, want: func(c *Config) {
			c.KubeAPIContentType, c.KubeAPIAcceptContentTypes, c.KubeAPIQPS, c.KubeAPIBurst = "application/json", "application/json", 20, 30
		}},
		{name: "localhost NodePorts off by flag", args: []string{"--hostname-override=node-a", "--iptables-localhost-nodeports=false"}, want: func(c *Config) {
			c.IPTablesLocalhostNodePorts = false
		}},
		{name: "localhost NodePorts off in the file", args: []string{"--config=" + noLocalhost, "--hostname-override=node-a"}, want: func(c *Config) {
			c.IPTablesLocalhostNodePorts = false
		}},
		{name: "the flag does not override the file's localhost NodePorts", args: []string{"--config=" + noLocalhost, "--hostname-override=node-a", "--iptables-localhost-nodeports"}, want: func(c *Config) {
			c.IPTablesLocalhostNodePorts = false
		}},
		{name: "conntrack flags", args: []string{"--hostname-override=node-a", "--conntrack-tcp-timeout-established=2h", "--conntrack-tcp-timeout-close-wait=0",
			"--conntrack-tcp-be-liberal", "--conntrack-udp-timeout=45s", "--conntrack-udp-timeout-stream=5m"}, want: func(c *Config) {
			c.Conntrack.TCPEstablishedTimeout, c.Conntrack.TCPCloseWaitTimeout = 2*time.Hour, 0
			c.Conntrack.TCPBeLiberal = true
			c.Conntrack.UDPTimeout, c.Conntrack.UDPStreamTimeout = 45*time.Second, 5*time.Minute
		}},
		// A TCP timeout of 0 in the file leaves the sysctl alone; one the file does not
		// give keeps kube-proxy's default.
		{name: "conntrack in the file", args: []string{"--config=" + conntrackFile, "--hostname-override=node-a"}, want: func(c *Config) {
			c.Conntrack.TCPEstablishedTimeout = 0
			c.Conntrack.TCPBeLiberal = true
			c.Conntrack.UDPTimeout = 45 * time.Second
		}},
		// As kube-proxy's, the conntrack flags are bound to the default configuration,
		// which the file replaces.
		{name: "with --config, the conntrack flags are ignored", args: []string{"--config=" + conntrackFile, "--hostname-override=node-a",
			"--conntrack-tcp-timeout-established=3h", "--conntrack-tcp-be-liberal=false", "--conntrack-udp-timeout=0", "--conntrack-udp-timeout-stream=-1s"}, want: func(c *Config) {
			c.Conntrack.TCPEstablishedTimeout = 0
			c.Conntrack.TCPBeLiberal = true
			c.Conntrack.UDPTimeout = 45 * time.Second
		}},
		{name: "IPVS timeouts by flag", args: []string{"--hostname-override=node-a", "--proxy-mode=ipvs", "--ipvs-tcp-timeout=2h", "--ipvs-tcpfin-timeout=30s", "--ipvs-udp-timeout=45s"}, want: func(c *Config) {
			c.Mode = "ipvs"
			c.IPVSTCPTimeout, c.IPVSTCPFinTimeout, c.IPVSUDPTimeout = 2*time.Hour, 30*time.Second, 45*time.Second
		}},
		// So are the IPVS ones. (ipvs.minSyncPeriod has no default: the file's mode ipvs
		// syncs on every change.)
		{name: "IPVS timeouts and excluded CIDRs in the file, the flags ignored", args: []string{"--config=" + ipvsFile, "--hostname-override=node-a",
			"--ipvs-udp-timeout=0", "--ipvs-tcpfin-timeout=-1s", "--ipvs-exclude-cidrs=192.168.0.0/16"}, want: func(c *Config) {
			c.Mode = "ipvs"
			c.MinSyncPeriod = 0
			c.IPVSTCPTimeout, c.IPVSUDPTimeout = 2*time.Hour, 45*time.Second
			c.IPVSExcludeCIDRs = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/8")}
		}},
		// As kube-proxy's sloppy parser reads them: leading zeros, IPv4-mapped IPv6.
		{name: "excluded CIDRs by flag", args: []string{"--hostname-override=node-a", "--proxy-mode=ipvs", "--ipvs-exclude-cidrs=010.96.0.0/12,::ffff:192.168.0.0/112,fd00::/8"}, want: func(c *Config) {
			c.Mode = "ipvs"
			c.IPVSExcludeCIDRs = []netip.Prefix{netip.MustParsePrefix("10.96.0.0/12"), netip.MustParsePrefix("192.168.0.0/16"), netip.MustParsePrefix("fd00::/8")}
		}},
		{name: "a bad excluded CIDR outside mode ipvs", args: []string{"--hostname-override=node-a", "--ipvs-exclude-cidrs=eth0"}, want: func(*Config) {}},
		// kube-proxy's validation checks the ipvs section in mode ipvs only.
		{name: "a negative IPVS timeout outside mode ipvs", args: []string{"--hostname-override=node-a", "--ipvs-tcp-timeout=-1s"}, want: func(c *Config) {
			c.IPVSTCPTimeout = -time.Second
		}},
		{name: "with --config, the file is the configuration and other flags are ignored", args: []string{
			"--config=" + file, "--sync-period=50s", "--iptables-sync-period=50s", "--metrics-bind-address=1.2.3.4:5", "--proxy-mode=ipvs",
			"--kubeconfig=/ignored", "--cluster-cidr=10.0.0.0/8", "--masquerade-all=false", "--conntrack-max-per-core=5",
			"--conntrack-tcp-be-liberal", "--conntrack-udp-timeout=-1s", "--ipvs-tcp-timeout=1h", "--ipvs-exclude-cidrs=eth0",
		}, want: func(c *Config) {
			c.NodeName = "from-file"
			fromFile(c)
		}},
		{name: "with --config, --hostname-override, --master and --service-proxy-name still apply", args: []string{
			"--config=" + file, "--hostname-override=Node-A", "--master=https://apiserver:6443", "--service-proxy-name=mine",
		}, want: func(c *Config) {
			c.Master, c.ServiceProxyName = "https://apiserver:6443", "mine"
			fromFile(c)
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Parse(tc.args, modeNames, io.Discard)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			want := defaults
			for _, a := range tc.args {
				if path, ok := strings.CutPrefix(a, "--config="); ok {
					want.ConfigFile = path
				}
			}
			tc.want(&want)
			if diff := cmp.Diff(want, got.Config, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
				t.Errorf("config (-want +got):\n%s", diff)
			}
		})
	}
}

// TestLocalhostNodePortsDefault: kube-proxy serves NodePorts on 127.0.0.1 unless told
// not to, and a file that does not mention it (a nil *bool) keeps that.
func TestLocalhostNodePortsDefault(t *testing.T) {
	file := writeFile(t, "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\niptables:\n  masqueradeAll: true\n")
	for _, args := range [][]string{{"--hostname-override=node-a"}, {"--config=" + file, "--hostname-override=node-a"}} {
		got, err := Parse(args, modeNames, io.Discard)
		if err != nil {
			t.Fatalf("Parse(%q): %v", args, err)
		}
		if !got.Config.IPTablesLocalhostNodePorts {
			t.Errorf("Parse(%q): localhost NodePorts off, want on by default", args)
		}
	}
}

// TestLocalhostNodePorts follows kube-proxy's NewProxier and NewNodePortAddresses: the
// flag, IPv4 only, and loopback among the family's node-port addresses, none meaning all.
func TestLocalhostNodePorts(t *testing.T) {
	tests := []struct {
		name      string
		off       bool
		addresses []string
		ipv4      bool
		want      bool
	}{
		{name: "default", ipv4: true, want: true},
		{name: "IPv6 never", ipv4: false},
		{name: "flag off", off: true, ipv4: true},
		{name: "a range without loopback", addresses: []string{"192.168.0.0/16"}, ipv4: true},
		{name: "loopback itself", addresses: []string{"192.168.0.0/16", "127.0.0.1/32"}, ipv4: true, want: true},
		{name: "part of loopback", addresses: []string{"127.0.1.0/24"}, ipv4: true, want: true},
		{name: "a range that holds loopback", addresses: []string{"0.0.0.0/1"}, ipv4: true, want: true},
		{name: "every address", addresses: []string{"0.0.0.0/0"}, ipv4: true, want: true},
		{name: "only IPv6 ranges: every IPv4 address", addresses: []string{"fd00::/8"}, ipv4: true, want: true},
		{name: "flag off, loopback listed", off: true, addresses: []string{"127.0.0.0/8"}, ipv4: true},
		{name: "primary", addresses: []string{"primary"}, ipv4: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := Defaults()
			c.IPTablesLocalhostNodePorts = !tc.off
			c.NodePortAddresses = tc.addresses
			if got := c.LocalhostNodePorts(tc.ipv4); got != tc.want {
				t.Errorf("LocalhostNodePorts(ipv4 %t) with %q = %t, want %t", tc.ipv4, tc.addresses, got, tc.want)
			}
		})
	}
}

func TestParseInvalid(t *testing.T) {
	badKind := writeFile(t, "apiVersion: v1\nkind: ConfigMap\n")
	notYAML := writeFile(t, "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: [\n")
	badValue := writeFile(t, "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: userspace\nclusterCIDR: nope\n")
	badAddress := writeFile(t, "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nhealthzBindAddress: localhost:10256\n")
	badBurst := writeFile(t, "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nclientConnection:\n  burst: -1\n")
	badIPVS := writeFile(t, "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: ipvs\nipvs:\n  tcpFinTimeout: -5s\n")
	badConntrack := writeFile(t, "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nconntrack:\n  tcpCloseWaitTimeout: -1h\n  udpStreamTimeout: -2s\n")
	tests := []struct {
		name string
		args []string
		// want lists substrings the error must contain: where, what, and what is allowed.
		want []string
	}{
		{"unknown mode", []string{"--proxy-mode=bogus"}, []string{`"bogus"`, "--proxy-mode", "iptables, ipvs"}},
		{"bad cluster CIDR", []string{"--cluster-cidr=10.0.0.0/33"}, []string{"--cluster-cidr", "10.0.0.0/33", "CIDRs"}},
		{"two CIDRs of one family", []string{"--cluster-cidr=10.0.0.0/8,11.0.0.0/8"}, []string{"--cluster-cidr", "one CIDR per IP family"}},
		{"bad bind address", []string{"--healthz-bind-address=localhost"}, []string{"--healthz-bind-address", `"localhost"`, "ip or ip:port"}},
		{"port out of range", []string{"--metrics-bind-address=127.0.0.1:70000"}, []string{"--metrics-bind-address", `"70000" is not a valid number`}},
		{"port 0", []string{"--metrics-bind-address=127.0.0.1:0"}, []string{"--metrics-bind-address", `"127.0.0.1:0"`, "port from 1 to 65535"}},
		{"no host", []string{"--healthz-bind-address=:10256"}, []string{"--healthz-bind-address", `"" is not a valid IP address`}},
		{"metrics cannot be disabled", []string{"--metrics-port=0"}, []string{"--metrics-port", "cannot be disabled"}},
		{"a bare IP with --write-config-to", []string{"--healthz-bind-address=127.0.0.1", "--write-config-to=/dev/null"}, []string{"--healthz-bind-address", `"127.0.0.1"`, "IP:port"}},
		{"bad address in file", []string{"--config=" + badAddress}, []string{"healthzBindAddress (in " + badAddress + ")", `"localhost:10256"`}},
		{"zero sync period", []string{"--sync-period=0s"}, []string{"--sync-period", "greater than 0"}},
		{"min above max", []string{"--sync-period=1s", "--min-sync-period=2s"}, []string{"--min-sync-period", "must not exceed"}},
		{"masquerade bit", []string{"--iptables-masquerade-bit=32"}, []string{"--iptables-masquerade-bit", "between 0 and 31"}},
		{"negative conntrack", []string{"--conntrack-max-per-core=-1"}, []string{"--conntrack-max-per-core"}},
		{"negative conntrack timeout", []string{"--conntrack-tcp-timeout-established=-1s"}, []string{"--conntrack-tcp-timeout-established", `"-1s"`, "0 or greater"}},
		{"negative conntrack UDP timeout", []string{"--conntrack-udp-timeout=-30s"}, []string{"--conntrack-udp-timeout", `"-30s"`, "0 or greater"}},
		{"negative IPVS timeout in mode ipvs", []string{"--proxy-mode=ipvs", "--ipvs-udp-timeout=-1m"}, []string{"--ipvs-udp-timeout", `"-1m0s"`, "0 or greater"}},
		{"bad excluded CIDR in mode ipvs", []string{"--proxy-mode=ipvs", "--ipvs-exclude-cidrs=10.0.0.0/8, 11.0.0.0/8"}, []string{"--ipvs-exclude-cidrs", `" 11.0.0.0/8"`, "CIDRs"}},
		{"negative IPVS timeout in the file of mode ipvs", []string{"--config=" + badIPVS}, []string{"ipvs.tcpFinTimeout (in " + badIPVS + ")", `"-5s"`}},
		{"negative conntrack timeouts in file", []string{"--config=" + badConntrack}, []string{"conntrack.tcpCloseWaitTimeout (in " + badConntrack + ")", `"-1h0m0s"`,
			"conntrack.udpStreamTimeout (in " + badConntrack + ")", `"-2s"`}},
		{"bad nodeport address", []string{"--nodeport-addresses=10.0.0.0/8,eth0"}, []string{"--nodeport-addresses", `"eth0"`, "primary"}},
		{"unknown scheduler", []string{"--ipvs-scheduler=fastest"}, []string{"--ipvs-scheduler", `"fastest"`, "rr, wrr"}},
		{"negative burst", []string{"--kube-api-burst=-1"}, []string{"--kube-api-burst", `"-1"`, "between 0 and"}},
		{"negative burst in file", []string{"--config=" + badBurst}, []string{"clientConnection.burst (in " + badBurst + ")", "between 0 and"}},
		{"unknown flag", []string{"--no-such-flag"}, []string{"unknown flag: --no-such-flag"}},
		{"positional argument", []string{"iptables"}, []string{"unexpected arguments"}},
		{"blank hostname", []string{"--hostname-override= "}, []string{"--hostname-override", "blank"}},
		{"missing file", []string{"--config=/nonexistent/config.yaml"}, []string{"--config", "/nonexistent/config.yaml"}},
		{"wrong kind", []string{"--config=" + badKind}, []string{"--config", badKind, `no kind "ConfigMap" is registered for version "v1"`}},
		{"not YAML", []string{"--config=" + notYAML}, []string{"--config", notYAML}},
		{"bad values in file, all reported", []string{"--config=" + badValue}, []string{"mode (in " + badValue + ")", `"userspace"`, "clusterCIDR (in " + badValue + ")"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse(tc.args, modeNames, io.Discard)
			var usage *UsageError
			if !errors.As(err, &usage) {
				t.Fatalf("Parse(%q) = %v, want a *UsageError", tc.args, err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

// TestSyncPeriodsFromTheModesSection checks that a file's sync periods come from the
// section of the mode the file selects, as in kube-proxy, whichever modes are registered.
func TestSyncPeriodsFromTheModesSection(t *testing.T) {
	sections := `iptables:
  syncPeriod: 45s
ipvs:
  syncPeriod: 20s
  minSyncPeriod: -1s
nftables:
  syncPeriod: 10s
`
	tests := []struct {
		mode  string
		modes []string
		want  time.Duration
		// wantErr, when set, is the error Parse must report instead.
		wantErr string
	}{
		{mode: "iptables", modes: modeNames, want: 45 * time.Second},
		{mode: "ipvs", modes: modeNames, wantErr: `invalid value "-1s" for ipvs.minSyncPeriod (in `},
		{mode: "nftables", modes: []string{"iptables", "ipvs", "nftables"}, want: 10 * time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.mode, func(t *testing.T) {
			file := writeFile(t, "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: "+tc.mode+"\n"+sections)
			got, err := Parse([]string{"--config=" + file, "--hostname-override=node-a"}, tc.modes, io.Discard)
			switch {
			case tc.wantErr != "":
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("Parse = %v, want an error containing %q", err, tc.wantErr)
				}
			case err != nil:
				t.Errorf("Parse: %v", err)
			case got.Config.SyncPeriod != tc.want:
				t.Errorf("sync period %s, want %s from the %s section", got.Config.SyncPeriod, tc.want, tc.mode)
			}
		})
	}
}

func TestParseVersion(t *testing.T) {
	got, err := Parse([]string{"--version", "--proxy-mode=bogus"}, modeNames, io.Discard)
	if err != nil || !got.Version {
		t.Fatalf("Parse(--version) = %+v, %v; want Version and no error", got, err)
	}
}
