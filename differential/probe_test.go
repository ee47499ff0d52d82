package differential

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/switchyard/switchyard/internal/lab"
)

// TestProbes: every entry point of every port, from every place that can reach it; the health check port once, from off the node.
func TestProbes(t *testing.T) {
	svc := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: Namespace, Name: "s1-000"},
		Spec: v1.ServiceSpec{
			Type: v1.ServiceTypeLoadBalancer, ClusterIP: "10.96.100.1", ExternalIPs: []string{"10.253.0.1"},
			SessionAffinity: v1.ServiceAffinityClientIP, HealthCheckNodePort: 30103,
			Ports: []v1.ServicePort{
				{Name: "dns", Port: 53, Protocol: v1.ProtocolUDP, NodePort: 30100},
				{Name: "sctp", Port: 9, Protocol: v1.ProtocolSCTP, NodePort: 30101},
			},
		},
		Status: v1.ServiceStatus{LoadBalancer: v1.LoadBalancerStatus{Ingress: []v1.LoadBalancerIngress{{IP: "10.253.0.2"}, {Hostname: "lb.example"}}}},
	}
	var got []string
	for _, p := range probes(svc) {
		if p.Entry != EntryHealthCheck && !p.Sticky {
			t.Errorf("%s: not sticky, though the Service has ClientIP affinity", p.ID())
		}
		got = append(got, p.ID())
	}
	want := []string{
		"s1-000 port dns: cluster-ip 10.96.100.1:53 from pod-7 (udp)",
		"s1-000 port dns: cluster-ip 10.96.100.1:53 from node (udp)",
		"s1-000 port dns: external-ip 10.253.0.1:53 from pod-7 (udp)",
		"s1-000 port dns: external-ip 10.253.0.1:53 from node (udp)",
		"s1-000 port dns: external-ip 10.253.0.1:53 from client (udp)",
		"s1-000 port dns: load-balancer-ip 10.253.0.2:53 from pod-7 (udp)",
		"s1-000 port dns: load-balancer-ip 10.253.0.2:53 from node (udp)",
		"s1-000 port dns: load-balancer-ip 10.253.0.2:53 from client (udp)",
		"s1-000 port dns: node-port " + lab.NodeIP + ":30100 from pod-7 (udp)",
		"s1-000 port dns: node-port " + lab.NodeIP + ":30100 from node (udp)",
		"s1-000 port dns: node-port " + lab.NodeIP + ":30100 from client (udp)",
		"s1-000 port dns: node-port-on-localhost 127.0.0.1:30100 from node (udp)",
		"s1-000 port sctp: cluster-ip 10.96.100.1:9 from pod-7 (sctp)",
		"s1-000 port sctp: cluster-ip 10.96.100.1:9 from node (sctp)",
		"s1-000 port sctp: external-ip 10.253.0.1:9 from pod-7 (sctp)",
		"s1-000 port sctp: external-ip 10.253.0.1:9 from node (sctp)",
		"s1-000 port sctp: external-ip 10.253.0.1:9 from client (sctp)",
		"s1-000 port sctp: load-balancer-ip 10.253.0.2:9 from pod-7 (sctp)",
		"s1-000 port sctp: load-balancer-ip 10.253.0.2:9 from node (sctp)",
		"s1-000 port sctp: load-balancer-ip 10.253.0.2:9 from client (sctp)",
		"s1-000 port sctp: node-port " + lab.NodeIP + ":30101 from pod-7 (sctp)",
		"s1-000 port sctp: node-port " + lab.NodeIP + ":30101 from node (sctp)",
		"s1-000 port sctp: node-port " + lab.NodeIP + ":30101 from client (sctp)",
		"s1-000 port sctp: node-port-on-localhost 127.0.0.1:30101 from node (sctp)",
		"s1-000 port health: health-check-node-port " + lab.NodeIP + ":30103 from client (tcp)",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("probes (-want +got):\n%s", diff)
	}
}

// TestOutcome: what is compared of a probe's result.
func TestOutcome(t *testing.T) {
	plain := Probe{From: FromPod}
	sticky := Probe{From: FromStickyPod, Sticky: true}
	for _, tc := range []struct {
		desc  string
		probe Probe
		res   lab.Result
		want  Outcome
	}{
		{"endpoints and who saw which client", plain,
			lab.Result{Answers: map[string]int{"pod-2": 3, "pod-1": 2}, Clients: map[string]int{"pod-1 saw 10.244.0.1": 2, "pod-2 saw 10.244.0.11": 3}},
			Outcome{Endpoints: []string{"pod-1", "pod-2"}, Clients: []string{"pod-1 saw 10.244.0.1", "pod-2 saw 10.244.0.11"}}},
		{"sticky: how many, not which", sticky,
			lab.Result{Answers: map[string]int{"pod-3": 5}, Clients: map[string]int{"pod-3 saw 10.244.0.17": 5}},
			Outcome{Endpoints: []string{"1 endpoint(s), sticky"}, Clients: []string{"the endpoint saw 10.244.0.17"}}},
		{"the detail is the last error", plain,
			lab.Result{Failures: map[string]int{"timeout": 2}, LastError: "i/o timeout"},
			Outcome{Failures: []string{"timeout"}, Detail: "i/o timeout"}},
		{"refused stays apart", plain,
			lab.Result{Failures: map[string]int{"refused": 3}},
			Outcome{Failures: []string{"refused"}}},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, outcome(tc.probe, tc.res)); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

// TestCompare: only probes whose outcomes differ are divergences (the detail of a failure
// is not compared), each with the rules that name its Service.
func TestCompare(t *testing.T) {
	same := Probe{Scenario: "s1-000", Port: "http", Entry: EntryClusterIP, From: FromNode, Protocol: "tcp", Addr: "10.96.100.1:80"}
	differs := same
	differs.From = FromPod
	runs := []ProxyRun{
		{Proxy: "switchyard", Outcomes: map[string]Outcome{same.ID(): {Failures: []string{"refused"}, Detail: "a"}, differs.ID(): {Endpoints: []string{"pod-2"}}},
			Programmed: "-A SWYD-SERVICES -d 10.96.100.1/32 -j X\n-A OTHER -j Y"},
		{Proxy: "kube-proxy", Outcomes: map[string]Outcome{same.ID(): {Failures: []string{"refused"}, Detail: "b"}, differs.ID(): {Failures: []string{"timeout"}}},
			Programmed: "-A KUBE-SERVICES -d 10.96.100.1/32 -j Z"},
	}
	got := Compare([]Probe{same, differs}, runs, map[string][]string{"s1-000": {"10.96.100.1/32"}})
	if len(got) != 1 || got[0].Probe != differs {
		t.Fatalf("divergences = %+v, want only %s", got, differs.ID())
	}
	want := map[string][]string{"switchyard": {"-A SWYD-SERVICES -d 10.96.100.1/32 -j X"}, "kube-proxy": {"-A KUBE-SERVICES -d 10.96.100.1/32 -j Z"}}
	if diff := cmp.Diff(want, got[0].Programmed); diff != "" {
		t.Errorf("programmed (-want +got):\n%s", diff)
	}
}

// TestSeries reads every series of a metric by its labels, and no series whose name
// only starts with the same text.
func TestSeries(t *testing.T) {
	scrape := `# HELP kubeproxy_sync_proxy_rules_last_timestamp_seconds x
kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family="IPv4"} 1.7e+09
kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family="IPv6"} 1.8e+09
kubeproxy_sync_proxy_rules_last_timestamp_seconds_other 9e+09
kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds 5
`
	want := map[string]float64{`{ip_family="IPv4"}`: 1.7e9, `{ip_family="IPv6"}`: 1.8e9}
	if diff := cmp.Diff(want, series(scrape, "kubeproxy_sync_proxy_rules_last_timestamp_seconds")); diff != "" {
		t.Errorf("last sync (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(map[string]float64{"": 5}, series(scrape, "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds")); diff != "" {
		t.Errorf("last queued (-want +got):\n%s", diff)
	}
	if got := series(scrape, "absent"); len(got) != 0 {
		t.Errorf("absent = %v, want none", got)
	}
}

// TestAllProbes: the proxy's /healthz once before and once after the Node is tainted, and
// every health check port again after it; a pod's UDP flow to a cluster IP across the
// restart, from a port of its own; the Services' other probes once.
func TestAllProbes(t *testing.T) {
	svc := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: Namespace, Name: "s1-000"},
		Spec: v1.ServiceSpec{
			Type: v1.ServiceTypeClusterIP, ClusterIP: "10.96.100.1", HealthCheckNodePort: 30103,
			Ports: []v1.ServicePort{{Name: "http", Port: 80, Protocol: v1.ProtocolTCP}, {Name: "dns", Port: 53, Protocol: v1.ProtocolUDP}},
		},
	}
	ready := map[string][]*discovery.EndpointSlice{svc.Name: {endpointSlice("dns", ptr.To(true))}}
	var got []string
	for _, p := range allProbes([]*v1.Service{svc}, ready) {
		got = append(got, p.ID())
		if (p.Phase == PhaseRestart) != (p.SourcePort != 0) {
			t.Errorf("%s: source port %d", p.ID(), p.SourcePort)
		}
	}
	want := []string{
		"node port healthz: healthz 127.0.0.1:10256 from node (healthz)",
		"s1-000 port http: cluster-ip 10.96.100.1:80 from pod-1 (tcp)",
		"s1-000 port http: cluster-ip 10.96.100.1:80 from node (tcp)",
		"s1-000 port dns: cluster-ip 10.96.100.1:53 from pod-1 (udp)",
		"s1-000 port dns: cluster-ip 10.96.100.1:53 from node (udp)",
		"s1-000 port health: health-check-node-port 10.252.0.1:30103 from client (tcp)",
		"s1-000 port dns: cluster-ip 10.96.100.1:53 from pod-1 (udp), across a proxy restart",
		"node port healthz: healthz 127.0.0.1:10256 from node (healthz), node tainted ToBeDeletedByClusterAutoscaler",
		"s1-000 port health: health-check-node-port 10.252.0.1:30103 from client (tcp), node tainted ToBeDeletedByClusterAutoscaler",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("probes (-want +got):\n%s", diff)
	}
}

// endpointSlice is a slice with one endpoint, of the given readiness, on one port.
func endpointSlice(port string, ready *bool) *discovery.EndpointSlice {
	return &discovery.EndpointSlice{
		Ports:     []discovery.EndpointPort{{Name: ptr.To(port), Port: ptr.To(int32(8080))}},
		Endpoints: []discovery.Endpoint{{Addresses: []string{"10.250.0.2"}, Conditions: discovery.EndpointConditions{Ready: ready}}},
	}
}

// TestRestartFlows: a UDP flow across the restart goes only to a port with a ready
// endpoint (unset readiness is ready, as for kube-proxy); elsewhere every proxy answers
// alike before and after, and the flow would tell nothing.
func TestRestartFlows(t *testing.T) {
	named := []v1.ServicePort{{Name: "http", Port: 80, Protocol: v1.ProtocolTCP}, {Name: "dns", Port: 53, Protocol: v1.ProtocolUDP}}
	unnamed := []v1.ServicePort{{Port: 53, Protocol: v1.ProtocolUDP}}
	tests := []struct {
		name   string
		ports  []v1.ServicePort
		slices []*discovery.EndpointSlice
		want   int
	}{
		{"ready on the UDP port", named, []*discovery.EndpointSlice{endpointSlice("dns", ptr.To(true))}, 1},
		{"unset readiness", named, []*discovery.EndpointSlice{endpointSlice("dns", nil)}, 1},
		{"not ready", named, []*discovery.EndpointSlice{endpointSlice("dns", ptr.To(false))}, 0},
		{"ready on another port only", named, []*discovery.EndpointSlice{endpointSlice("http", ptr.To(true))}, 0},
		{"no slices", named, nil, 0},
		{"unnamed port", unnamed, []*discovery.EndpointSlice{endpointSlice("", ptr.To(true))}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			svc := &v1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: Namespace, Name: "s1-000"},
				Spec: v1.ServiceSpec{Type: v1.ServiceTypeClusterIP, ClusterIP: "10.96.100.1", Ports: tt.ports}}
			got := 0
			for _, p := range allProbes([]*v1.Service{svc}, map[string][]*discovery.EndpointSlice{svc.Name: tt.slices}) {
				if p.Phase == PhaseRestart {
					got++
				}
			}
			if got != tt.want {
				t.Errorf("%d flows across the restart, want %d", got, tt.want)
			}
		})
	}
}

// TestFlowOutcome: a flow across the restart is told by whether its endpoint stayed, not
// by which endpoint it was (each proxy's random choice).
func TestFlowOutcome(t *testing.T) {
	answered := func(pod string) lab.Result { return lab.Result{Answers: map[string]int{pod: 3}} }
	failed := func(kind string) lab.Result { return lab.Result{Failures: map[string]int{kind: 3}} }
	tests := []struct {
		name          string
		before, after lab.Result
		want          Outcome
	}{
		{"kept its endpoint", answered("pod-2"), answered("pod-2"), Outcome{Endpoints: []string{"the flow's endpoint before the restart"}}},
		{"moved", answered("pod-2"), answered("pod-3"), Outcome{Endpoints: []string{"another endpoint than before the restart"}}},
		{"lost", answered("pod-2"), failed("timeout"), Outcome{Failures: []string{"after the restart: timeout"}}},
		{"never answered", failed("refused"), failed("refused"),
			Outcome{Endpoints: []string{"0 endpoints before the restart"}, Failures: []string{"before the restart: refused", "after the restart: refused"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, flowOutcome(tc.before, tc.after)); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

// TestProbeBatches: a sticky Service's probes run one after the other, in their order;
// in IPVS mode (round robin) so do the probes of one address and protocol; every other
// probe on its own.
func TestProbeBatches(t *testing.T) {
	probes := []Probe{
		{Scenario: "s1-000", Protocol: "tcp", Addr: "10.96.100.1:80"}, {Scenario: "s1-001", Sticky: true, Protocol: "tcp", Addr: "10.96.100.2:80"},
		{Scenario: "s1-000", Protocol: "tcp", Addr: "10.96.100.1:80"}, {Scenario: "s1-001", Sticky: true, Protocol: "tcp", Addr: "10.253.0.1:80"},
		{Scenario: "s1-002", Sticky: true, Protocol: "tcp", Addr: "10.96.100.3:80"}, {Scenario: "s1-000", Protocol: "udp", Addr: "10.96.100.1:80"},
	}
	tests := []struct {
		name       string
		roundRobin bool
		want       [][]int
	}{
		{"random", false, [][]int{{0}, {1, 3}, {2}, {4}, {5}}},
		{"round robin", true, [][]int{{0, 2}, {1, 3}, {4}, {5}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, probeBatches(probes, tc.roundRobin)); diff != "" {
				t.Errorf("batches (-want +got):\n%s", diff)
			}
		})
	}
}
