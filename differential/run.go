package differential

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/switchyard/switchyard/benchmarks"
	"github.com/switchyard/switchyard/internal/lab"
)

// RunOptions configures Run.
type RunOptions struct {
	// Mode is benchmarks.ModeIPTablesNft or ModeIPTablesLegacy (the node runs natively,
	// in a network namespace of this machine) or ModeIPVS (in the kernel lab).
	Mode      string
	Scenarios []Scenario
	// Binaries holds the paths of switchyard, kube-proxy, labagent and differential
	// (this program, which runs each proxy inside the kernel lab's guest).
	Binaries map[string]string
	// Dir is a scratch directory for the labs' logs and PATH shims.
	Dir string
	// KernelLab is the path of hack/kernel-lab/run.sh, for ModeIPVS.
	KernelLab string
	// Tries is how many requests each probe makes: enough that every endpoint of a
	// Service answers at least once. Under iptables' random selection that takes 40 (4
	// endpoints: a miss once in 25,000 probes); under IPVS's round robin, with the probes
	// of a virtual server one after the other (probeAll), 3 rounds of 4 do.
	Tries int
	// ProbeTimeout is how long a request waits for its answer: longer in the kernel lab,
	// where every syscall costs a host context switch, and long enough there for SCTP's
	// four-packet handshake and its answer on a loaded machine (at 3 s, one association
	// in a few hundred timed out under either proxy).
	ProbeTimeout time.Duration
	// Parallel is how many probes run at once. Most of a probe's time is spent waiting
	// (for answers, or for the timeouts of a DROP), so more than the CPUs pay off; in
	// the kernel lab, where every probe waits longer, even more do.
	Parallel int
	Logf     func(format string, args ...any)
}

// endpointSlices are the scenarios' EndpointSlices by Service name.
func (o RunOptions) endpointSlices() map[string][]*discovery.EndpointSlice {
	byService := map[string][]*discovery.EndpointSlice{}
	for _, sc := range o.Scenarios {
		byService[sc.Name] = sc.Slices
	}
	return byService
}

// ProtocolsFor are the Service protocols the scenarios of mode draw from: SCTP only in
// IPVS mode, whose kernel lab has the sctp module (the host kernel of the native modes
// need not have it, and this project's build machine has not).
func ProtocolsFor(mode string) []v1.Protocol {
	if mode == benchmarks.ModeIPVS {
		return []v1.Protocol{v1.ProtocolTCP, v1.ProtocolUDP, v1.ProtocolSCTP}
	}
	return []v1.Protocol{v1.ProtocolTCP, v1.ProtocolUDP}
}

// Proxies are the proxies compared, in the order they run.
var Proxies = []string{benchmarks.ProxySwitchyard, benchmarks.ProxyKubeProxy}

// The lab's pods: endpoints, the first half on this node, the rest reported on another
// node (they are reachable from this node all the same, as remote pods are through a
// CNI); and one more on this node that is never an endpoint (FromStickyPod).
const (
	endpointPods = 6
	localPods    = 3
	labPods      = endpointPods + 1
)

// Zone is the node's topology zone, for topology hints.
const Zone = "zone-a"

// PodRefs are the endpoints the lab provides, for Generate.
func PodRefs() []PodRef {
	var refs []PodRef
	for i := range endpointPods {
		node := lab.NodeName
		if i >= localPods {
			node = lab.OtherNodeName
		}
		refs = append(refs, PodRef{Name: fmt.Sprintf("pod-%d", i+1), IP: fmt.Sprintf("10.244.0.%d", 11+i), Node: node})
	}
	return refs
}

// ProxyRun is what one proxy did with the scenarios.
type ProxyRun struct {
	Proxy    string             `json:"proxy"`
	Outcomes map[string]Outcome `json:"outcomes"` // by Probe.ID
	// Programmed is what the proxy wrote in the kernel: iptables-save, and in IPVS mode
	// ipvsadm-save and ipset save.
	Programmed string `json:"programmed,omitempty"`
	// SyncSeconds is how long the proxy took from its start to its first complete sync.
	SyncSeconds float64 `json:"syncSeconds"`
}

// Run runs every proxy on a fresh node holding the scenarios, probes every entry point
// under each, and reports the probes whose outcomes differ. Natively the proxies run in
// turn (the native lab's names are fixed); in IPVS mode each has a kernel lab guest of
// its own, and they run at once: a guest is one CPU-bound process, and the slow part.
func Run(ctx context.Context, o RunOptions) (*ModeReport, error) {
	m := &ModeReport{Mode: o.Mode}
	services := make([][]*v1.Service, len(Proxies))
	runs := make([]*ProxyRun, len(Proxies))
	errs := make([]error, len(Proxies))
	runProxy := func(i int) {
		if o.Mode == benchmarks.ModeIPVS {
			// Slot 0 is the one the tests and the demo use.
			services[i], runs[i], errs[i] = runInKernelLab(ctx, o, Proxies[i], 1+i)
		} else {
			services[i], runs[i], errs[i] = runNatively(ctx, o, Proxies[i])
		}
	}
	var wg sync.WaitGroup
	for i := range Proxies {
		if o.Mode != benchmarks.ModeIPVS {
			runProxy(i)
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			runProxy(i)
		}()
	}
	wg.Wait()
	for i, proxy := range Proxies {
		if errs[i] != nil {
			return nil, fmt.Errorf("%s in %s mode: %w", proxy, o.Mode, errs[i])
		}
		m.Runs = append(m.Runs, *runs[i])
	}
	// Every run's apiserver holds the same Services: the scenarios fix their addresses.
	all := allProbes(services[0], o.endpointSlices())
	about := map[string][]string{}
	for _, svc := range services[0] {
		about[svc.Name] = needles(svc)
	}
	m.Probes = len(all)
	m.Divergences = Compare(all, m.Runs, about)
	traits := map[string][]string{}
	for _, sc := range o.Scenarios {
		traits[sc.Name] = sc.Traits
		m.Scenarios = append(m.Scenarios, ScenarioID{Name: sc.Name, Traits: sc.Traits})
	}
	explain(o.Mode, traits, m.Divergences)
	return m, nil
}

// runNatively runs proxy on a fresh lab of its own, with its own apiserver.
func runNatively(ctx context.Context, o RunOptions, proxy string) (_ []*v1.Service, _ *ProxyRun, err error) {
	dir := filepath.Join(o.Dir, o.Mode, proxy)
	l, err := lab.Start(ctx, lab.Options{Dir: dir, Pods: labPods, Agent: o.Binaries["labagent"]})
	if err != nil {
		return nil, nil, err
	}
	defer func() { err = errors.Join(err, l.Close()) }()
	services, err := prepare(ctx, l.Client, o.Scenarios)
	if err != nil {
		return nil, nil, err
	}
	run, err := RunProxy(ctx, l, o, proxy, services)
	return services, run, err
}

// prepare writes the Node and every scenario to the apiserver, and returns the Services
// as the apiserver holds them.
func prepare(ctx context.Context, client kubernetes.Interface, scenarios []Scenario) ([]*v1.Service, error) {
	if err := createNode(ctx, client); err != nil {
		return nil, err
	}
	var services []*v1.Service
	for i, sc := range scenarios {
		svc, err := apply(ctx, client, i, sc)
		if err != nil {
			return nil, fmt.Errorf("scenario %s: %w", sc.Name, err)
		}
		services = append(services, svc)
	}
	return services, nil
}

// RunProxy runs proxy in o.Mode on the lab l, whose apiserver holds services, until it
// has synced them, probes them, and stops it.
func RunProxy(ctx context.Context, l *lab.Lab, o RunOptions, proxy string, services []*v1.Service) (*ProxyRun, error) {
	for i, p := range l.Pods {
		if i >= localPods && i < endpointPods {
			p.NodeName = lab.OtherNodeName
		}
	}
	modeFlag := "--proxy-mode=iptables"
	if o.Mode == benchmarks.ModeIPVS {
		modeFlag = "--proxy-mode=ipvs"
	}
	popts := benchmarks.ProxyOptions{Mode: o.Mode, Binaries: o.Binaries, Scratch: filepath.Join(l.Dir, "shims")}
	bin, args, err := benchmarks.ProxyCommand(popts, proxy,
		modeFlag,
		"--kubeconfig="+l.Kubeconfig,
		"--hostname-override="+lab.NodeName,
		"--cluster-cidr="+lab.ClusterCIDR,
		"--metrics-bind-address=127.0.0.1:10249",
		"--healthz-bind-address=127.0.0.1:10256",
		"--conntrack-max-per-core=0",
	)
	if err != nil {
		return nil, err
	}
	if err := setFlavorHint(ctx, l, o.Mode); err != nil {
		return nil, err
	}
	// The node answers every rejected connection: at the kernel's default rate limit (one
	// ICMP error a second per peer) a REJECT would look like a DROP to the requests after
	// the first, and to the other probes from the same place. (Not in the lab's default:
	// with it, TestAPIServerOutage loses one request in 6,000 to an ICMP error the limit
	// otherwise swallows; which one is still to find.)
	if _, err := l.NodeOutput(ctx, "sysctl", "-qw", "net.ipv4.icmp_ratelimit=0", "net.ipv6.icmp.ratelimit=0"); err != nil {
		return nil, fmt.Errorf("lifting the node's ICMP rate limit: %w", err)
	}
	start := time.Now()
	logPath, err := l.StartProxy(bin, args...)
	if err != nil {
		return nil, err
	}
	defer l.StopProxy()
	if err := waitSynced(ctx, l, o.Mode); err != nil {
		return nil, fmt.Errorf("%w (log: %s)", err, logPath)
	}
	run := &ProxyRun{Proxy: proxy, Outcomes: map[string]Outcome{}, SyncSeconds: time.Since(start).Seconds()}
	o.Logf("%s %s: synced %d Services in %.1fs", proxy, o.Mode, len(services), run.SyncSeconds)
	phases := map[string][]Probe{}
	for _, p := range allProbes(services, o.endpointSlices()) {
		phases[p.Phase] = append(phases[p.Phase], p)
	}
	if err := probeInto(ctx, l, run, phases[""], o); err != nil {
		return nil, err
	}
	// The UDP flows across a restart: once before it, and once the new proxy has synced.
	flows := phases[PhaseRestart]
	before, err := probeAll(ctx, l, flows, flowTries, o)
	if err != nil {
		return nil, err
	}
	l.StopProxy()
	if logPath, err = l.StartProxy(bin, args...); err != nil {
		return nil, err
	}
	if err := waitSynced(ctx, l, o.Mode); err != nil {
		return nil, fmt.Errorf("after the restart: %w (log: %s)", err, logPath)
	}
	after, err := probeAll(ctx, l, flows, flowTries, o)
	if err != nil {
		return nil, err
	}
	for i, p := range flows {
		run.Outcomes[p.ID()] = flowOutcome(before[i], after[i])
	}
	tainted := phases[PhaseTainted]
	if err := taintNode(ctx, l); err != nil {
		return nil, err
	}
	if err := probeInto(ctx, l, run, tainted, o); err != nil {
		return nil, err
	}
	o.Logf("%s %s: %d probes in %.1fs", proxy, o.Mode, len(run.Outcomes), time.Since(start).Seconds()-run.SyncSeconds)
	dumps := [][]string{{"iptables-" + flavor(o.Mode) + "-save"}}
	if o.Mode == benchmarks.ModeIPVS {
		dumps = append(dumps, []string{"ipvsadm-save", "-n"}, []string{"ipset", "save"})
	}
	for _, d := range dumps {
		out, err := l.NodeOutput(ctx, d[0], d[1:]...)
		if err != nil {
			return nil, err
		}
		run.Programmed += out
	}
	return run, nil
}

// flowTries is how many datagrams a UDP flow sends on each side of the restart.
const flowTries = 3

// probeInto runs probes and records their outcomes in run.
func probeInto(ctx context.Context, l *lab.Lab, run *ProxyRun, probes []Probe, o RunOptions) error {
	results, err := probeAll(ctx, l, probes, o.Tries, o)
	if err != nil {
		return err
	}
	for i, p := range probes {
		run.Outcomes[p.ID()] = outcome(p, results[i])
	}
	return nil
}

// taintNode taints the Node ToBeDeletedByClusterAutoscaler, as the cluster autoscaler
// does before it deletes a node, and waits until the proxy's /healthz says the node is
// not eligible any more, or 20 s: a proxy that never says so is what the probes after
// it show, not an error of the run.
func taintNode(ctx context.Context, l *lab.Lab) error {
	node, err := l.Client.CoreV1().Nodes().Get(ctx, lab.NodeName, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("reading Node %s: %w", lab.NodeName, err)
	}
	node.Spec.Taints = append(node.Spec.Taints, v1.Taint{Key: toBeDeletedTaint, Value: strconv.FormatInt(time.Now().Unix(), 10), Effect: v1.TaintEffectNoSchedule})
	if _, err := l.Client.CoreV1().Nodes().Update(ctx, node, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("tainting Node %s: %w", lab.NodeName, err)
	}
	_ = lab.Eventually(ctx, 20*time.Second, 250*time.Millisecond, func() error {
		out, err := l.NodeOutput(ctx, "curl", "-s", "http://"+healthzAddr+"/healthz")
		if err != nil || !strings.Contains(out, `"nodeEligible":false`) {
			return fmt.Errorf("/healthz: %s (%v)", out, err)
		}
		return nil
	})
	return nil
}

// flavor is the iptables flavor of a mode: the kernel lab's is legacy.
func flavor(mode string) string {
	if mode == benchmarks.ModeIPTablesNft {
		return "nft"
	}
	return "legacy"
}

// runInKernelLab runs proxy in a kernel lab guest of its own (on guest link slot), booted
// for it so that it starts from a pristine kernel (kube-proxy's --cleanup does not empty
// an IPVS node in the lab), against an apiserver on the host that holds the scenarios.
// The guest runs `differential guest` (see GuestMain), which writes the run to a file.
func runInKernelLab(ctx context.Context, o RunOptions, proxy string, slot int) (_ []*v1.Service, _ *ProxyRun, err error) {
	dir := filepath.Join(o.Dir, o.Mode, proxy)
	g, err := lab.StartGuestLink(ctx, filepath.Join(dir, "link"), o.KernelLab, slot)
	if err != nil {
		return nil, nil, err
	}
	defer func() { err = errors.Join(err, g.Close()) }()
	cfg, err := clientcmd.BuildConfigFromFlags("", g.Kubeconfig)
	if err != nil {
		return nil, nil, err
	}
	cfg.QPS = -1
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, nil, err
	}
	services, err := prepare(ctx, client, o.Scenarios)
	if err != nil {
		return nil, nil, err
	}
	file := filepath.Join(dir, "run.json")
	var out strings.Builder
	err = g.Run(ctx, &out, nil, o.Binaries["differential"], "guest", "-kubeconfig", g.Kubeconfig, "-proxy", proxy,
		"-bin-switchyard", o.Binaries[benchmarks.ProxySwitchyard], "-bin-kube-proxy", o.Binaries[benchmarks.ProxyKubeProxy],
		"-agent", o.Binaries["labagent"], "-dir", filepath.Join(dir, "guest"), "-tries", strconv.Itoa(o.Tries),
		"-timeout", o.ProbeTimeout.String(), "-parallel", strconv.Itoa(o.Parallel), "-out", file)
	o.Logf("%s", strings.TrimSpace(out.String()))
	if err != nil {
		return nil, nil, err
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, nil, err
	}
	var run ProxyRun
	if err := json.Unmarshal(data, &run); err != nil {
		return nil, nil, fmt.Errorf("reading %s: %w", file, err)
	}
	return services, &run, nil
}

// Guest runs one proxy inside the kernel lab's guest, where the node is the guest
// itself, against the apiserver of kubeconfig (which holds the scenarios), and writes
// the run as JSON to out.
func Guest(ctx context.Context, o RunOptions, kubeconfig, proxy, out string) (err error) {
	l, err := lab.Start(ctx, lab.Options{Dir: o.Dir, Pods: labPods, Agent: o.Binaries["labagent"], Kubeconfig: kubeconfig})
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, l.Close()) }()
	list, err := l.Client.CoreV1().Services(Namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("listing the scenarios' Services: %w", err)
	}
	var services []*v1.Service
	for i := range list.Items {
		// The apiserver's own Service shares the namespace; it is no scenario.
		if list.Items[i].Name != "kubernetes" {
			services = append(services, &list.Items[i])
		}
	}
	// The scenarios' order, which their names follow.
	slices.SortFunc(services, func(a, b *v1.Service) int { return strings.Compare(a.Name, b.Name) })
	// The scenarios' EndpointSlices, for the probes that depend on them.
	epSlices, err := l.Client.DiscoveryV1().EndpointSlices(Namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("listing the scenarios' EndpointSlices: %w", err)
	}
	o.Scenarios = nil
	for _, svc := range services {
		sc := Scenario{Name: svc.Name, Service: svc}
		for i := range epSlices.Items {
			if epSlices.Items[i].Labels[discovery.LabelServiceName] == svc.Name {
				sc.Slices = append(sc.Slices, &epSlices.Items[i])
			}
		}
		o.Scenarios = append(o.Scenarios, sc)
	}
	run, err := RunProxy(ctx, l, o, proxy, services)
	if err != nil {
		return err
	}
	data, err := json.Marshal(run)
	if err != nil {
		return err
	}
	return os.WriteFile(out, data, 0o644)
}

// createNode registers the node as kubelet would, in the zone topology hints name.
func createNode(ctx context.Context, client kubernetes.Interface) error {
	if err := benchmarks.CreateNode(ctx, client); err != nil {
		return err
	}
	patch := fmt.Sprintf(`{"metadata":{"labels":{%q:%q}}}`, v1.LabelTopologyZone, Zone)
	if _, err := client.CoreV1().Nodes().Patch(ctx, lab.NodeName, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("labelling Node %s with its zone: %w", lab.NodeName, err)
	}
	return nil
}

// setFlavorHint leaves kubelet's iptables flavor hint for the mode, which switchyard
// follows (kube-proxy gets the flavor from its PATH, see benchmarks.ProxyCommand).
func setFlavorHint(ctx context.Context, l *lab.Lab, mode string) error {
	// The kernel lab has no nf_tables: its only flavor is legacy, which switchyard finds
	// by itself there.
	if mode != benchmarks.ModeIPTablesLegacy {
		return nil
	}
	if _, err := l.NodeOutput(ctx, "iptables-legacy", "-t", "mangle", "-N", "KUBE-IPTABLES-HINT"); err != nil {
		return fmt.Errorf("creating the legacy hint chain: %w", err)
	}
	return nil
}

// apply writes scenario i with addresses fixed by its index, so that both proxies' labs
// hold the very same objects: cluster IP 10.96.(100+i/250).(1+i%250), node ports
// 30100+4i+port, health check node port 30100+4i+3.
func apply(ctx context.Context, client kubernetes.Interface, i int, sc Scenario) (*v1.Service, error) {
	svc := sc.Service.DeepCopy()
	if svc.Spec.Type != v1.ServiceTypeExternalName && svc.Spec.ClusterIP != v1.ClusterIPNone {
		ip := fmt.Sprintf("10.96.%d.%d", 100+i/250, 1+i%250)
		svc.Spec.ClusterIP, svc.Spec.ClusterIPs = ip, []string{ip}
	}
	if svc.Spec.Type == v1.ServiceTypeNodePort || svc.Spec.Type == v1.ServiceTypeLoadBalancer {
		for k := range svc.Spec.Ports {
			svc.Spec.Ports[k].NodePort = int32(30100 + 4*i + k)
		}
		if svc.Spec.Type == v1.ServiceTypeLoadBalancer && svc.Spec.ExternalTrafficPolicy == v1.ServiceExternalTrafficPolicyLocal {
			svc.Spec.HealthCheckNodePort = int32(30100 + 4*i + 3)
		}
	}
	created, err := client.CoreV1().Services(svc.Namespace).Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("creating Service: %w", err)
	}
	if len(svc.Status.LoadBalancer.Ingress) > 0 {
		created.Status = svc.Status
		if created, err = client.CoreV1().Services(svc.Namespace).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
			return nil, fmt.Errorf("writing the load-balancer status: %w", err)
		}
	}
	for _, slice := range sc.Slices {
		if _, err := client.DiscoveryV1().EndpointSlices(slice.Namespace).Create(ctx, slice, metav1.CreateOptions{}); err != nil {
			return nil, fmt.Errorf("creating EndpointSlice %s: %w", slice.Name, err)
		}
	}
	return created, nil
}

// waitSynced waits until the proxy has synced everything it was told of, in every IP
// family: each family's proxier has completed a sync, and queued none after it. Every
// object was written before the proxy started, so its first complete syncs hold them
// all. But the Node's zone comes by another informer, and in the kernel lab kube-proxy
// may hear of it only after its first sync, ignoring zone hints until its next (seen:
// a port answered by an endpoint hinted for another zone, and a UDP flow that moved
// across the restart). So in IPVS mode it waits for a second sync, which comes within
// the sync period in either proxy; in iptables mode kube-proxy's next periodic sync is
// an hour away, and natively the Node is heard of first. (Both proxies label these
// series by ip_family; one family's quick sync says nothing of the other's.)
func waitSynced(ctx context.Context, l *lab.Lab, mode string) error {
	minSyncs := 1.0
	if mode == benchmarks.ModeIPVS {
		minSyncs = 2
	}
	// kube-proxy's IPVS mode takes minutes for its first sync of hundreds of Services in
	// the kernel lab (289 s at 1,000 in the benchmark).
	return lab.Eventually(ctx, 20*time.Minute, 250*time.Millisecond, func() error {
		out, err := l.NodeOutput(ctx, "curl", "-sf", "http://127.0.0.1:10249/metrics")
		if err != nil {
			return err
		}
		synced, queued := series(out, "kubeproxy_sync_proxy_rules_last_timestamp_seconds"), series(out, "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds")
		syncs := series(out, "kubeproxy_sync_proxy_rules_duration_seconds_count")
		if len(queued) == 0 {
			return fmt.Errorf("no sync queued yet")
		}
		for labels, q := range queued {
			if s := synced[labels]; s == 0 || q > s || syncs[labels] < minSyncs {
				return fmt.Errorf("not synced yet %s (%.0f syncs, the last at %.3f, last queued %.3f)", labels, syncs[labels], s, q)
			}
		}
		return nil
	})
}

// series are the values of a metric's series in a Prometheus text scrape, by their
// labels ("" for a series without labels).
func series(scrape, name string) map[string]float64 {
	out := map[string]float64{}
	for _, line := range strings.Split(scrape, "\n") {
		rest, ok := strings.CutPrefix(line, name)
		if !ok || (rest != "" && rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		labels, value, _ := strings.Cut(rest, " ")
		if f, err := strconv.ParseFloat(strings.TrimSpace(value), 64); err == nil {
			out[labels] = f
		}
	}
	return out
}

// probeAll runs the probes, parallel at a time (each waits on the network, not the CPU,
// while its requests time out), and returns their results in order. The probes of one
// Service with ClientIP affinity run one after the other: its entry points share the
// affinity of each endpoint (one "recent" list per endpoint, in either proxy), so a
// probe running beside another would see the other's pick. In IPVS mode, the probes of
// one virtual server run one after the other too: its round robin then hands each probe
// every endpoint in turn, which is what lets o.Tries be small there.
func probeAll(ctx context.Context, l *lab.Lab, probes []Probe, tries int, o RunOptions) ([]lab.Result, error) {
	timeout, parallel := o.ProbeTimeout, max(o.Parallel, 1)
	results := make([]lab.Result, len(probes))
	errs := make([]error, len(probes))
	next := make(chan []int)
	var wg sync.WaitGroup
	for range parallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for batch := range next {
				for _, i := range batch {
					p := probes[i]
					n := tries
					if p.Entry == EntryHealthCheck || p.Entry == EntryHealthz {
						n = 1
					}
					args := []string{"-timeout", timeout.String(), "-source-port", strconv.Itoa(p.SourcePort), p.Protocol, p.Addr, strconv.Itoa(n)}
					results[i], errs[i] = l.Probe(ctx, p.From, args...)
				}
			}
		}()
	}
	for _, batch := range probeBatches(probes, o.Mode == benchmarks.ModeIPVS) {
		next <- batch
	}
	close(next)
	wg.Wait()
	return results, errors.Join(errs...)
}

// probeBatches groups the probes (by index) that must run one after the other: those of
// one sticky Service together; with roundRobin, those of one address and protocol (one
// IPVS virtual server) together; every other probe alone.
func probeBatches(probes []Probe, roundRobin bool) [][]int {
	var batches [][]int
	together := map[string]int{} // what must run one after the other -> its batch
	for i, p := range probes {
		key := ""
		switch {
		case p.Sticky:
			key = "sticky " + p.Scenario
		case roundRobin:
			key = p.Protocol + " " + p.Addr
		default:
			batches = append(batches, []int{i})
			continue
		}
		b, ok := together[key]
		if !ok {
			b = len(batches)
			together[key] = b
			batches = append(batches, nil)
		}
		batches[b] = append(batches[b], i)
	}
	return batches
}

// Divergence is a probe whose outcome differs between the proxies.
type Divergence struct {
	Probe    Probe              `json:"probe"`
	Outcomes map[string]Outcome `json:"outcomes"` // by proxy
	// Programmed is, per proxy, the rules that name the scenario's Service or addresses.
	Programmed map[string][]string `json:"programmed"`
	// Deliberate, when set, is the deliberate difference (Deliberates) that explains it.
	Deliberate string `json:"deliberate,omitempty"`
}

// Compare lists the probes whose outcomes differ between the runs.
func Compare(probes []Probe, runs []ProxyRun, services map[string][]string) []Divergence {
	var out []Divergence
	for _, p := range probes {
		d := Divergence{Probe: p, Outcomes: map[string]Outcome{}, Programmed: map[string][]string{}}
		for _, r := range runs {
			d.Outcomes[r.Proxy] = r.Outcomes[p.ID()]
		}
		if allEqual(d.Outcomes) {
			continue
		}
		for _, r := range runs {
			d.Programmed[r.Proxy] = rulesAbout(r.Programmed, services[p.Scenario])
		}
		out = append(out, d)
	}
	return out
}

func allEqual(outcomes map[string]Outcome) bool {
	var first *Outcome
	for _, o := range outcomes {
		if first == nil {
			first = &o
			continue
		}
		if !slices.Equal(o.Endpoints, first.Endpoints) || !slices.Equal(o.Clients, first.Clients) || !slices.Equal(o.Failures, first.Failures) {
			return false
		}
	}
	return true
}

// rulesAbout picks the rules that mention any of needles (a Service's name as
// "namespace/name", its addresses).
func rulesAbout(dump string, needles []string) []string {
	var out []string
	for _, line := range strings.Split(dump, "\n") {
		if slices.ContainsFunc(needles, func(n string) bool { return strings.Contains(line, n) }) {
			out = append(out, line)
		}
	}
	return out
}

// needles are the strings that identify a Service's rules: its name as kube-proxy and
// switchyard comment it, and every address it is reached on (but the node's).
func needles(svc *v1.Service) []string {
	out := []string{svc.Namespace + "/" + svc.Name + ":", svc.Namespace + "/" + svc.Name + " "}
	for _, p := range probes(svc) {
		if ap, err := netip.ParseAddrPort(p.Addr); err == nil && p.Entry != EntryNodePort && p.Entry != EntryLocalNodePort {
			// As iptables-save, ipvsadm-save and ipset save write it.
			a := ap.Addr().String()
			out = append(out, a+"/32", a+":", a+",")
		}
	}
	return out
}
