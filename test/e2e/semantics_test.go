package e2e

import (
	"fmt"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/switchyard/switchyard/internal/lab"
)

// TestClusterIPSemantics walks the ClusterIP lines of service-semantics.md that the
// lifecycle test does not: hairpin, other ports of a cluster IP, internalTrafficPolicy
// Local, session affinity and the terminating-endpoint fallback.
func TestClusterIPSemantics(t *testing.T) {
	forEachMode(t, "TestClusterIPSemantics", testClusterIPSemantics)
}

func testClusterIPSemantics(t *testing.T, mode proxyMode) {
	l, ctx := startProxy(t, mode)
	create := func(svc *v1.Service) *v1.Service {
		t.Helper()
		svc, err := l.Client.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("creating Service %s: %v", svc.Name, err)
		}
		return svc
	}
	url := func(svc *v1.Service, port int) string { return fmt.Sprintf("http://%s:%d/", svc.Spec.ClusterIP, port) }
	fromPod := func(pod *lab.Pod, url string, n int) func() (lab.Result, error) {
		return func() (lab.Result, error) { return l.PodGet(ctx, pod, url, n) }
	}
	fromNode := func(url string, n int) func() (lab.Result, error) {
		return func() (lab.Result, error) { return l.Get(ctx, url, n) }
	}

	// Hairpin: a pod reaching itself through its own Service is masqueraded, or its reply
	// would bypass the DNAT and the connection would break.
	self := create(lab.Service("self"))
	writeEndpoints(ctx, t, l, "self", l.Pods[:1])
	expectFlow(ctx, t, "hairpin: an endpoint pod to its own Service", fromPod(l.Pods[0], url(self, 80), 6), l.Pods[:1], lab.PodGatewayIP, "")
	// A pod inside the cluster CIDR reaching another pod is not masqueraded.
	expectFlow(ctx, t, "a pod to a Service whose endpoint is another pod", fromPod(l.Pods[1], url(self, 80), 6), l.Pods[:1], l.Pods[1].IP, "")

	// Another port of a cluster IP never reaches a process on the node.
	if err := l.StartNodeServer("host-process", ":81"); err != nil {
		t.Fatal(err)
	}
	expectFlow(ctx, t, "a pod to a cluster IP on a port the Service does not have", fromPod(l.Pods[1], url(self, 81), 2), nil, "", map[string]string{"iptables": "timeout", "ipvs": "refused"}[mode.flag])

	// internalTrafficPolicy Local: only this node's endpoints; none here means DROP.
	local := lab.Service("local")
	local.Spec.InternalTrafficPolicy = ptr.To(v1.ServiceInternalTrafficPolicyLocal)
	localSvc := create(local)
	l.Pods[2].NodeName = lab.OtherNodeName
	writeEndpoints(ctx, t, l, "local", []*lab.Pod{l.Pods[1], l.Pods[2]})
	expectFlow(ctx, t, "internalTrafficPolicy Local, a local endpoint exists", fromPod(l.Pods[0], url(localSvc, 80), 9), l.Pods[1:2], "", "")
	writeEndpoints(ctx, t, l, "local", l.Pods[2:])
	expectFlow(ctx, t, "internalTrafficPolicy Local, no local endpoint", fromPod(l.Pods[0], url(localSvc, 80), 2), nil, "", "timeout")
	l.Pods[2].NodeName = lab.NodeName

	// Session affinity: one client keeps reaching the same endpoint.
	sticky := lab.Service("sticky")
	sticky.Spec.SessionAffinity = v1.ServiceAffinityClientIP
	stickySvc := create(sticky)
	writeEndpoints(ctx, t, l, "sticky", l.Pods)
	// Once the Service is programmed, every batch must land on a single endpoint.
	stickyURL := url(stickySvc, 80)
	expectFlow(ctx, t, "sessionAffinity ClientIP", func() (lab.Result, error) {
		res, err := l.Get(ctx, stickyURL, 20)
		if err == nil && len(res.Answers) > 1 {
			err = fmt.Errorf("20 requests were answered by %v, want all by one pod", res.Answers)
		}
		return res, err
	}, nil, lab.PodGatewayIP, "")

	// Topology: with zone hints on every endpoint, only those hinted for this node's zone
	// (its topology.kubernetes.io/zone label) are used.
	node := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: lab.NodeName, Labels: map[string]string{v1.LabelTopologyZone: "zone-a"}}}
	if _, err := l.Client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating the Node: %v", err)
	}
	zonal := create(lab.Service("zonal"))
	zoneSlice := lab.EndpointSlice("zonal", l.Pods)
	for i := range zoneSlice.Endpoints {
		zone := "zone-b"
		if i == 0 {
			zone = "zone-a"
		}
		zoneSlice.Endpoints[i].Zone = ptr.To(zone)
		zoneSlice.Endpoints[i].Hints = &discovery.EndpointHints{ForZones: []discovery.ForZone{{Name: zone}}}
	}
	if err := createSlice(ctx, l, zoneSlice); err != nil {
		t.Fatal(err)
	}
	expectFlow(ctx, t, "topology hints: only the endpoints hinted for this node's zone", fromPod(l.Pods[1], url(zonal, 80), 12), l.Pods[:1], "", "")

	// Terminating fallback: with no ready endpoint, serving-and-terminating ones are used.
	drain := create(lab.Service("drain"))
	slice := lab.EndpointSlice("drain", l.Pods)
	for i := range slice.Endpoints {
		terminating := i > 0
		slice.Endpoints[i].Conditions = discovery.EndpointConditions{Ready: ptr.To(false), Serving: ptr.To(terminating), Terminating: ptr.To(terminating)}
	}
	if _, err := l.Client.DiscoveryV1().EndpointSlices("default").Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	expectFlow(ctx, t, "no ready endpoint: serving and terminating ones take the traffic", fromNode(url(drain, 80), 20), l.Pods[1:], lab.PodGatewayIP, "")
}
