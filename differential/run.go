package differential

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/switchyard/switchyard/benchmarks"
	"github.com/switchyard/switchyard/internal/lab"
)

// RunOptions configures Run.
type RunOptions struct {
	// Mode is benchmarks.ModeIPTablesNft or benchmarks.ModeIPTablesLegacy (the node
	// runs natively, in a network namespace of this machine).
	Mode      string
	Scenarios []Scenario
	// Binaries holds the paths of switchyard, kube-proxy and labagent.
	Binaries map[string]string
	// Dir is a scratch directory for the labs' logs and PATH shims.
	Dir string
	// Tries is how many requests each probe makes: enough that every endpoint of a
	// Service answers at least once under random selection (4 endpoints, 40 tries: a miss
	// once in 25,000 probes).
	Tries int
	Logf  func(format string, args ...any)
}

// Proxies are the proxies compared, in the order they run.
var Proxies = []string{benchmarks.ProxySwitchyard, benchmarks.ProxyKubeProxy}

// The lab's pods: the first half on this node, the rest reported on another node (they
// are reachable from this node all the same, as remote pods are through a CNI).
const (
	labPods   = 6
	localPods = 3
)

// Zone is the node's topology zone, for topology hints.
const Zone = "zone-a"

// PodRefs are the endpoints the lab provides, for Generate.
func PodRefs() []PodRef {
	var refs []PodRef
	for i := range labPods {
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
	// Programmed is what the proxy wrote in the kernel (iptables-save of both tables).
	Programmed string `json:"-"`
	// SyncSeconds is how long the proxy took from its start to its first complete sync.
	SyncSeconds float64 `json:"syncSeconds"`
}

// Run runs every proxy in turn on a fresh lab holding the scenarios, probes every entry
// point under each, and reports the probes whose outcomes differ.
func Run(ctx context.Context, o RunOptions) (*ModeReport, error) {
	m := &ModeReport{Mode: o.Mode}
	var probes []Probe
	var services []*v1.Service
	for _, proxy := range Proxies {
		p, svcs, run, err := runProxy(ctx, o, proxy)
		if err != nil {
			return nil, fmt.Errorf("%s in %s mode: %w", proxy, o.Mode, err)
		}
		probes, services = p, svcs
		m.Runs = append(m.Runs, *run)
	}
	about := map[string][]string{}
	for _, svc := range services {
		about[svc.Name] = needles(svc)
	}
	m.Probes = len(probes)
	m.Divergences = Compare(probes, m.Runs, about)
	return m, nil
}

func runProxy(ctx context.Context, o RunOptions, proxy string) (_ []Probe, _ []*v1.Service, _ *ProxyRun, err error) {
	dir := filepath.Join(o.Dir, o.Mode, proxy)
	l, err := lab.Start(ctx, lab.Options{Dir: dir, Pods: labPods, Agent: o.Binaries["labagent"]})
	if err != nil {
		return nil, nil, nil, err
	}
	defer func() { err = errors.Join(err, l.Close()) }()
	for i, p := range l.Pods {
		if i >= localPods {
			p.NodeName = lab.OtherNodeName
		}
	}
	if err := createNode(ctx, l); err != nil {
		return nil, nil, nil, err
	}
	var services []*v1.Service
	for i, sc := range o.Scenarios {
		svc, err := apply(ctx, l, i, sc)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("scenario %s: %w", sc.Name, err)
		}
		services = append(services, svc)
	}
	popts := benchmarks.ProxyOptions{Mode: o.Mode, Binaries: o.Binaries, Scratch: filepath.Join(dir, "shims")}
	bin, args, err := benchmarks.ProxyCommand(popts, proxy,
		"--proxy-mode=iptables",
		"--kubeconfig="+l.Kubeconfig,
		"--hostname-override="+lab.NodeName,
		"--cluster-cidr="+lab.ClusterCIDR,
		"--metrics-bind-address=127.0.0.1:10249",
		"--healthz-bind-address=127.0.0.1:10256",
		"--conntrack-max-per-core=0",
	)
	if err != nil {
		return nil, nil, nil, err
	}
	if err := setFlavorHint(ctx, l, o.Mode); err != nil {
		return nil, nil, nil, err
	}
	start := time.Now()
	logPath, err := l.StartProxy(bin, args...)
	if err != nil {
		return nil, nil, nil, err
	}
	defer l.StopProxy()
	if err := waitSynced(ctx, l); err != nil {
		return nil, nil, nil, fmt.Errorf("%w (log: %s)", err, logPath)
	}
	run := &ProxyRun{Proxy: proxy, Outcomes: map[string]Outcome{}, SyncSeconds: time.Since(start).Seconds()}
	o.Logf("%s %s: synced %d scenarios in %.1fs", proxy, o.Mode, len(o.Scenarios), run.SyncSeconds)
	var all []Probe
	for _, svc := range services {
		all = append(all, probes(svc)...)
	}
	results, err := probeAll(ctx, l, all, o.Tries)
	if err != nil {
		return nil, nil, nil, err
	}
	for i, p := range all {
		run.Outcomes[p.ID()] = outcome(p, results[i])
	}
	o.Logf("%s %s: %d probes in %.1fs", proxy, o.Mode, len(all), time.Since(start).Seconds()-run.SyncSeconds)
	flavor := "legacy"
	if o.Mode == benchmarks.ModeIPTablesNft {
		flavor = "nft"
	}
	if run.Programmed, err = l.NodeOutput(ctx, "iptables-"+flavor+"-save"); err != nil {
		return nil, nil, nil, err
	}
	return all, services, run, nil
}

// createNode registers the node as kubelet would, in the zone topology hints name.
func createNode(ctx context.Context, l *lab.Lab) error {
	if err := benchmarks.CreateNode(ctx, l.Client); err != nil {
		return err
	}
	patch := fmt.Sprintf(`{"metadata":{"labels":{%q:%q}}}`, v1.LabelTopologyZone, Zone)
	if _, err := l.Client.CoreV1().Nodes().Patch(ctx, lab.NodeName, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("labelling Node %s with its zone: %w", lab.NodeName, err)
	}
	return nil
}

// setFlavorHint leaves kubelet's iptables flavor hint for the mode, which switchyard
// follows (kube-proxy gets the flavor from its PATH, see benchmarks.ProxyCommand).
func setFlavorHint(ctx context.Context, l *lab.Lab, mode string) error {
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
func apply(ctx context.Context, l *lab.Lab, i int, sc Scenario) (*v1.Service, error) {
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
	created, err := l.Client.CoreV1().Services(svc.Namespace).Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("creating Service: %w", err)
	}
	if len(svc.Status.LoadBalancer.Ingress) > 0 {
		created.Status = svc.Status
		if created, err = l.Client.CoreV1().Services(svc.Namespace).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
			return nil, fmt.Errorf("writing the load-balancer status: %w", err)
		}
	}
	for _, slice := range sc.Slices {
		if _, err := l.Client.DiscoveryV1().EndpointSlices(slice.Namespace).Create(ctx, slice, metav1.CreateOptions{}); err != nil {
			return nil, fmt.Errorf("creating EndpointSlice %s: %w", slice.Name, err)
		}
	}
	return created, nil
}

// waitSynced waits until the proxy has synced everything it was told of: a sync has
// completed, and none was queued after the last one completed. Every object was written
// before the proxy started, so its first complete sync holds them all.
func waitSynced(ctx context.Context, l *lab.Lab) error {
	return lab.Eventually(ctx, 3*time.Minute, 250*time.Millisecond, func() error {
		out, err := l.NodeOutput(ctx, "curl", "-sf", "http://127.0.0.1:10249/metrics")
		if err != nil {
			return err
		}
		synced, queued := metric(out, "kubeproxy_sync_proxy_rules_last_timestamp_seconds"), metric(out, "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds")
		if synced == 0 || queued > synced {
			return fmt.Errorf("not synced yet (last sync %.3f, last queued %.3f)", synced, queued)
		}
		return nil
	})
}

// metric is the largest value of a metric's series in a Prometheus text scrape.
func metric(scrape, name string) float64 {
	var v float64
	for _, line := range strings.Split(scrape, "\n") {
		rest, ok := strings.CutPrefix(line, name)
		if !ok || (rest != "" && rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		fields := strings.Fields(rest)
		if f, err := strconv.ParseFloat(fields[len(fields)-1], 64); err == nil {
			v = max(v, f)
		}
	}
	return v
}

// probeAll runs the probes, a few at a time (each waits on the network, not the CPU,
// while its requests time out), and returns their results in order.
func probeAll(ctx context.Context, l *lab.Lab, probes []Probe, tries int) ([]lab.Result, error) {
	const parallel = 4
	results := make([]lab.Result, len(probes))
	errs := make([]error, len(probes))
	next := make(chan int)
	var wg sync.WaitGroup
	for range parallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				p := probes[i]
				n := tries
				if p.Entry == EntryHealthCheck {
					n = 1
				}
				results[i], errs[i] = l.Probe(ctx, p.From, p.Protocol, p.Addr, strconv.Itoa(n))
			}
		}()
	}
	for i := range probes {
		next <- i
	}
	close(next)
	wg.Wait()
	return results, errors.Join(errs...)
}

// Divergence is a probe whose outcome differs between the proxies.
type Divergence struct {
	Probe    Probe              `json:"probe"`
	Outcomes map[string]Outcome `json:"outcomes"` // by proxy
	// Programmed is, per proxy, the rules that name the scenario's Service or addresses.
	Programmed map[string][]string `json:"programmed"`
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
// switchyard comment it, and every address it is reached on.
func needles(svc *v1.Service) []string {
	out := []string{svc.Namespace + "/" + svc.Name + ":", svc.Namespace + "/" + svc.Name + " "}
	for _, p := range probes(svc) {
		if ap, err := netip.ParseAddrPort(p.Addr); err == nil && p.Entry != EntryNodePort && p.Entry != EntryLocalNodePort {
			out = append(out, ap.Addr().String()+"/32")
		}
	}
	return out
}
