package e2e

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/switchyard/switchyard/internal/lab"
)

// steadyTraffic sends requests to url on new connections, batch after batch, until
// stopped, and adds up what answered and what failed. Batches are paced (about 100
// connections a second): enough to catch a gap of tens of milliseconds. Unpaced (about
// 450 a second, near what the client's ephemeral ports allow with TIME_WAIT), one request
// in 20,000-35,000 timed out over a 60 s run in both iptables flavors; not pinned down.
type steadyTraffic struct {
	stop   context.CancelFunc
	done   chan struct{}
	mu     sync.Mutex
	total  lab.Result
	errors []error
}

const trafficPause = 80 * time.Millisecond

func startTraffic(ctx context.Context, l *lab.Lab, url string) *steadyTraffic {
	ctx, stop := context.WithCancel(ctx)
	s := &steadyTraffic{stop: stop, done: make(chan struct{}),
		total: lab.Result{Answers: map[string]int{}, Failures: map[string]int{}}}
	go func() {
		defer close(s.done)
		for ctx.Err() == nil {
			res, err := l.Get(ctx, url, 10)
			s.mu.Lock()
			if err != nil && ctx.Err() == nil {
				s.errors = append(s.errors, err)
			}
			for pod, n := range res.Answers {
				s.total.Answers[pod] += n
			}
			for kind, n := range res.Failures {
				s.total.Failures[kind] += n
			}
			if res.LastError != "" {
				s.total.LastError = res.LastError
			}
			s.mu.Unlock()
			select {
			case <-ctx.Done():
			case <-time.After(trafficPause):
			}
		}
	}()
	return s
}

// finish stops the traffic and returns the requests answered and failed.
func (s *steadyTraffic) finish(t *testing.T) (answered, failed int) {
	t.Helper()
	s.stop()
	<-s.done
	for _, err := range s.errors {
		t.Errorf("the traffic generator failed: %v", err)
	}
	return sum(s.total.Answers), sum(s.total.Failures)
}

// TestRestartUnderTraffic restarts switchyard while a client keeps opening connections to
// a Service: not one request may fail. The stopping proxy leaves its rules in place, and
// the new one adopts them without flushing first.
func TestRestartUnderTraffic(t *testing.T) {
	forEachMode(t, "TestRestartUnderTraffic", testRestartUnderTraffic)
}

func testRestartUnderTraffic(t *testing.T, mode proxyMode) {
	l, ctx := startProxy(t, mode)
	_, url := serveWeb(ctx, t, l, l.Pods)

	traffic := startTraffic(ctx, l, url)
	time.Sleep(2 * time.Second)
	restart := time.Now()
	l.StopProxy()
	time.Sleep(time.Second) // the node runs without a proxy for a moment, as in a rolling update
	startProxyIn(t, l, mode)
	// The change is written once the new proxy has synced what the old one left, so that
	// the window for it is the change's own (the first sync took 28 s once in the kernel
	// lab, under this traffic); the handover below still counts from the stop.
	waitForFullSync(ctx, t, l, 3*time.Minute)
	// The new proxy is in charge once it applies a change.
	writeEndpoints(ctx, t, l, "web", l.Pods[:2])
	expectFlow(ctx, t, "after the restart", func() (lab.Result, error) { return l.Get(ctx, url, 30) }, l.Pods[:2], "", "")
	handover := time.Since(restart)
	time.Sleep(2 * time.Second)
	answered, failed := traffic.finish(t)
	t.Logf("%s: %d requests answered, %d failed, across a restart whose new proxy applied its first change %.1fs after the old one was stopped",
		mode.name, answered, failed, handover.Seconds())
	if failed > 0 || answered == 0 {
		t.Errorf("%d of %d requests failed across the restart (last error: %s)", failed, answered+failed, traffic.total.LastError)
	}
}

// TestXtablesLockHeld holds the xtables lock for 10 s while an endpoint changes: the
// sync waits and retries instead of crashing, the old rules keep serving meanwhile, and
// the change is applied once the lock is free. Only the legacy flavor takes the lock.
func TestXtablesLockHeld(t *testing.T) {
	l, ctx := startProxy(t, proxyModes[1])
	_, url := serveWeb(ctx, t, l, l.Pods[:1])
	get := func() (lab.Result, error) { return l.Get(ctx, url, 20) }

	const held = 10 * time.Second
	lock := exec.CommandContext(ctx, "flock", "/run/xtables.lock", "sleep", fmt.Sprint(held.Seconds()))
	if err := lock.Start(); err != nil {
		t.Fatalf("holding the xtables lock (install util-linux for flock): %v", err)
	}
	t.Cleanup(func() { _ = lock.Process.Kill(); _ = lock.Wait() })
	locked := time.Now()
	time.Sleep(500 * time.Millisecond) // flock has the lock
	writeEndpoints(ctx, t, l, "web", l.Pods[1:2])
	// The old rules serve while the lock is held.
	expectFlow(ctx, t, "while the lock is held", get, l.Pods[:1], "", "")
	if err := lock.Wait(); err != nil {
		t.Fatalf("flock: %v", err)
	}
	expectFlow(ctx, t, "after the lock is released", get, l.Pods[1:2], "", "")
	t.Logf("the change written while the lock was held was applied %.1fs after the lock was taken (held %s)", time.Since(locked).Seconds(), held)
	if !l.ProxyRunning() {
		t.Fatal("switchyard exited while the xtables lock was held")
	}
}

// TestMalformedObjects stores Services and an EndpointSlice with values the apiserver no
// longer accepts, as older releases may have left them in etcd. Each unusable field is
// skipped with a log line and a Warning Event naming the object and the field, and the
// Services around them keep working. The lab's etcd is only reachable from the host, so
// this runs in the host's modes; translation is the same in every mode.
func TestMalformedObjects(t *testing.T) {
	forModes(t, "TestMalformedObjects", proxyModes[:2], testMalformedObjects)
}

func testMalformedObjects(t *testing.T, mode proxyMode) {
	l, ctx := startProxy(t, mode)
	_, url := serveWeb(ctx, t, l, l.Pods)
	get := func() (lab.Result, error) { return l.Get(ctx, url, 30) }

	stored := func(name, clusterIP string, edit func(*v1.Service)) {
		t.Helper()
		s := lab.Service(name)
		s.TypeMeta = metav1.TypeMeta{APIVersion: "v1", Kind: "Service"}
		s.Namespace, s.UID, s.CreationTimestamp = "default", types.UID("uid-"+name), metav1.Now()
		s.Spec.ClusterIP, s.Spec.ClusterIPs = clusterIP, []string{clusterIP}
		edit(s)
		if err := l.ControlPlane().PutStorage(ctx, "/registry/services/specs/default/"+name, s); err != nil {
			t.Fatal(err)
		}
	}
	stored("bad-external-ip", "10.96.200.1", func(s *v1.Service) { s.Spec.ExternalIPs = []string{"192.0.2.300"} })
	stored("bad-protocol", "10.96.200.2", func(s *v1.Service) { s.Spec.Ports[0].Protocol = "ICMP" })
	stored("bad-port", "10.96.200.3", func(s *v1.Service) { s.Spec.Ports[0].Port = 70000 })
	slice := lab.EndpointSlice("web", l.Pods[:1])
	slice.TypeMeta = metav1.TypeMeta{APIVersion: "discovery.k8s.io/v1", Kind: "EndpointSlice"}
	slice.Name, slice.Namespace, slice.UID, slice.CreationTimestamp = "web-bad", "default", "uid-web-bad", metav1.Now()
	slice.Endpoints = append([]discovery.Endpoint{{Addresses: []string{"10.244.0"}}}, slice.Endpoints...)
	if err := l.ControlPlane().PutStorage(ctx, "/registry/endpointslices/default/web-bad", slice); err != nil {
		t.Fatal(err)
	}

	for object, field := range map[string]string{
		"bad-external-ip": "spec.externalIPs[0]",
		"bad-protocol":    "spec.ports[0].protocol",
		"bad-port":        "spec.ports[0].port",
		"web-bad":         "endpoints[0].addresses[0]",
	} {
		expectInvalidFieldEvent(ctx, t, l.Client, object, field)
	}
	expectFlow(ctx, t, "after the malformed objects", get, l.Pods, "", "")
	// A Service whose only bad field was skipped is still served on its cluster IP.
	writeEndpoints(ctx, t, l, "bad-external-ip", l.Pods[:1])
	expectFlow(ctx, t, "the Service with a skipped externalIP", func() (lab.Result, error) {
		return l.Get(ctx, "http://10.96.200.1:80/", 10)
	}, l.Pods[:1], "", "")
}

// TestRepairsWhatOthersRemove removes switchyard's state behind its back and waits for
// traffic to come back. iptables modes: every table is flushed (as a firewall reload
// does) under a 10-minute sync period, so only the canary chain can explain a quick
// repair. IPVS mode: the Service's virtual server and its kube-ipvs0 address are deleted,
// and the next periodic full sync (10 s here) puts them back.
func TestRepairsWhatOthersRemove(t *testing.T) {
	forEachMode(t, "TestRepairsWhatOthersRemove", testRepairsWhatOthersRemove)
}

func testRepairsWhatOthersRemove(t *testing.T, mode proxyMode) {
	syncPeriod := "10m"
	if mode.flag == "ipvs" {
		syncPeriod = "10s"
	}
	l, ctx := startProxy(t, mode, "--sync-period="+syncPeriod)
	svc, url := serveWeb(ctx, t, l, l.Pods)
	get := func() (lab.Result, error) { return l.Get(ctx, url, 10) }

	var removals [][]string
	if mode.flag == "ipvs" {
		removals = [][]string{
			{"ipvsadm", "-D", "-t", svc.Spec.ClusterIP + ":80"},
			{"ip", "addr", "del", svc.Spec.ClusterIP + "/32", "dev", "kube-ipvs0"},
		}
	} else {
		for _, table := range []string{"nat", "filter", "mangle"} {
			removals = append(removals, []string{"iptables-" + mode.flavor, "-t", table, "-F"}, []string{"iptables-" + mode.flavor, "-t", table, "-X"})
		}
	}
	for _, cmd := range removals {
		if out, err := l.NodeOutput(ctx, cmd[0], cmd[1:]...); err != nil {
			t.Fatalf("%s: %v: %s", strings.Join(cmd, " "), err, out)
		}
	}
	removed := time.Now()
	fullSyncs := fullSyncCount(ctx, t, l)
	if res, err := l.Get(ctx, url, 1); err == nil && len(res.Answers) > 0 {
		t.Fatalf("the Service still answered right after its state was removed: the removal did not take (%v)", res.Answers)
	}
	if mode.flag == "ipvs" {
		// A full sync that started after the removal must repair it. The kernel lab's
		// full syncs take seconds each, more under load, so the test waits for one to
		// complete (two counted from the removal) rather than for a fixed time.
		err := lab.Eventually(ctx, 2*time.Minute, 500*time.Millisecond, func() error {
			if n := fullSyncCount(ctx, t, l); n < fullSyncs+2 {
				return fmt.Errorf("%d full syncs since the removal", n-fullSyncs)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("no full sync after the removal: %v", err)
		}
	}
	err := lab.Eventually(ctx, 40*time.Second, 250*time.Millisecond, func() error {
		res, err := get()
		if err != nil {
			return err
		}
		if len(res.Answers) != len(l.Pods) || sum(res.Failures) > 0 {
			return fmt.Errorf("answered by %v, failures %v", res.Answers, res.Failures)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("not repaired: %v", err)
	}
	t.Logf("%s: traffic restored %.1fs after the removal (sync period %s)", mode.name, time.Since(removed).Seconds(), syncPeriod)
}

// TestAPIServerOutage stops the apiserver for 60 s under steady traffic. The rules stay
// and the requests are answered (see the bound at the end); an endpoint change stored while the apiserver was
// stopped (written to etcd, where the apiserver finds it when it resumes) is applied once
// the proxy reaches the apiserver again. The lab's etcd and apiserver run on the host, so
// this runs in the host's modes; the watch and retry logic is the same in every mode.
func TestAPIServerOutage(t *testing.T) {
	forModes(t, "TestAPIServerOutage", proxyModes[:2], testAPIServerOutage)
}

func testAPIServerOutage(t *testing.T, mode proxyMode) {
	l, ctx := startProxy(t, mode)
	_, url := serveWeb(ctx, t, l, l.Pods)
	slice, err := l.Client.DiscoveryV1().EndpointSlices("default").Get(ctx, "web-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	traffic := startTraffic(ctx, l, url)

	cp := l.ControlPlane()
	if err := cp.PauseAPIServer(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cp.ResumeAPIServer() })
	// Scale to one endpoint while the apiserver is down.
	slice.TypeMeta = metav1.TypeMeta{APIVersion: "discovery.k8s.io/v1", Kind: "EndpointSlice"}
	slice.ResourceVersion, slice.ManagedFields = "", nil
	slice.Endpoints = slice.Endpoints[:1]
	if err := cp.PutStorage(ctx, "/registry/endpointslices/default/web-1", slice); err != nil {
		t.Fatal(err)
	}
	time.Sleep(60 * time.Second)
	if !l.ProxyRunning() {
		t.Fatal("switchyard exited while the apiserver was stopped")
	}
	if err := cp.ResumeAPIServer(); err != nil {
		t.Fatal(err)
	}
	resumed := time.Now()
	err = lab.Eventually(ctx, 2*time.Minute, 500*time.Millisecond, func() error {
		res, err := l.Get(ctx, url, 20)
		if err != nil {
			return err
		}
		if len(res.Answers) != 1 || res.Answers[l.Pods[0].Name] == 0 {
			return fmt.Errorf("answered by %v, want only %s", res.Answers, l.Pods[0].Name)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("the change stored during the outage was not applied: %v", err)
	}
	applied := time.Since(resumed)
	answered, failed := traffic.finish(t)
	t.Logf("%s: apiserver stopped 60s; %d requests answered, %d failed; the change made during the outage was applied %.1fs after it resumed",
		mode.name, answered, failed, applied.Seconds())
	// The same bound as the churn soak's (soakFailureRatio): on this 2-core machine a
	// rare request times out with no rule change at all. Here that was 0 in about 6,000
	// per run until 2026-12-03, then 1 in about 6,000 in 5 runs of 7 (either flavor; not
	// the ICMP rate limit, not the NodePorts on 127.0.0.1: both ruled out by a run without
	// them), cause still to find. A proxy that broke the data path during the outage would
	// fail hundreds.
	if answered == 0 || failed*soakFailureRatio > answered+failed {
		t.Errorf("%d of %d requests failed during the outage, more than 1 in %d (last error: %s)", failed, answered+failed, soakFailureRatio, traffic.total.LastError)
	}
}
