// Command demo is the quick start's main job. It builds a small lab on this machine (a
// real kube-apiserver, a node, three pods), and shows the same sample Service served by
// switchyard in both proxy modes: iptables in a network namespace on the host, and IPVS
// inside the kernel lab (a UML kernel, since the host kernel has no IPVS). For each, it
// shows how requests are balanced across the pods and what was programmed, then removes
// everything again.
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

// envGuestKubeconfig tells the demo it runs inside the kernel lab's guest.
const envGuestKubeconfig = "SWYD_DEMO_GUEST_KUBECONFIG"

type options struct {
	switchyard, agent, runner, modes string
	requests                         int
}

func main() {
	var o options
	flag.StringVar(&o.switchyard, "switchyard", "bin/switchyard", "path of the switchyard binary")
	flag.StringVar(&o.agent, "agent", "bin/labagent", "path of the labagent binary")
	flag.StringVar(&o.runner, "kernel-lab", "hack/kernel-lab/run.sh", "path of the kernel lab runner")
	flag.StringVar(&o.modes, "modes", "iptables,ipvs", "proxy modes to show, comma-separated")
	flag.IntVar(&o.requests, "requests", 300, "number of requests to send through the Service")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "demo failed:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, o options) error {
	dir, err := os.MkdirTemp("", "switchyard-demo")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	for _, p := range []*string{&o.switchyard, &o.agent, &o.runner} {
		if *p, err = filepath.Abs(*p); err != nil {
			return err
		}
	}
	if kubeconfig := os.Getenv(envGuestKubeconfig); kubeconfig != "" {
		return showMode(ctx, o, dir, "ipvs", kubeconfig)
	}
	for _, mode := range strings.Split(o.modes, ",") {
		switch mode {
		case "iptables":
			banner("iptables mode, in a network namespace on this host")
			if err := showMode(ctx, o, dir, mode, ""); err != nil {
				return err
			}
		case "ipvs":
			banner("IPVS mode, inside the kernel lab (User-Mode Linux 6.1 with IPVS)")
			if err := showIPVS(ctx, o, dir); err != nil {
				return err
			}
		default:
			return fmt.Errorf("unknown mode %q: iptables or ipvs", mode)
		}
	}
	return nil
}

// showIPVS starts an apiserver the kernel lab can reach and runs this demo again inside
// the guest.
func showIPVS(ctx context.Context, o options, dir string) error {
	step("Starting kube-apiserver + etcd on a tap link to the kernel lab")
	g, err := lab.StartGuestLink(ctx, filepath.Join(dir, "guestlink"), o.runner, 0)
	if err != nil {
		return err
	}
	defer g.Close()
	step("Booting the kernel lab")
	return g.Run(ctx, os.Stdout, []string{envGuestKubeconfig + "=" + g.Kubeconfig}, os.Args[0],
		"-switchyard", o.switchyard, "-agent", o.agent, "-requests", fmt.Sprint(o.requests))
}

// showMode builds the lab (with the given apiserver, or its own when kubeconfig is
// empty), runs switchyard in the mode, and shows a Service being balanced.
func showMode(ctx context.Context, o options, dir, mode, kubeconfig string) error {
	step("Starting the lab: a node, three pods" + map[bool]string{true: ", kube-apiserver + etcd", false: ""}[kubeconfig == ""])
	l, err := lab.Start(ctx, lab.Options{Dir: filepath.Join(dir, mode), Pods: 3, Agent: o.agent, Kubeconfig: kubeconfig})
	if err != nil {
		return err
	}
	defer func() {
		step("Cleaning up: stopping processes, removing namespaces and links")
		if err := l.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "cleanup:", err)
		}
	}()
	fmt.Printf("   pods %s\n", podList(l.Pods))

	step("Starting switchyard --proxy-mode=" + mode)
	logPath, err := l.StartProxy(o.switchyard, "--proxy-mode="+mode, "--kubeconfig="+l.Kubeconfig,
		"--hostname-override="+lab.NodeName, "--cluster-cidr="+lab.ClusterCIDR,
		"--metrics-bind-address=127.0.0.1:10249", "--healthz-bind-address=127.0.0.1:10256", "--conntrack-max-per-core=0")
	if err != nil {
		return err
	}

	step("Creating Service default/web (port 80 -> 8080) and an EndpointSlice with the three pods")
	svc, err := l.Client.CoreV1().Services("default").Create(ctx, lab.Service("web"), metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("creating the Service: %w", err)
	}
	if _, err := l.Client.DiscoveryV1().EndpointSlices("default").Create(ctx, lab.EndpointSlice("web", l.Pods), metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("creating the EndpointSlice: %w", err)
	}

	url := fmt.Sprintf("http://%s/", svc.Spec.ClusterIP)
	step(fmt.Sprintf("Sending %d requests (a new connection each) to %s from the node", o.requests, url))
	var res lab.Result
	err = lab.Eventually(ctx, 60*time.Second, 250*time.Millisecond, func() error {
		if res, err = l.Get(ctx, url, o.requests); err != nil {
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
		fmt.Printf("   %-6s %4d  %5.1f%%  %s\n", n, c, 100*float64(c)/float64(o.requests), strings.Repeat("#", c*60/o.requests))
	}

	if mode == "ipvs" {
		step("What switchyard programmed: ipvsadm -Ln, and the addresses on kube-ipvs0")
		for _, cmd := range [][]string{{"ipvsadm", "-Ln"}, {"ip", "-4", "-br", "addr", "show", "dev", "kube-ipvs0"}} {
			out, err := l.NodeOutput(ctx, cmd[0], cmd[1:]...)
			if err != nil {
				return err
			}
			fmt.Print(indent(out))
		}
		return nil
	}
	step("What switchyard programmed for default/web: iptables-save -t nat")
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

func banner(s string) { fmt.Printf("\n######## %s\n", s) }

func step(s string) { fmt.Printf("\n==> %s\n", s) }

func indent(s string) string {
	return "   " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n   ") + "\n"
}

func podList(pods []*lab.Pod) string {
	var s []string
	for _, p := range pods {
		s = append(s, p.Name+"="+p.IP)
	}
	return strings.Join(s, ", ")
}
