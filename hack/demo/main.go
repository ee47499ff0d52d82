// Command demo is the quick start's main job: it builds a small lab on this machine (a
// real kube-apiserver, a node network namespace, three pods), runs switchyard in iptables
// mode there, creates a sample Service, shows requests being balanced across its pods,
// and removes everything again.
//
//	go run ./hack/demo -switchyard bin/switchyard -agent bin/labagent
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/switchyard/switchyard/internal/lab"
)

func main() {
	switchyard := flag.String("switchyard", "bin/switchyard", "path of the switchyard binary")
	agent := flag.String("agent", "bin/labagent", "path of the labagent binary")
	requests := flag.Int("requests", 300, "number of requests to send through the Service")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *switchyard, *agent, *requests); err != nil {
		fmt.Fprintln(os.Stderr, "demo failed:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, switchyard, agent string, requests int) error {
	dir, err := os.MkdirTemp("", "switchyard-demo")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	for _, p := range []*string{&switchyard, &agent} {
		if *p, err = filepath.Abs(*p); err != nil {
			return err
		}
	}

	step("Starting the lab: kube-apiserver + etcd, a node namespace, three pods")
	l, err := lab.Start(ctx, lab.Options{Dir: dir, Pods: 3, Agent: agent})
	if err != nil {
		return err
	}
	defer func() {
		step("Cleaning up: stopping processes, removing namespaces and links")
		if err := l.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "cleanup:", err)
		}
	}()
	fmt.Printf("   node namespace %s, pods %s\n", lab.NodeNetns, podList(l.Pods))

	step("Starting switchyard --proxy-mode=iptables in the node namespace")
	logPath, err := l.StartProxy(switchyard, "--proxy-mode=iptables", "--kubeconfig="+l.Kubeconfig,
		"--hostname-override="+lab.NodeName, "--cluster-cidr="+lab.ClusterCIDR,
		"--metrics-bind-address=127.0.0.1:10249", "--healthz-bind-address=127.0.0.1:10256", "--conntrack-max-per-core=0")
	if err != nil {
		return err
	}

	step("Creating Service default/web (port 80 -> 8080) and an EndpointSlice with the three pods")
	client := l.Client
	svc, err := client.CoreV1().Services("default").Create(ctx, lab.Service("web"), metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("creating the Service: %w", err)
	}
	if _, err := client.DiscoveryV1().EndpointSlices("default").Create(ctx, lab.EndpointSlice("web", l.Pods), metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("creating the EndpointSlice: %w", err)
	}

	url := fmt.Sprintf("http://%s/", svc.Spec.ClusterIP)
	step(fmt.Sprintf("Sending %d requests (a new connection each) to %s from the node", requests, url))
	var res lab.Result
	err = lab.Eventually(ctx, 30*time.Second, 250*time.Millisecond, func() error {
		if res, err = l.Get(ctx, url, requests); err != nil {
			return err
		}
		if len(res.Answers) < len(l.Pods) || len(res.Failures) > 0 {
			return fmt.Errorf("not balanced yet: answers %v, failures %v", res.Answers, res.Failures)
		}
		return nil
	})
	if err != nil {
		log, _ := os.ReadFile(logPath)
		return fmt.Errorf("%w\nswitchyard log:\n%s", err, log)
	}
	names := make([]string, 0, len(res.Answers))
	for n := range res.Answers {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		c := res.Answers[n]
		fmt.Printf("   %-6s %4d  %5.1f%%  %s\n", n, c, 100*float64(c)/float64(requests), strings.Repeat("#", c*60/requests))
	}

	step("The rules switchyard wrote for default/web (iptables-save -t nat)")
	dump, err := l.NodeOutput(ctx, "iptables-nft-save", "-t", "nat")
	if err != nil {
		return err
	}
	for _, line := range strings.Split(dump, "\n") {
		if strings.Contains(line, "default/web") {
			fmt.Println("   " + line)
		}
	}
	return nil
}

func step(s string) { fmt.Printf("\n==> %s\n", s) }

func podList(pods []*lab.Pod) string {
	var s []string
	for _, p := range pods {
		s = append(s, p.Name+"="+p.IP)
	}
	return strings.Join(s, ", ")
}
