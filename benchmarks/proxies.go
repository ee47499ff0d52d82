package benchmarks

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/switchyard/switchyard/internal/lab"
)

// The probe Service: one endpoint that moves between two pods, so that a new connection
// tells which version of the rules the kernel holds.
const (
	probeName      = "bench-probe"
	probeClusterIP = "10.96.0.100"
	// triggerTimeAnnotation is where the EndpointSlice controller records when the change
	// behind a slice happened; proxies measure network programming latency from it.
	triggerTimeAnnotation = "endpoints.kubernetes.io/last-change-trigger-time"
)

// Proxies the harness can run.
const (
	ProxySwitchyard = "switchyard"
	ProxyKubeProxy  = "kube-proxy"
)

// Populate makes the apiserver hold Services [from, to) of w, each with its
// EndpointSlice, and the probe Service. Objects that exist already are left as they are.
func Populate(ctx context.Context, client kubernetes.Interface, w *Workload, from, to int) error {
	if err := ensureFixedService(ctx, client, Namespace, probeName, probeClusterIP); err != nil {
		return err
	}
	if err := CreateNode(ctx, client); err != nil {
		return err
	}
	// Eight writers keep a private apiserver busy without starving it of CPU.
	const writers = 8
	next := make(chan int)
	errs := make([]error, writers)
	var wg sync.WaitGroup
	for k := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if errs[k] == nil {
					s := w.Spec(i)
					errs[k] = create(ctx, client, s.Service(), s.EndpointSlice())
				}
			}
		}()
	}
	for i := from; i < to; i++ {
		next <- i
	}
	close(next)
	wg.Wait()
	return errors.Join(errs...)
}

// ensureFixedService makes the apiserver hold a ClusterIP Service with a fixed cluster IP
// and one HTTP port that targets the lab's pods, and its namespace. A Service that exists
// is left as it is.
func ensureFixedService(ctx context.Context, client kubernetes.Interface, namespace, name, clusterIP string) error {
	if _, err := client.CoreV1().Namespaces().Create(ctx, &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating namespace %s: %w", namespace, err)
	}
	svc := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
		Spec: v1.ServiceSpec{ClusterIP: clusterIP, ClusterIPs: []string{clusterIP},
			Ports: []v1.ServicePort{{Name: "http", Port: ServicePort, Protocol: v1.ProtocolTCP, TargetPort: intstr.FromInt32(lab.PodPort)}}},
	}
	// Looked up first: creating it again fails on its fixed cluster IP ("already
	// allocated") before the apiserver gets to "already exists".
	_, err := client.CoreV1().Services(namespace).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		if _, err := client.CoreV1().Services(namespace).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("creating Service %s/%s: %w", namespace, name, err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("looking up Service %s/%s: %w", namespace, name, err)
	}
	return nil
}

// CreateNode registers the lab's node, as kubelet would: kube-proxy reads its addresses
// at startup and waits for them, which without a Node object costs it 30 s.
func CreateNode(ctx context.Context, client kubernetes.Interface) error {
	node, err := client.CoreV1().Nodes().Create(ctx, &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: lab.NodeName}}, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("creating Node %s: %w", lab.NodeName, err)
	}
	node.Status.Addresses = []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: lab.NodeIP}}
	if _, err := client.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("setting the addresses of Node %s: %w", lab.NodeName, err)
	}
	return nil
}

func create(ctx context.Context, client kubernetes.Interface, svc *v1.Service, slice *discovery.EndpointSlice) error {
	if _, err := client.CoreV1().Services(Namespace).Create(ctx, svc, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating Service %s: %w", svc.Name, err)
	}
	if _, err := client.DiscoveryV1().EndpointSlices(Namespace).Create(ctx, slice, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating EndpointSlice %s: %w", slice.Name, err)
	}
	return nil
}

// ProxyOptions configures the runs of proxy processes on a lab node.
type ProxyOptions struct {
	Kernel    string
	Mode      string
	Services  int
	Endpoints int
	Changes   int
	// Proxies are the proxies to run, in order (ProxySwitchyard, ProxyKubeProxy); none
	// means both.
	Proxies []string
	// Binaries of the proxies, by name.
	Binaries map[string]string
	Lab      *lab.Lab
	// Scratch is a directory for PATH shims that pin kube-proxy's iptables flavor.
	Scratch string
	// StartupTimeout bounds the wait for a proxy's first complete sync, and ChangeBudget
	// its series of changes; a run that hits either is recorded as incomplete.
	StartupTimeout time.Duration
	ChangeBudget   time.Duration
	Logf           func(format string, args ...any)
}

// RunProxies runs each proxy in turn on the lab's node, in opts.Mode, against the
// apiserver (which must already hold the workload): it measures the time to the first
// complete sync, then the end-to-end latency of opts.Changes EndpointSlice writes, and
// reads the proxy's own sync and network programming histograms over those changes.
func RunProxies(ctx context.Context, o ProxyOptions) ([]ProxyRun, error) {
	var runs []ProxyRun
	proxies := o.Proxies
	if len(proxies) == 0 {
		proxies = []string{ProxySwitchyard, ProxyKubeProxy}
	}
	for _, proxy := range proxies {
		if err := cleanNode(ctx, o); err != nil {
			return nil, err
		}
		if err := checkClean(ctx, o); err != nil {
			return nil, err
		}
		run, err := runProxy(ctx, o, proxy)
		o.Lab.StopProxy()
		if err != nil {
			return nil, fmt.Errorf("%s in %s mode at %d Services: %w", proxy, o.Mode, o.Services, err)
		}
		o.Logf("%s %s N=%d: startup %s, end-to-end p50 %s p99 %s (%d failed), sync p50 %s", proxy, o.Mode, o.Services,
			FormatSeconds(run.StartupSeconds), FormatSeconds(run.EndToEnd.Median), FormatSeconds(run.EndToEnd.P99), run.Failed,
			FormatSeconds(run.SyncDuration.P50))
		runs = append(runs, *run)
	}
	return runs, cleanNode(ctx, o)
}

// flavor is the iptables flavor of a mode: IPVS mode's helper rules use the legacy one,
// the only one the kernel lab has.
func flavor(mode string) string {
	if mode == ModeIPTablesNft {
		return "nft"
	}
	return "legacy"
}

// ProxyCommand returns how to start a proxy (ProxySwitchyard or ProxyKubeProxy) so that
// it uses o.Mode's iptables flavor (only o.Mode, o.Binaries and o.Scratch are read).
// switchyard follows kubelet's hint chain, as kube-proxy's image does; the kube-proxy
// binary runs whatever "iptables" is on its PATH, so it gets a PATH whose iptables
// commands are the flavor's.
func ProxyCommand(o ProxyOptions, proxy string, args ...string) (string, []string, error) {
	if proxy == ProxySwitchyard {
		return o.Binaries[proxy], args, nil
	}
	dir := filepath.Join(o.Scratch, "iptables-"+flavor(o.Mode))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", nil, err
	}
	for _, tool := range []string{"iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore"} {
		target, err := execPath(strings.Replace(tool, "tables", "tables-"+flavor(o.Mode), 1))
		if err != nil {
			return "", nil, err
		}
		link := filepath.Join(dir, tool)
		_ = os.Remove(link)
		if err := os.Symlink(target, link); err != nil {
			return "", nil, err
		}
	}
	return "/usr/bin/env", append([]string{"PATH=" + dir + ":" + os.Getenv("PATH"), o.Binaries[proxy]}, args...), nil
}

func execPath(name string) (string, error) {
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/bin"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
			return filepath.Join(dir, name), nil
		}
	}
	return "", fmt.Errorf("%s not found: install the Debian package iptables", name)
}

// cleanNode removes what either proxy left, so that each run starts from an empty
// kernel, and sets kubelet's flavor hint for the mode. kube-proxy's --cleanup is best
// effort and exits non-zero when any part of it fails (in the kernel lab, its iptables
// teardown of an IPVS node does), so what matters is checked before each run instead:
// see checkClean.
func cleanNode(ctx context.Context, o ProxyOptions) error {
	for _, proxy := range []string{ProxySwitchyard, ProxyKubeProxy} {
		bin, args, err := ProxyCommand(o, proxy, "--cleanup")
		if err != nil {
			return err
		}
		if out, err := o.Lab.NodeOutput(ctx, bin, args...); err != nil {
			if proxy == ProxySwitchyard {
				return fmt.Errorf("%s --cleanup: %w: %s", proxy, err, out)
			}
			o.Logf("%s --cleanup: %v (checking the node instead): %s", proxy, err, lastLines(out, 3))
		}
	}
	hint := []string{"iptables-legacy", "-t", "mangle", "-N", "KUBE-IPTABLES-HINT"}
	if flavor(o.Mode) == "nft" {
		hint[3] = "-X"
	}
	// Fails harmlessly when the hint is already as wanted.
	_, _ = o.Lab.NodeOutput(ctx, hint[0], hint[1:]...)
	return nil
}

// checkClean fails when the node still holds either proxy's Service dispatch chain or
// IPVS virtual servers.
func checkClean(ctx context.Context, o ProxyOptions) error {
	for _, fl := range []string{"legacy", "nft"} {
		if o.Kernel == "lab" && fl == "nft" {
			continue // the lab's kernel has no nf_tables
		}
		out, err := o.Lab.NodeOutput(ctx, "iptables-"+fl+"-save", "-t", "nat")
		if err != nil {
			return fmt.Errorf("iptables-%s-save: %w: %s", fl, err, out)
		}
		for _, chain := range []string{":KUBE-SERVICES", ":SWYD-SERVICES"} {
			if strings.Contains(out, chain+" ") {
				return fmt.Errorf("the node still holds %s in its iptables-%s nat table after both proxies' --cleanup", chain[1:], fl)
			}
		}
	}
	if o.Mode == ModeIPVS {
		out, err := o.Lab.NodeOutput(ctx, "ipvsadm", "-Sn")
		if err != nil {
			return fmt.Errorf("ipvsadm -Sn: %w: %s", err, out)
		}
		if strings.TrimSpace(out) != "" {
			return fmt.Errorf("the node still holds IPVS virtual servers after both proxies' --cleanup: %s", lastLines(out, 3))
		}
	}
	return nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// metricsAddress is where the proxy serves metrics: the node's end of the host link,
// which the harness reaches from the host, or loopback when the harness is on the node.
func metricsAddress(l *lab.Lab) string {
	if l.Node != nil {
		return lab.NodeLinkIP
	}
	return "127.0.0.1"
}

// startedProxy is a proxy process on the lab's node whose first sync is complete.
type startedProxy struct {
	probe      *prober
	metricsURL string
	// metrics is the proxy's scrape at its first complete sync.
	metrics map[string]*dto.MetricFamily
	startup time.Duration
}

// startProxy starts proxy on the lab's node in o.Mode and waits, up to o.StartupTimeout,
// for its first complete sync: a sync in its metrics and the probe Service answering.
// It returns a reason instead when the proxy is still running but not ready in time.
// The caller stops the proxy (o.Lab.StopProxy) in every case.
func startProxy(ctx context.Context, o ProxyOptions, proxy string) (_ *startedProxy, incomplete string, _ error) {
	modeFlag, minSync := "iptables", "--iptables-min-sync-period=0s"
	if o.Mode == ModeIPVS {
		modeFlag, minSync = "ipvs", "--ipvs-min-sync-period=0s"
	}
	addr := metricsAddress(o.Lab)
	bin, args, err := ProxyCommand(o, proxy,
		"--proxy-mode="+modeFlag,
		"--kubeconfig="+o.Lab.Kubeconfig,
		"--hostname-override="+lab.NodeName,
		"--cluster-cidr="+lab.ClusterCIDR,
		"--metrics-bind-address="+addr+":10249",
		"--healthz-bind-address="+addr+":10256",
		"--conntrack-max-per-core=0",
		// Both proxies sync on every change, so that the latency measured is the proxy's
		// own and not its rate limiter's (kube-proxy's iptables default is 1 s).
		minSync,
	)
	if err != nil {
		return nil, "", err
	}
	p := &startedProxy{metricsURL: "http://" + addr + ":10249/metrics"}
	if p.probe, err = newProber(ctx, o.Lab); err != nil {
		return nil, "", err
	}
	start := time.Now()
	logPath, err := o.Lab.StartProxy(bin, args...)
	if err != nil {
		return nil, "", err
	}
	err = lab.Eventually(ctx, o.StartupTimeout, 20*time.Millisecond, func() error {
		if p.metrics, err = scrape(ctx, p.metricsURL); err != nil {
			return err
		}
		if h := histogram(p.metrics[syncMetric]); h.count == 0 {
			return errors.New("no sync yet")
		}
		return p.probe.expect(p.probe.current)
	})
	p.startup = time.Since(start)
	if err != nil {
		if ctx.Err() != nil || !o.Lab.ProxyRunning() {
			return nil, "", fmt.Errorf("waiting for the first sync: %w (log: %s)", err, logTail(logPath))
		}
		incomplete = fmt.Sprintf("first sync not complete after %s (%v)", o.StartupTimeout, err)
		o.Logf("%s: %s", proxy, incomplete)
		return p, incomplete, nil
	}
	return p, "", nil
}

func runProxy(ctx context.Context, o ProxyOptions, proxy string) (*ProxyRun, error) {
	p, incomplete, err := startProxy(ctx, o, proxy)
	if err != nil {
		return nil, err
	}
	run := &ProxyRun{Proxy: proxy, Mode: o.Mode, Kernel: o.Kernel, Services: o.Services, Endpoints: o.Endpoints,
		StartupSeconds: p.startup.Seconds(), Incomplete: incomplete}
	if incomplete != "" {
		return run, nil
	}
	var latencies []time.Duration
	deadline := time.Now().Add(o.ChangeBudget)
	for run.Changes < o.Changes {
		run.Changes++
		took, err := p.probe.move(ctx, deadline)
		if errors.Is(err, errBudgetSpent) {
			run.Failed++
			run.Incomplete = fmt.Sprintf("change budget of %s spent after %d changes", o.ChangeBudget, run.Changes)
			o.Logf("%s: %s", proxy, run.Incomplete)
			break
		}
		if err != nil {
			return nil, err
		}
		latencies = append(latencies, took)
	}
	after, err := scrape(ctx, p.metricsURL)
	if err != nil {
		return nil, err
	}
	run.EndToEnd = Summarize(Seconds(latencies))
	run.SyncDuration = histogram(after[syncMetric]).minus(histogram(p.metrics[syncMetric])).summary()
	run.NetworkProgramming = histogram(after[programmingMetric]).minus(histogram(p.metrics[programmingMetric])).summary()
	run.RSSBytes = procStatusOf(strconv.Itoa(o.Lab.ProxyPID()), "VmRSS")
	return run, nil
}

func logTail(path string) string {
	data, _ := os.ReadFile(path)
	return lastLines(string(data), 15)
}

// prober moves the probe Service's endpoint between two pods and sees, with new
// connections from the node, when packets follow.
type prober struct {
	client  kubernetes.Interface
	nsPath  string
	pods    []*lab.Pod
	current int
}

func newProber(ctx context.Context, l *lab.Lab) (*prober, error) {
	if len(l.Pods) < 2 {
		return nil, errors.New("the probe needs a lab with two pods")
	}
	p := &prober{client: l.Client, pods: l.Pods[:2]}
	if l.Node != nil {
		p.nsPath = l.Node.Path()
	}
	return p, p.write(ctx)
}

// write points the probe's EndpointSlice at the current pod, stamped with the time of
// the change as the EndpointSlice controller would.
func (p *prober) write(ctx context.Context) error {
	pod := p.pods[p.current]
	slice := &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: Namespace, Name: probeName + "-1",
			Labels:      map[string]string{discovery.LabelServiceName: probeName},
			Annotations: map[string]string{triggerTimeAnnotation: time.Now().UTC().Format(time.RFC3339Nano)}},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](lab.PodPort), Protocol: ptr.To(v1.ProtocolTCP)}},
		Endpoints: []discovery.Endpoint{{Addresses: []string{pod.IP}, NodeName: ptr.To(lab.NodeName),
			Conditions: discovery.EndpointConditions{Ready: ptr.To(true)}}},
	}
	api := p.client.DiscoveryV1().EndpointSlices(Namespace)
	existing, err := api.Get(ctx, slice.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		_, err = api.Create(ctx, slice, metav1.CreateOptions{})
	case err == nil:
		slice.ResourceVersion = existing.ResourceVersion
		_, err = api.Update(ctx, slice, metav1.UpdateOptions{})
	}
	if err != nil {
		return fmt.Errorf("writing the probe's EndpointSlice: %w", err)
	}
	return nil
}

// errBudgetSpent is move's error when the deadline passed before the change was visible.
var errBudgetSpent = errors.New("change budget spent")

// move points the probe at the other pod and returns the time from the write to the
// first new connection that reaches it. It waits for that until the deadline: a move
// given up earlier would leave the kernel pointing at the pod the next move returns to,
// and the next move would then look instantaneous.
func (p *prober) move(ctx context.Context, deadline time.Time) (time.Duration, error) {
	p.current = 1 - p.current
	start := time.Now()
	if err := p.write(ctx); err != nil {
		return 0, err
	}
	for time.Now().Before(deadline) {
		if p.expect(p.current) == nil {
			return time.Since(start), nil
		}
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		// A short pause keeps the probe from competing for the CPU with the proxy it
		// measures, which matters most in the single-CPU kernel lab.
		time.Sleep(2 * time.Millisecond)
	}
	return 0, fmt.Errorf("moving to %s: %w", p.pods[p.current].Name, errBudgetSpent)
}

// expect makes one request to the probe Service on a new connection and checks that pod
// i answered.
func (p *prober) expect(i int) error {
	var answer string
	err := inNetns(p.nsPath, func() error {
		conn, err := net.DialTimeout("tcp", net.JoinHostPort(probeClusterIP, strconv.Itoa(ServicePort)), time.Second)
		if err != nil {
			return err
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(time.Second))
		if _, err := io.WriteString(conn, "GET / HTTP/1.0\r\n\r\n"); err != nil {
			return err
		}
		resp, err := io.ReadAll(conn)
		if err != nil {
			return err
		}
		_, answer, _ = strings.Cut(string(resp), "\r\n\r\n")
		return nil
	})
	if err != nil {
		return err
	}
	if answer != p.pods[i].Name {
		return fmt.Errorf("answered by %q, want %q", answer, p.pods[i].Name)
	}
	return nil
}

// The histograms both proxies export under kube-proxy's names.
const (
	syncMetric        = "kubeproxy_sync_proxy_rules_duration_seconds"
	programmingMetric = "kubeproxy_network_programming_duration_seconds"
)

func scrape(ctx context.Context, url string) (map[string]*dto.MetricFamily, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("parsing metrics from %s: %w", url, err)
	}
	return families, nil
}

// cumulative is a histogram: cumulative counts per upper bound, summed over every
// series of the family (switchyard labels its series by backend, kube-proxy does not).
type cumulative struct {
	bounds []float64
	counts []float64
	count  float64
	sum    float64
}

func histogram(f *dto.MetricFamily) cumulative {
	var h cumulative
	for _, m := range f.GetMetric() {
		hist := m.GetHistogram()
		for i, b := range hist.GetBucket() {
			if len(h.bounds) <= i {
				h.bounds = append(h.bounds, b.GetUpperBound())
				h.counts = append(h.counts, 0)
			}
			h.counts[i] += float64(b.GetCumulativeCount())
		}
		h.count += float64(hist.GetSampleCount())
		h.sum += hist.GetSampleSum()
	}
	return h
}

// minus is the histogram of the observations made since earlier.
func (h cumulative) minus(earlier cumulative) cumulative {
	out := cumulative{bounds: h.bounds, counts: slices.Clone(h.counts), count: h.count - earlier.count, sum: h.sum - earlier.sum}
	for i := range out.counts {
		if i < len(earlier.counts) {
			out.counts[i] -= earlier.counts[i]
		}
	}
	return out
}

func (h cumulative) summary() Histogram {
	if h.count <= 0 {
		return Histogram{}
	}
	return Histogram{Count: uint64(h.count), Mean: h.sum / h.count, P50: h.quantile(0.5), P99: h.quantile(0.99)}
}

// quantile estimates a quantile by linear interpolation inside the bucket that holds it,
// as Prometheus's histogram_quantile does: a quantile in the +Inf bucket is reported as
// the highest finite bound, the most the histogram can say.
func (h cumulative) quantile(q float64) float64 {
	rank := q * h.count
	lower, below := 0.0, 0.0
	for i, upper := range h.bounds {
		if h.counts[i] >= rank {
			if math.IsInf(upper, 1) {
				return lower
			}
			if h.counts[i] == below {
				return upper
			}
			return lower + (upper-lower)*(rank-below)/(h.counts[i]-below)
		}
		lower, below = upper, h.counts[i]
	}
	// Beyond the last finite bucket: the best bound known.
	if len(h.bounds) == 0 {
		return math.NaN()
	}
	return h.bounds[len(h.bounds)-1]
}
