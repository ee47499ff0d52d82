package config

import (
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// kubeProxyCases are command lines whose --write-config-to output must be kube-proxy's,
// byte for byte. Their goldens, testdata/kube-proxy/<name>.yaml, were written by
// kube-proxy v1.35.4 itself; to write them again, build it (hack/controlplane/build.sh
// kube-proxy) and run
//
//	SWYD_KUBE_PROXY=~/.cache/switchyard/controlplane/v1.35.4/kube-proxy go test ./config -run TestWriteConfigIsKubeProxys
//
// (--write-config-to returns before kube-proxy touches the node). The files given to
// --config are in the same directory.
var kubeProxyCases = []struct {
	name string
	args []string
}{
	{name: "defaults"},
	{name: "flags", args: []string{
		"--proxy-mode=ipvs", "--ipvs-sync-period=20s", "--ipvs-min-sync-period=2s",
		// Not in IPVS mode: ignored.
		"--iptables-sync-period=45s", "--iptables-min-sync-period=3s",
		"--hostname-override= Node-B ", "--kubeconfig=/k", "--kube-api-qps=50", "--kube-api-burst=100", "--kube-api-content-type=application/json",
		"--cluster-cidr=10.244.0.0/16", "--masquerade-all", "--iptables-masquerade-bit=10", "--iptables-localhost-nodeports=false",
		// With --write-config-to, the deprecated port flags are not applied.
		"--healthz-bind-address=127.0.0.1:1111", "--metrics-bind-address=0.0.0.0:9999", "--healthz-port=1234",
		"--feature-gates=WatchListClient=false,LoggingAlphaOptions=true", "--profiling", "--bind-address-hard-fail", "--show-hidden-metrics-for-version=1.34",
		"--logging-format=json", "--v=3", "--log-flush-frequency=2s", "--log-json-split-stream", "--log-json-info-buffer-size=1Ki",
		"--oom-score-adj=-500", "--conntrack-max-per-core=0", "--conntrack-min=7", "--conntrack-tcp-timeout-established=2h",
		"--config-sync-period=1m", "--nodeport-addresses=10.0.0.0/8,fd00::/64", "--ipvs-strict-arp", "--ipvs-scheduler=wrr",
	}},
	{name: "iptables sync periods", args: []string{"--iptables-sync-period=45s", "--iptables-min-sync-period=0s", "--ipvs-sync-period=20s"}},
	{name: "underscores", args: []string{"--hostname_override=node-c", "--kube_api_qps=7", "--proxy_mode=ipvs"}},
	{name: "empty addresses keep the defaults", args: []string{"--metrics-bind-address=", "--healthz-bind-address="}},
	{name: "file", args: []string{
		"--config=testdata/kube-proxy/ipvs.conf",
		// Ignored with --config.
		"--proxy-mode=iptables", "--kubeconfig=/ignored", "--cluster-cidr=10.0.0.0/8", "--kube-api-qps=1", "--profiling=false",
		"--feature-gates=WatchListClient=true", "--iptables-sync-period=1m", "--ipvs-sync-period=1m", "--oom-score-adj=5",
		// Applied over the file.
		"--v=4", "--vmodule=informers=6", "--log-flush-frequency=3s",
	}},
	{name: "conntrack and IPVS flags", args: []string{
		"--proxy-mode=ipvs", "--conntrack-tcp-timeout-established=0", "--conntrack-tcp-timeout-close-wait=30m", "--conntrack-tcp-be-liberal",
		"--conntrack-udp-timeout=45s", "--conntrack-udp-timeout-stream=5m", "--ipvs-exclude-cidrs=10.0.0.0/8,fd00::/8",
		"--ipvs-tcp-timeout=2h", "--ipvs-tcpfin-timeout=30s", "--ipvs-udp-timeout=45s",
	}},
	{name: "file with conntrack and IPVS settings", args: []string{
		"--config=testdata/kube-proxy/node-settings.conf",
		// Ignored with --config.
		"--conntrack-max-per-core=1", "--conntrack-tcp-timeout-established=3h", "--conntrack-tcp-be-liberal=false", "--conntrack-udp-timeout-stream=1m",
		"--ipvs-exclude-cidrs=192.168.0.0/16", "--ipvs-tcp-timeout=1m", "--ipvs-tcpfin-timeout=1m",
	}},
	{name: "file and hostname flag", args: []string{"--config=testdata/kube-proxy/ipvs.conf", "--hostname-override=Node-D"}},
	{name: "lenient file", args: []string{"--config=testdata/kube-proxy/lenient.conf"}},
	{name: "json file with IPv6 bindAddress", args: []string{"--config=testdata/kube-proxy/ipv6.conf"}},
}

func TestWriteConfigIsKubeProxys(t *testing.T) {
	kubeProxy := os.Getenv("SWYD_KUBE_PROXY")
	for _, tc := range kubeProxyCases {
		t.Run(tc.name, func(t *testing.T) {
			golden := filepath.Join("testdata", "kube-proxy", strings.ReplaceAll(tc.name, " ", "-")+".yaml")
			if kubeProxy != "" {
				out := filepath.Join(t.TempDir(), "config.yaml")
				cmd := exec.Command(kubeProxy, append(tc.args, "--write-config-to="+out)...)
				if msg, err := cmd.CombinedOutput(); err != nil {
					t.Fatalf("%s: %v\n%s", kubeProxy, err, msg)
				}
				written, err := os.ReadFile(out)
				if err == nil {
					err = os.WriteFile(golden, written, 0o644)
				}
				if err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			parsed, err := Parse(tc.args, []string{"iptables", "ipvs"}, io.Discard)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			var got bytes.Buffer
			if err := parsed.kubeProxy.writeFile(&got); err != nil {
				t.Fatal(err)
			}
			if got.String() != string(want) {
				t.Errorf("switchyard %q wrote:\n%s\nkube-proxy wrote (%s):\n%s", tc.args, got.String(), golden, want)
			}
		})
	}
}
