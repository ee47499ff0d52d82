// Package lab builds a small, self-contained node for end-to-end tests and the demo: a
// real kube-apiserver, a "node" where switchyard runs, and "pods" in network namespaces
// behind veth pairs, each answering HTTP with its own name.
//
// On the host (iptables mode), the node is a network namespace and the apiserver runs on
// the host, reached over a veth pair. Inside the kernel lab's guest (IPVS mode, see
// hack/kernel-lab), the node is the guest itself and the apiserver runs on the host,
// reached over the guest's tap link; the caller passes its kubeconfig.
//
// Addressing (all in 10.0.0.0/8 ranges nothing else on the host uses):
//
//	host  swyd-h0 10.250.0.1/30  <->  swyd-n0 10.250.0.2/30  node   (apiserver link, host mode)
//	node  swyd-s0 10.251.0.1/30  <->  swyd-s1 10.251.0.2/30  sink   (service CIDR route)
//	node  swyd-pN 10.244.0.1/32  <->  swyd-eth0 10.244.0.1N/32 pod N
//	node  swyd-c0 10.252.0.1/30  <->  swyd-c1 10.252.0.2/30  client (off-node, external)
//
// The client stands for a machine outside the cluster: it reaches the node's address
// 10.252.0.1 (NodePorts) and, through the node, the external and load-balancer IPs of
// ExternalRange. The node has no default route. Service cluster IPs are routed to the sink namespace,
// which does not forward, so a packet the rules under test fail to DNAT dies there
// instead of leaving the machine; pods only have routes back to the node.
package lab

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"

	"github.com/switchyard/switchyard/internal/testenv"
)

// Addresses of the lab.
const (
	HostLinkIP   = "10.250.0.1"
	NodeLinkIP   = "10.250.0.2"
	ServiceCIDR  = "10.96.0.0/16"
	ClusterCIDR  = "10.244.0.0/16"
	PodGatewayIP = "10.244.0.1"
	// The IPv6 side of the lab (dual-stack): Services, pods and their gateway, and the
	// sink link. Addresses are unique local (fd00::/8) and added without duplicate
	// address detection, so they are usable at once.
	ServiceCIDR6  = "fd00:10:96::/112"
	ClusterCIDR6  = "fd00:10:244::/64"
	PodGatewayIP6 = "fd00:10:244::1"
	PodPort       = 8080
	// NodeIP is the node's address on the client's link, where NodePorts are reached.
	NodeIP   = "10.252.0.1"
	ClientIP = "10.252.0.2"
	// ExternalRange holds the addresses tests use as externalIPs and load-balancer IPs;
	// the client routes it to the node. A /16, so that a differential run of 500 and more
	// scenarios, each on addresses of its own, draws from one pool.
	ExternalRange = "10.253.0.0/16"
)

// Names of the lab's namespaces and host interface, all with the project's test prefix.
const (
	NodeNetns   = "swyd-node"
	SinkNetns   = "swyd-sink"
	ClientNetns = "swyd-client"
	hostLink    = "swyd-h0"
	NodeName    = "swyd-node-a"
)

// Lab is a running lab. Close it to remove everything it created.
type Lab struct {
	Dir string
	// Kubeconfig and Client reach the lab's apiserver.
	Kubeconfig string
	Client     kubernetes.Interface
	// Node is the node's network namespace; nil when the node is the namespace the lab
	// runs in (inside the kernel lab's guest).
	Node *testenv.Netns
	Pods []*Pod

	controlPlane *testenv.ControlPlane
	agent        string
	sink         *testenv.Netns
	client       *testenv.Netns
	procs        []*exec.Cmd
	proxies      []*exec.Cmd
}

// Pod is one "pod": a namespace with an HTTP server answering with Name.
type Pod struct {
	Name  string
	IP    string
	IPv6  string
	Netns *testenv.Netns
	// NodeName is the node EndpointSlices report the pod on: NodeName by default; set it
	// to another name to make the pod a remote endpoint for traffic policies.
	NodeName string
}

// OtherNodeName is a node that does not exist in the lab, for "remote" endpoints.
const OtherNodeName = "swyd-node-b"

// Options configures Start.
type Options struct {
	// Dir is a scratch directory for logs and the control plane's data.
	Dir string
	// Pods is the number of pods to create.
	Pods int
	// Agent is the path of the labagent binary (hack/labagent).
	Agent string
	// Kubeconfig, when set, names the kubeconfig of an apiserver that is already running
	// (the host's, seen from the kernel lab's guest), and makes the node the namespace
	// the lab runs in. Only use it inside the guest: the lab then enables forwarding in
	// that namespace, which must never be the host's.
	Kubeconfig string
	// Authorization is the apiserver's --authorization-mode (see
	// testenv.ControlPlaneOptions); ignored with Kubeconfig.
	Authorization string
}

// Start builds the lab. On error, whatever was already built is removed.
func Start(ctx context.Context, opts Options) (_ *Lab, err error) {
	l := &Lab{Dir: opts.Dir, agent: opts.Agent}
	defer func() {
		if err != nil {
			_ = l.Close()
		}
	}()
	if err = os.MkdirAll(opts.Dir, 0o755); err != nil {
		return nil, err
	}
	nodeNetns := "" // the namespace we run in
	if opts.Kubeconfig == "" {
		nodeNetns = NodeNetns
		if l.Node, err = testenv.NewNetns(NodeNetns); err != nil {
			return nil, err
		}
		if err = testenv.VethPair(hostLink, "", "swyd-n0", NodeNetns); err != nil {
			return nil, err
		}
		if err = testenv.RunIP("", "addr", "add", HostLinkIP+"/30", "dev", hostLink); err != nil {
			return nil, err
		}
		if err = testenv.RunIP(NodeNetns, "addr", "add", NodeLinkIP+"/30", "dev", "swyd-n0"); err != nil {
			return nil, err
		}
	}
	if l.sink, err = testenv.NewNetns(SinkNetns); err != nil {
		return nil, err
	}
	if err = testenv.VethPair("swyd-s0", nodeNetns, "swyd-s1", SinkNetns); err != nil {
		return nil, err
	}
	if l.client, err = testenv.NewNetns(ClientNetns); err != nil {
		return nil, err
	}
	if err = testenv.VethPair("swyd-c0", nodeNetns, "swyd-c1", ClientNetns); err != nil {
		return nil, err
	}
	steps := [][]string{
		{nodeNetns, "addr", "add", "10.251.0.1/30", "dev", "swyd-s0"},
		{SinkNetns, "addr", "add", "10.251.0.2/30", "dev", "swyd-s1"},
		{nodeNetns, "route", "add", ServiceCIDR, "via", "10.251.0.2", "dev", "swyd-s0"},
		{nodeNetns, "addr", "add", "fd00:10:251::1/126", "dev", "swyd-s0", "nodad"},
		{SinkNetns, "addr", "add", "fd00:10:251::2/126", "dev", "swyd-s1", "nodad"},
		{nodeNetns, "-6", "route", "add", ServiceCIDR6, "via", "fd00:10:251::2", "dev", "swyd-s0"},
		{nodeNetns, "addr", "add", NodeIP + "/30", "dev", "swyd-c0"},
		{ClientNetns, "addr", "add", ClientIP + "/30", "dev", "swyd-c1"},
		{ClientNetns, "route", "add", ExternalRange, "via", NodeIP, "dev", "swyd-c1"},
	}
	for i := 1; i <= opts.Pods; i++ {
		pod := &Pod{Name: fmt.Sprintf("pod-%d", i), IP: fmt.Sprintf("10.244.0.%d", 10+i), IPv6: fmt.Sprintf("fd00:10:244::%d", 10+i), NodeName: NodeName}
		if pod.Netns, err = testenv.NewNetns(fmt.Sprintf("swyd-pod-%d", i)); err != nil {
			return nil, err
		}
		l.Pods = append(l.Pods, pod)
		link := fmt.Sprintf("swyd-p%d", i)
		// Test helpers only touch interfaces with the project prefix, even inside a pod.
		const podLink = "swyd-eth0"
		if err = testenv.VethPair(link, nodeNetns, podLink, pod.Netns.Name); err != nil {
			return nil, err
		}
		steps = append(steps,
			[]string{nodeNetns, "addr", "add", PodGatewayIP + "/32", "dev", link},
			[]string{nodeNetns, "route", "add", pod.IP + "/32", "dev", link},
			[]string{pod.Netns.Name, "addr", "add", pod.IP + "/32", "dev", podLink},
			[]string{pod.Netns.Name, "route", "add", PodGatewayIP, "dev", podLink},
			// Only the node's own subnets: replies to masqueraded traffic go to the
			// gateway, replies to node-sourced traffic to the sink link's address, and
			// replies to the client (not masqueraded under externalTrafficPolicy Local)
			// to the client's link.
			[]string{pod.Netns.Name, "route", "add", "10.251.0.0/30", "via", PodGatewayIP, "dev", podLink},
			[]string{pod.Netns.Name, "route", "add", "10.252.0.0/30", "via", PodGatewayIP, "dev", podLink},
			// Pods reach each other, Services, and external and load-balancer IPs
			// through the node, as in a cluster.
			[]string{pod.Netns.Name, "route", "add", ClusterCIDR, "via", PodGatewayIP, "dev", podLink},
			[]string{pod.Netns.Name, "route", "add", ServiceCIDR, "via", PodGatewayIP, "dev", podLink},
			[]string{pod.Netns.Name, "route", "add", ExternalRange, "via", PodGatewayIP, "dev", podLink},
			// The same on the IPv6 side.
			[]string{nodeNetns, "addr", "add", PodGatewayIP6 + "/128", "dev", link, "nodad"},
			[]string{nodeNetns, "-6", "route", "add", pod.IPv6 + "/128", "dev", link},
			[]string{pod.Netns.Name, "addr", "add", pod.IPv6 + "/128", "dev", podLink, "nodad"},
			[]string{pod.Netns.Name, "-6", "route", "add", PodGatewayIP6, "dev", podLink},
			[]string{pod.Netns.Name, "-6", "route", "add", "fd00:10:251::/126", "via", PodGatewayIP6, "dev", podLink},
			[]string{pod.Netns.Name, "-6", "route", "add", ClusterCIDR6, "via", PodGatewayIP6, "dev", podLink},
			[]string{pod.Netns.Name, "-6", "route", "add", ServiceCIDR6, "via", PodGatewayIP6, "dev", podLink},
		)
	}
	for _, s := range steps {
		if err = testenv.RunIP(s[0], s[1:]...); err != nil {
			return nil, err
		}
	}
	// The node forwards between its pods. This is the node namespace's own setting, or
	// the guest kernel's: never the host's.
	if err = l.NodeCommand(ctx, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1").Run(); err != nil {
		return nil, fmt.Errorf("enabling forwarding on the node: %w", err)
	}
	for _, pod := range l.Pods {
		if _, err = l.startProcess(pod.Netns, filepath.Join(l.Dir, pod.Name+".log"), l.agent, "serve", pod.Name, fmt.Sprintf(":%d", PodPort)); err != nil {
			return nil, err
		}
	}
	if opts.Kubeconfig != "" {
		l.Kubeconfig = opts.Kubeconfig
		restConfig, err := clientcmd.BuildConfigFromFlags("", opts.Kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("loading %s: %w", opts.Kubeconfig, err)
		}
		// As on the host (testenv): client-side throttling only slows a test that writes
		// thousands of objects to its private apiserver (the soak's 2,000 took 199 s).
		restConfig.QPS = -1
		if l.Client, err = kubernetes.NewForConfig(restConfig); err != nil {
			return nil, err
		}
		return l, nil
	}
	l.controlPlane, err = testenv.StartControlPlane(ctx, testenv.ControlPlaneOptions{
		BindAddress:   HostLinkIP,
		Dir:           filepath.Join(l.Dir, "controlplane"),
		ServiceCIDR:   ServiceCIDR + "," + ServiceCIDR6,
		Authorization: opts.Authorization,
	})
	if err != nil {
		return nil, err
	}
	l.Kubeconfig, l.Client = l.controlPlane.Kubeconfig, l.controlPlane.Client
	return l, nil
}

// ControlPlane is the lab's own etcd and apiserver; nil when the lab uses an apiserver
// that was already running (Options.Kubeconfig).
func (l *Lab) ControlPlane() *testenv.ControlPlane { return l.controlPlane }

// NodeCommand returns a command that runs on the node.
func (l *Lab) NodeCommand(ctx context.Context, name string, args ...string) *exec.Cmd {
	if l.Node == nil {
		return exec.CommandContext(ctx, name, args...)
	}
	return l.Node.Exec(ctx, name, args...)
}

// StartProxy starts the switchyard binary on the node with the given flags and returns its
// log path. The lab stops it on Close; StopProxy stops it earlier.
func (l *Lab) StartProxy(bin string, flags ...string) (string, error) {
	logPath := filepath.Join(l.Dir, fmt.Sprintf("switchyard-%d.log", len(l.proxies)))
	cmd, err := l.startProcess(l.Node, logPath, bin, flags...)
	if err != nil {
		return "", err
	}
	l.proxies = append(l.proxies, cmd)
	return logPath, nil
}

// ProxyPID is the process ID of the proxy StartProxy started last, for reading its
// resource use.
func (l *Lab) ProxyPID() int {
	if len(l.proxies) == 0 {
		return 0
	}
	return l.proxies[len(l.proxies)-1].Process.Pid
}

// ProxyRunning reports whether the last proxy started is still alive (not exited and
// not a zombie waiting to be reaped).
func (l *Lab) ProxyRunning() bool {
	pid := l.ProxyPID()
	if pid == 0 {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the command name, which is in parentheses and may hold spaces.
	_, rest, _ := bytes.Cut(stat, []byte(") "))
	return len(rest) > 0 && rest[0] != 'Z'
}

// StartNodeServer runs a "host process" on the node: a server on addr (all of the node's
// addresses) answering with name, to check that Service addresses never reach it.
func (l *Lab) StartNodeServer(name, addr string) error {
	_, err := l.startProcess(l.Node, filepath.Join(l.Dir, name+".log"), l.agent, "serve", name, addr)
	return err
}

// StopProxy sends SIGTERM to every switchyard the lab started and waits for it to exit.
func (l *Lab) StopProxy() {
	for _, p := range l.proxies {
		if p.ProcessState == nil {
			_ = p.Process.Signal(syscall.SIGTERM)
			_ = p.Wait()
		}
	}
}

// startProcess starts a long-running process in netns (nil: the node's own namespace
// when that is ours).
func (l *Lab) startProcess(netns *testenv.Netns, logPath, bin string, args ...string) (*exec.Cmd, error) {
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	cmd := exec.Command(bin, args...)
	if netns != nil {
		cmd = netns.Exec(context.Background(), bin, args...)
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// The process dies with the test or demo even if it is killed before Close.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", bin, err)
	}
	l.procs = append(l.procs, cmd)
	return cmd, nil
}

// Result is the outcome of a batch of requests (see hack/labagent).
type Result struct {
	Answers           map[string]int `json:"answers"`
	Clients           map[string]int `json:"clients"`
	Failures          map[string]int `json:"failures"`
	LastError         string         `json:"lastError"`
	MaxFailureSeconds float64        `json:"maxFailureSeconds"`
}

// Get sends count HTTP requests, each on a new connection, from the node.
func (l *Lab) Get(ctx context.Context, url string, count int) (Result, error) {
	return l.get(l.NodeCommand(ctx, l.agent, "get", url, fmt.Sprint(count)), url)
}

// UDP sends count datagrams from the node, all from the local port srcPort (one flow).
func (l *Lab) UDP(ctx context.Context, addr string, count, srcPort int) (Result, error) {
	return l.get(l.NodeCommand(ctx, l.agent, "udp", addr, fmt.Sprint(count), fmt.Sprint(srcPort)), addr)
}

// SCTP opens count SCTP associations from the node to addr (IPv4 "ip:port").
func (l *Lab) SCTP(ctx context.Context, addr string, count int) (Result, error) {
	return l.get(l.NodeCommand(ctx, l.agent, "sctp", addr, fmt.Sprint(count)), addr)
}

// ClientGet sends count HTTP requests, each on a new connection, from the off-node client.
func (l *Lab) ClientGet(ctx context.Context, url string, count int) (Result, error) {
	return l.get(l.client.Exec(ctx, l.agent, "get", url, fmt.Sprint(count)), url)
}

// PodGet sends count HTTP requests, each on a new connection, from a pod.
func (l *Lab) PodGet(ctx context.Context, pod *Pod, url string, count int) (Result, error) {
	return l.get(pod.Netns.Exec(ctx, l.agent, "get", url, fmt.Sprint(count)), url)
}

// Probe runs `labagent probe` (see hack/labagent) with args from: "node", "client", or
// the name of a pod.
func (l *Lab) Probe(ctx context.Context, from string, args ...string) (Result, error) {
	args = append([]string{"probe"}, args...)
	var cmd *exec.Cmd
	switch from {
	case "node":
		cmd = l.NodeCommand(ctx, l.agent, args...)
	case "client":
		cmd = l.client.Exec(ctx, l.agent, args...)
	default:
		i := slices.IndexFunc(l.Pods, func(p *Pod) bool { return p.Name == from })
		if i < 0 {
			return Result{}, fmt.Errorf("probing from %q: no such pod", from)
		}
		cmd = l.Pods[i].Netns.Exec(ctx, l.agent, args...)
	}
	return l.get(cmd, strings.Join(args[1:], " "))
}

func (l *Lab) get(cmd *exec.Cmd, url string) (Result, error) {
	var res Result
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return res, fmt.Errorf("labagent get %s: %w: %s", url, err, stderr.String())
	}
	if err := json.Unmarshal(out, &res); err != nil {
		return res, fmt.Errorf("labagent get %s: %w", url, err)
	}
	// A TCP connection whose SYN meets an ICMP host or network unreachable (a node with
	// no route for an address no rule took) fails at once or times out, depending on
	// whether the error arrives while connect holds the socket: either way nothing was
	// delivered, which is what a timeout means to the callers.
	if n := res.Failures["unreachable"]; n > 0 {
		res.Failures["timeout"] += n
		delete(res.Failures, "unreachable")
	}
	return res, nil
}

// NodeOutput runs a command on the node and returns its combined output.
func (l *Lab) NodeOutput(ctx context.Context, name string, args ...string) (string, error) {
	return output(l.NodeCommand(ctx, name, args...), "the node")
}

// ClientOutput runs a command on the off-node client and returns its combined output.
func (l *Lab) ClientOutput(ctx context.Context, name string, args ...string) (string, error) {
	return output(l.client.Exec(ctx, name, args...), "the client")
}

func output(cmd *exec.Cmd, where string) (string, error) {
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%v on %s: %w: %s", cmd.Args, where, err, out)
	}
	return string(out), nil
}

// Close stops every process and removes every namespace and link the lab created. It
// returns the first error, after trying everything.
func (l *Lab) Close() error {
	var errs []error
	for _, p := range l.procs {
		if p.ProcessState == nil {
			_ = p.Process.Kill()
			_ = p.Wait()
		}
	}
	if l.controlPlane != nil {
		l.controlPlane.Stop()
	}
	// Links in our own namespace first, so that no namespace deletion is still removing
	// them in the background when we look.
	if l.Node != nil {
		errs = append(errs, testenv.DeleteLink(hostLink, ""))
	} else {
		// The node is our own namespace: the node's ends of the sink's and the client's
		// links are here (the pods' go with their namespaces).
		errs = append(errs, testenv.DeleteLink("swyd-s0", ""), testenv.DeleteLink("swyd-c0", ""))
	}
	for _, pod := range l.Pods {
		errs = append(errs, pod.Netns.Delete())
	}
	for _, ns := range []*testenv.Netns{l.sink, l.client, l.Node} {
		if ns != nil {
			errs = append(errs, ns.Delete())
		}
	}
	return errors.Join(errs...)
}

// Eventually polls check every interval until it returns nil or timeout passes, and
// returns the last error.
func Eventually(ctx context.Context, timeout, interval time.Duration, check func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return errors.Join(err, ctx.Err())
		case <-time.After(interval):
		}
	}
}

// Service is a ClusterIP Service with one unnamed TCP port 80 that targets the pods' port.
func Service(name string) *v1.Service {
	return &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       v1.ServiceSpec{Ports: []v1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(PodPort), Protocol: v1.ProtocolTCP}}},
	}
}

// EndpointSlice is the slice an EndpointSlice controller would write for Service(service)
// backed by the given pods, all ready, each on its NodeName. It carries the trigger-time
// annotation, so the proxy's network-programming latency metric gets a sample.
func EndpointSlice(service string, pods []*Pod) *discovery.EndpointSlice {
	return endpointSlice(service, service+"-1", discovery.AddressTypeIPv4, pods, func(p *Pod) string { return p.IP })
}

// EndpointSliceIPv6 is EndpointSlice's IPv6 sibling, for a dual-stack Service.
func EndpointSliceIPv6(service string, pods []*Pod) *discovery.EndpointSlice {
	return endpointSlice(service, service+"-v6", discovery.AddressTypeIPv6, pods, func(p *Pod) string { return p.IPv6 })
}

func endpointSlice(service, name string, family discovery.AddressType, pods []*Pod, addr func(*Pod) string) *discovery.EndpointSlice {
	slice := &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name:        name,
			Labels:      map[string]string{discovery.LabelServiceName: service},
			Annotations: map[string]string{v1.EndpointsLastChangeTriggerTime: time.Now().UTC().Format(time.RFC3339Nano)},
		},
		AddressType: family,
		Ports:       []discovery.EndpointPort{{Name: ptr.To(""), Port: ptr.To(int32(PodPort)), Protocol: ptr.To(v1.ProtocolTCP)}},
	}
	for _, p := range pods {
		slice.Endpoints = append(slice.Endpoints, discovery.Endpoint{
			Addresses:  []string{addr(p)},
			Conditions: discovery.EndpointConditions{Ready: ptr.To(true)},
			NodeName:   ptr.To(p.NodeName),
		})
	}
	return slice
}
