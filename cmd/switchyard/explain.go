package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/switchyard/switchyard/config"
	"github.com/switchyard/switchyard/iptables"
	"github.com/switchyard/switchyard/modes"
	"github.com/switchyard/switchyard/proxier"
)

// explainUsage is `switchyard explain --help`.
const explainUsage = `Usage:
  switchyard explain [flags] NAMESPACE/NAME

Reads the Service NAMESPACE/NAME, its EndpointSlices and this Node from the apiserver,
works out what this node should program for the Service in the configured proxy mode,
and prints that next to what the kernel holds. It exits 0 when the kernel matches, 1 when
it does not, 2 on a usage error.

It takes the proxy's own flags and --config, so that run in the DaemonSet's pod it sees
what the proxy sees; it needs only the proxy's list permissions.

Flags:
`

// explain is `switchyard explain [flags] NAMESPACE/NAME`.
func explain(args []string, out io.Writer) int {
	if len(args) == 0 || strings.HasPrefix(args[len(args)-1], "-") {
		// The flags are parsed first: --help prints the usage, a bad flag says so.
		if parsed, code := parseConfig(args, explainUsage); parsed == nil {
			return code
		}
		fmt.Fprintf(os.Stderr, "switchyard explain: no NAMESPACE/NAME given\nRun 'switchyard explain --help' for usage.\n")
		return 2
	}
	target := args[len(args)-1]
	ns, name, ok := strings.Cut(target, "/")
	if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
		fmt.Fprintf(os.Stderr, "switchyard explain: %q is not NAMESPACE/NAME\nRun 'switchyard explain --help' for usage.\n", target)
		return 2
	}
	parsed, code := parseConfig(args[:len(args)-1], explainUsage)
	if parsed == nil {
		return code
	}
	if !apply(parsed) {
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	matches, err := explainService(ctx, parsed.Config, types.NamespacedName{Namespace: ns, Name: name}, out)
	switch {
	case err != nil:
		fmt.Fprintf(os.Stderr, "switchyard explain: %v\n", err)
		return 1
	case !matches:
		fmt.Fprintln(out, "The kernel differs from the desired state. A full sync repairs drift within --sync-period; if it persists, the proxy's log says why its syncs fail.")
		return 1
	}
	fmt.Fprintln(out, "The kernel holds the desired state.")
	return 0
}

func explainService(ctx context.Context, cfg config.Config, service types.NamespacedName, out io.Writer) (bool, error) {
	client, err := newClient(cfg)
	if err != nil {
		return false, err
	}
	svc, slices, node, err := fetchService(ctx, client, service, cfg.NodeName)
	if err != nil {
		return false, err
	}
	selector, err := proxier.ProxyNameSelector(cfg.ServiceProxyName)
	if err != nil {
		return false, err
	}
	served := selector.Matches(labels.Set(svc.Labels))
	if !served {
		fmt.Fprintf(out, "Service %s is not served by this proxy (its labels do not match %q): nothing should be programmed for it.\n", service, selector)
	}
	var names []proxier.ServicePortName
	for _, p := range svc.Spec.Ports {
		names = append(names, proxier.ServicePortName{NamespacedName: service, Port: p.Name, Protocol: p.Protocol})
	}

	flavor, err := iptables.DetectFlavor(ctx)
	if err != nil {
		return false, err
	}
	logger := klog.Background()
	matches := true
	for _, family := range families(flavor, logger) {
		backend, err := newBackend(ctx, cfg, family, flavor, modes.ForInspection, prometheus.NewRegistry(), logger)
		if err != nil {
			return false, err
		}
		explainer, ok := backend.(proxier.Explainer)
		if !ok {
			return false, fmt.Errorf("the %s backend cannot explain", backend.Name())
		}
		fmt.Fprintf(out, "%s in %s mode, %s, on node %s:\n", service, cfg.Mode, family.String(), cfg.NodeName)
		tracker := proxier.NewTracker(family, cfg.NodeName, time.Now(), func(e proxier.FieldError) {
			fmt.Fprintf(out, "  skipped %v\n", e)
		})
		if node != nil {
			tracker.OnNodeUpdate(node)
		}
		if served {
			tracker.OnServiceUpdate(svc)
			for _, s := range slices {
				tracker.OnEndpointSliceUpdate(s)
			}
		}
		ok, err = explainer.Explain(ctx, tracker.Flush().State, names, out)
		if err != nil {
			return false, err
		}
		matches = matches && ok
	}
	return matches, nil
}

// fetchService lists, rather than gets, so that the proxy's ServiceAccount, which may
// list and watch only, can run it.
func fetchService(ctx context.Context, client kubernetes.Interface, service types.NamespacedName, nodeName string) (*v1.Service, []*discovery.EndpointSlice, *v1.Node, error) {
	byName := func(name string) metav1.ListOptions {
		return metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("metadata.name", name).String()}
	}
	svcs, err := client.CoreV1().Services(service.Namespace).List(ctx, byName(service.Name))
	if err != nil {
		return nil, nil, nil, fmt.Errorf("reading Service %s: %w", service, err)
	}
	if len(svcs.Items) == 0 {
		return nil, nil, nil, fmt.Errorf("no Service %s", service)
	}
	list, err := client.DiscoveryV1().EndpointSlices(service.Namespace).List(ctx, metav1.ListOptions{LabelSelector: discovery.LabelServiceName + "=" + service.Name})
	if err != nil {
		return nil, nil, nil, fmt.Errorf("reading the EndpointSlices of %s: %w", service, err)
	}
	slices := make([]*discovery.EndpointSlice, len(list.Items))
	for i := range list.Items {
		slices[i] = &list.Items[i]
	}
	nodes, err := client.CoreV1().Nodes().List(ctx, byName(nodeName))
	if err != nil {
		return nil, nil, nil, fmt.Errorf("reading Node %s: %w", nodeName, err)
	}
	var node *v1.Node
	if len(nodes.Items) > 0 {
		node = &nodes.Items[0]
	}
	return &svcs.Items[0], slices, node, nil
}
