package kubeaddr

import (
	"net/netip"
	"testing"
)

// TestParsePrefix: the forms kube-proxy's ParseCIDRSloppy accepts, read as the networks
// net.IPNet.Contains then matches.
func TestParsePrefix(t *testing.T) {
	tests := []struct {
		in   string
		want string // "" when refused
	}{
		{"10.96.0.0/12", "10.96.0.0/12"},
		{"10.96.1.2/12", "10.96.0.0/12"},
		{"010.096.0.0/12", "10.96.0.0/12"},
		{"::ffff:10.96.0.0/108", "10.96.0.0/12"},
		{"fd00:10:96::/112", "fd00:10:96::/112"},
		{"10.96.0.0", ""},
		{" 10.96.0.0/12", ""},
		{"10.96.0.0/33", ""},
	}
	for _, tc := range tests {
		got, ok := ParsePrefix(tc.in)
		switch {
		case tc.want == "" && ok:
			t.Errorf("ParsePrefix(%q) = %s, want it refused", tc.in, got)
		case tc.want != "" && (!ok || got != netip.MustParsePrefix(tc.want)):
			t.Errorf("ParsePrefix(%q) = %s, %t; want %s", tc.in, got, ok, tc.want)
		}
	}
}
