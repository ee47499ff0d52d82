package main

import (
	"testing"

	"k8s.io/client-go/rest"

	"github.com/switchyard/switchyard/config"
)

func TestExitStatus(t *testing.T) {
	tests := []struct {
		args []string
		want int
	}{
		{[]string{"--proxy-mode=bogus"}, 2},
		{[]string{"--no-such-flag"}, 2},
		{[]string{"--cluster-cidr=banana"}, 2},
		{[]string{"--version"}, 0},
		{[]string{"--help"}, 0},
	}
	for _, tc := range tests {
		if got := run(tc.args); got != tc.want {
			t.Errorf("switchyard %q exited %d, want %d", tc.args, got, tc.want)
		}
	}
}

// TestClientConfig: kube-proxy's clientConnection settings replace the kubeconfig's in
// the client's rest.Config, with kube-proxy's defaults when none is given.
func TestClientConfig(t *testing.T) {
	tests := []struct {
		name  string
		set   func(*config.Config)
		want  rest.ContentConfig
		qps   float32
		burst int
	}{
		{name: "kube-proxy's defaults", set: func(*config.Config) {},
			want: rest.ContentConfig{ContentType: "application/vnd.kubernetes.protobuf"}, qps: 5, burst: 10},
		{name: "given", set: func(c *config.Config) {
			c.KubeAPIContentType, c.KubeAPIAcceptContentTypes, c.KubeAPIQPS, c.KubeAPIBurst = "application/json", "application/json", 50, 100
		}, want: rest.ContentConfig{ContentType: "application/json", AcceptContentTypes: "application/json"}, qps: 50, burst: 100},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := config.Defaults()
			cfg.Master = "https://127.0.0.1:6443"
			tc.set(&cfg)
			got, err := clientConfig(cfg)
			if err != nil {
				t.Fatal(err)
			}
			if got.ContentType != tc.want.ContentType || got.AcceptContentTypes != tc.want.AcceptContentTypes || got.QPS != tc.qps || got.Burst != tc.burst {
				t.Errorf("rest.Config has content type %q, accept %q, QPS %v, burst %d; want %q, %q, %v, %d",
					got.ContentType, got.AcceptContentTypes, got.QPS, got.Burst, tc.want.ContentType, tc.want.AcceptContentTypes, tc.qps, tc.burst)
			}
		})
	}
}
