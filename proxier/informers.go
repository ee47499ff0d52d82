package proxier

import (
	"context"
	"fmt"
	"slices"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// LabelServiceProxyName marks a Service as handled by another (or a named) proxy.
const LabelServiceProxyName = "service.kubernetes.io/service-proxy-name"

// ProxyNameSelector selects the objects this proxy serves: like kube-proxy, only those
// without a service-proxy-name label, or, when we were given a name, those labelled with
// it; and never the EndpointSlices of headless Services.
func ProxyNameSelector(serviceProxyName string) (labels.Selector, error) {
	var proxyName *labels.Requirement
	var err error
	if serviceProxyName == "" {
		proxyName, err = labels.NewRequirement(LabelServiceProxyName, selection.DoesNotExist, nil)
	} else {
		proxyName, err = labels.NewRequirement(LabelServiceProxyName, selection.Equals, []string{serviceProxyName})
	}
	if err != nil {
		return nil, fmt.Errorf("service proxy name %q: %w", serviceProxyName, err)
	}
	notHeadless, err := labels.NewRequirement(v1.IsHeadlessService, selection.DoesNotExist, nil)
	if err != nil {
		return nil, err
	}
	return labels.NewSelector().Add(*proxyName, *notHeadless), nil
}

// Watch starts one set of informers for Services, EndpointSlices and this Node, and feeds
// their events to every Proxier given (one per IP family, like kube-proxy's dual-stack
// proxier), marking each initialized once all three are listed. The Node's events also
// go to eligibility, for /healthz. It returns when the caches have synced (or ctx ends).
// All proxiers must be for the same node.
func Watch(ctx context.Context, client kubernetes.Interface, serviceProxyName string, resync time.Duration, eligibility *NodeEligibility, proxiers ...*Proxier) error {
	if len(proxiers) == 0 {
		return fmt.Errorf("watching: no proxier to feed")
	}
	nodeName := proxiers[0].opts.NodeName
	selector, err := ProxyNameSelector(serviceProxyName)
	if err != nil {
		return err
	}
	objects := informers.NewSharedInformerFactoryWithOptions(client, resync,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = selector.String() }))
	nodes := informers.NewSharedInformerFactoryWithOptions(client, resync,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", nodeName).String()
		}))

	// each runs an event against every proxier's tracker and queues its sync.
	each := func(event func(*Proxier)) {
		for _, p := range proxiers {
			event(p)
			p.Changed()
		}
	}
	// The change counters are the process's, the same in every family's Metrics: an event
	// counts once, however many families it goes to.
	changes := proxiers[0].opts.Metrics
	svcInformer := objects.Core().V1().Services().Informer()
	svcHandler, err := svcInformer.AddEventHandler(handler(
		func(s *v1.Service) {
			changes.ServiceChangesTotal.Inc()
			each(func(p *Proxier) { p.tracker.OnServiceUpdate(s) })
		},
		func(s *v1.Service) {
			changes.ServiceChangesTotal.Inc()
			each(func(p *Proxier) { p.tracker.OnServiceDelete(s) })
		},
	))
	if err != nil {
		return fmt.Errorf("watching Services: %w", err)
	}
	sliceInformer := objects.Discovery().V1().EndpointSlices().Informer()
	// As kube-proxy's endpoint change trackers, a slice counts when a proxier takes its
	// address type: not an FQDN slice, nor one of a family without a proxier.
	countSlice := func(s *discovery.EndpointSlice) {
		if slices.ContainsFunc(proxiers, func(p *Proxier) bool { return p.opts.Family.addressType() == s.AddressType }) {
			changes.EndpointChangesTotal.Inc()
		}
	}
	sliceHandler, err := sliceInformer.AddEventHandler(handler(
		func(s *discovery.EndpointSlice) {
			countSlice(s)
			each(func(p *Proxier) { p.tracker.OnEndpointSliceUpdate(s) })
		},
		func(s *discovery.EndpointSlice) {
			countSlice(s)
			each(func(p *Proxier) { p.tracker.OnEndpointSliceDelete(s) })
		},
	))
	if err != nil {
		return fmt.Errorf("watching EndpointSlices: %w", err)
	}
	nodeInformer := nodes.Core().V1().Nodes().Informer()
	nodeHandler, err := nodeInformer.AddEventHandler(nodeEvents(eligibility, proxiers))
	if err != nil {
		return fmt.Errorf("watching Node %s: %w", nodeName, err)
	}

	objects.Start(ctx.Done())
	nodes.Start(ctx.Done())
	// The handlers' HasSynced, not the informers': an informer has synced once its store
	// holds the initial list, and its handlers may still be receiving it. A proxier
	// initialized then would make its first full sync from part of the Services, which
	// removes the rules of the rest until their events arrive (at 10,000 Services, the
	// rest then came in as one partial sync after another).
	if !cache.WaitForCacheSync(ctx.Done(), svcHandler.HasSynced, sliceHandler.HasSynced, nodeHandler.HasSynced) {
		return fmt.Errorf("waiting for Service, EndpointSlice and Node caches: %w", ctx.Err())
	}
	for _, p := range proxiers {
		p.SetInitialized()
	}
	return nil
}

// nodeEvents feeds this Node's events to eligibility and to every proxier's tracker.
func nodeEvents(eligibility *NodeEligibility, proxiers []*Proxier) cache.ResourceEventHandler {
	return handler(func(n *v1.Node) {
		eligibility.OnNodeUpdate(n)
		for _, p := range proxiers {
			if p.tracker.OnNodeUpdate(n) {
				p.Changed()
			}
		}
	}, func(*v1.Node) {
		// A deleted Node changes nothing: the proxiers keep the last labels and address
		// they saw, and eligibility its last verdict, as kube-proxy's
		// NodeManager.OnNodeDelete keeps its Node.
	})
}

// handler adapts typed add/update and delete callbacks to an informer event handler,
// unwrapping the tombstones informers deliver for deletes they missed.
func handler[T any](upsert, remove func(T)) cache.ResourceEventHandler {
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { typed(obj, upsert) },
		UpdateFunc: func(_, obj any) { typed(obj, upsert) },
		DeleteFunc: func(obj any) {
			if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = tomb.Obj
			}
			typed(obj, remove)
		},
	}
}

func typed[T any](obj any, fn func(T)) {
	if o, ok := obj.(T); ok {
		fn(o)
	}
}
