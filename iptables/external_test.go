package iptables

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/switchyard/switchyard/proxier"
)

// TestRenderExternalEntryPoints checks the rules of a Service reachable from outside:
// which shared chains get dispatch rules, what the EXT chain does under each
// externalTrafficPolicy, and where the filter table rejects or drops.
func TestRenderExternalEntryPoints(t *testing.T) {
	name := spn("default", "lb", "http")
	local := proxier.Endpoint{IP: netip.MustParseAddr("10.244.1.2"), Port: 8080, Ready: true, Serving: true, NodeName: "node-a"}
	remote := proxier.Endpoint{IP: netip.MustParseAddr("10.244.2.2"), Port: 8080, Ready: true, Serving: true, NodeName: "node-b"}
	ext, svc, svl, fw := externalTrafficChain(name), servicePortChain(name), localPolicyChain(name), firewallChain(name)
	tests := []struct {
		name         string
		policyLocal  bool
		sourceRanges []string
		healthCheck  int32
		endpoints    []proxier.Endpoint
		// want maps a chain (a shared chain's key, or a per-service chain's name) to
		// fragments that some rule of it must contain; absent lists chains that must not
		// exist or fragments no rule may contain, as "chain|fragment".
		want   map[string][]string
		absent []string
	}{
		{
			name:      "Cluster policy masquerades and uses every endpoint",
			endpoints: []proxier.Endpoint{local, remote},
			want: map[string][]string{
				"nat SWYD-SERVICES":  {"-d 203.0.113.7/32 -p tcp -m tcp --dport 80 -j " + ext, "-d 198.51.100.9/32 -p tcp -m tcp --dport 80 -j " + ext},
				"nat SWYD-NODEPORTS": {"-p tcp -m tcp --dport 30080 -j " + ext},
				ext:                  {"-j SWYD-MARK-MASQ", "-j " + svc},
			},
			absent: []string{"filter SWYD-EXTERNAL-SERVICES|", svl + "|"},
		},
		{
			name:        "Local policy keeps the client address and short-circuits pods and the node",
			policyLocal: true,
			endpoints:   []proxier.Endpoint{local, remote},
			want: map[string][]string{
				ext: {"-s 10.244.0.0/16 -j " + svc, "-m addrtype --src-type LOCAL -j SWYD-MARK-MASQ", "-m addrtype --src-type LOCAL -j " + svc, "-j " + svl},
				svl: {"-> 10.244.1.2:8080"},
			},
			absent: []string{"filter SWYD-EXTERNAL-SERVICES|", svl + "|10.244.2.2"},
		},
		{
			name:        "Local policy without a local endpoint drops external clients",
			policyLocal: true,
			endpoints:   []proxier.Endpoint{remote},
			want: map[string][]string{
				"filter SWYD-EXTERNAL-SERVICES": {"has no local endpoints\" -m addrtype --dst-type LOCAL -p tcp -m tcp --dport 30080 -j DROP", "has no local endpoints\" -d 203.0.113.7/32 -p tcp -m tcp --dport 80 -j DROP"},
				ext:                             {"-s 10.244.0.0/16 -j " + svc},
			},
			absent: []string{svl + "|", ext + "|-j " + svl},
		},
		{
			// kube-proxy accepts it in filter KUBE-NODEPORTS whatever the endpoints
			// (iptables/proxier.go, "health check node port").
			name:        "the health-check node port is accepted, even without a local endpoint",
			policyLocal: true,
			healthCheck: 32000,
			endpoints:   []proxier.Endpoint{remote},
			want: map[string][]string{
				"filter SWYD-NODEPORTS": {"health check node port\" -p tcp -m tcp --dport 32000 -j ACCEPT"},
			},
		},
		{
			name:      "no endpoints at all rejects every entry point",
			endpoints: nil,
			want: map[string][]string{
				"filter SWYD-EXTERNAL-SERVICES": {"-m addrtype --dst-type LOCAL -p tcp -m tcp --dport 30080 -j REJECT", "-d 198.51.100.9/32 -p tcp -m tcp --dport 80 -j REJECT"},
				"filter SWYD-SERVICES":          {"-d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j REJECT"},
			},
			absent: []string{"nat SWYD-SERVICES|", "nat SWYD-NODEPORTS|", ext + "|"},
		},
		{
			name:         "loadBalancerSourceRanges admit only the ranges at the load-balancer IP",
			sourceRanges: []string{"192.0.2.0/24"},
			endpoints:    []proxier.Endpoint{local},
			want: map[string][]string{
				"nat SWYD-SERVICES":          {"-d 198.51.100.9/32 -p tcp -m tcp --dport 80 -j " + fw, "-d 203.0.113.7/32 -p tcp -m tcp --dport 80 -j " + ext},
				fw:                           {"-s 192.0.2.0/24 -j " + ext},
				"filter SWYD-PROXY-FIREWALL": {"traffic not accepted by " + fw + "\" -d 198.51.100.9/32 -p tcp -m tcp --dport 80 -j DROP"},
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sp := clusterIPService(name, "10.96.0.10", 80)
			sp.NodePort = 30080
			sp.ExternalIPs = []netip.Addr{netip.MustParseAddr("203.0.113.7")}
			sp.LoadBalancerIPs = []netip.Addr{netip.MustParseAddr("198.51.100.9")}
			sp.ExternalPolicyLocal = tc.policyLocal
			sp.HealthCheckNodePort = tc.healthCheck
			for _, r := range tc.sourceRanges {
				sp.LoadBalancerSourceRanges = append(sp.LoadBalancerSourceRanges, netip.MustParsePrefix(r))
			}
			r := renderServicePort(&testRenderConfig, resolve(&testRenderConfig, sp, tc.endpoints))
			rules := map[string][]string{}
			for c, rs := range r.dispatch {
				rules[string(c.table)+" "+c.chain] = rs
			}
			for _, c := range r.chains {
				rules[c.Name] = c.Rules
			}
			for chain, fragments := range tc.want {
				for _, f := range fragments {
					if !strings.Contains(strings.Join(rules[chain], "\n"), f) {
						t.Errorf("%s lacks a rule with %q; it has:\n%s", chain, f, strings.Join(rules[chain], "\n"))
					}
				}
			}
			for _, a := range tc.absent {
				chain, fragment, _ := strings.Cut(a, "|")
				if got := strings.Join(rules[chain], "\n"); len(rules[chain]) > 0 && strings.Contains(got, fragment) {
					t.Errorf("%s has a rule with %q, want none:\n%s", chain, fragment, got)
				}
			}
		})
	}
}
