package proxier

import (
	"maps"
	"net/netip"
	"slices"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
)

// Tracker receives Service and EndpointSlice events and turns them, at sync time, into the
// desired State plus the set of ServicePorts that really changed. Events only record which
// Services are dirty; translation and diffing happen once per sync, so a burst of events
// for one Service costs one translation, and an update that changes nothing observable
// (a resourceVersion bump, a label we do not read) produces no change at all.
type Tracker struct {
	family       Family
	onFieldError func(FieldError)

	mu             sync.Mutex
	services       map[types.NamespacedName]*v1.Service
	slices         map[types.NamespacedName]map[string]*discovery.EndpointSlice
	dirtyServices  map[types.NamespacedName]struct{}
	dirtyEndpoints map[types.NamespacedName]struct{}
	triggerTimes   map[types.NamespacedName][]time.Time
	// started is when tracking began: trigger times before it describe changes made
	// while no proxy was watching, which are not this proxy's programming latency.
	started     time.Time
	nodeLabels  map[string]string
	nodeIP      netip.Addr
	nodeChanged bool

	// Owned by the sync goroutine (Flush and whoever reads State after it).
	portNames map[types.NamespacedName][]ServicePortName
	state     State
	stale     []StaleFlows
}

// StaleFlows names a UDP ServicePort whose connection-tracking entries a change may have
// made wrong: flows still DNATed to endpoints that are gone (or to an old port), and flows
// created while the port had no endpoint (rejected, never DNATed). The kernel applies NAT
// to a flow's first packet only, so these keep going wrong until deleted.
type StaleFlows struct {
	Port *ServicePort
	// Serving are the endpoints that may answer the port's flows; the others' go.
	Serving []netip.AddrPort
}

// noteStale records a change of one ServicePort's endpoints for conntrack cleanup, as
// kube-proxy's CleanStaleEntries decides it: UDP ports only, serving endpoints whatever
// the traffic policies say (a change of the Service must not break existing flows), and
// nothing for a port left without a serving endpoint, whose flows stay as they are.
func (t *Tracker) noteStale(port *ServicePort, endpoints []Endpoint) {
	if port.Protocol != v1.ProtocolUDP {
		return
	}
	f := StaleFlows{Port: port}
	for _, e := range endpoints {
		if e.Serving {
			f.Serving = append(f.Serving, netip.AddrPortFrom(e.IP, uint16(e.Port)))
		}
	}
	if len(f.Serving) > 0 {
		t.stale = append(t.stale, f)
	}
}

// NewTracker makes a tracker for one IP family, started at the given time. onFieldError,
// if not nil, is told of every unusable field found while translating objects.
func NewTracker(family Family, nodeName string, started time.Time, onFieldError func(FieldError)) *Tracker {
	return &Tracker{
		started:        started,
		family:         family,
		onFieldError:   onFieldError,
		services:       map[types.NamespacedName]*v1.Service{},
		slices:         map[types.NamespacedName]map[string]*discovery.EndpointSlice{},
		dirtyServices:  map[types.NamespacedName]struct{}{},
		dirtyEndpoints: map[types.NamespacedName]struct{}{},
		triggerTimes:   map[types.NamespacedName][]time.Time{},
		portNames:      map[types.NamespacedName][]ServicePortName{},
		state: State{
			NodeName:  nodeName,
			Services:  map[ServicePortName]*ServicePort{},
			Endpoints: map[ServicePortName][]Endpoint{},
		},
	}
}

// OnServiceUpdate records the latest version of a Service (add or update).
func (t *Tracker) OnServiceUpdate(svc *v1.Service) {
	name := types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.services[name] = svc
	t.dirtyServices[name] = struct{}{}
}

// OnServiceDelete records that a Service is gone.
func (t *Tracker) OnServiceDelete(svc *v1.Service) {
	name := types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.services, name)
	t.dirtyServices[name] = struct{}{}
}

// OnEndpointSliceUpdate records the latest version of an EndpointSlice (add or update).
func (t *Tracker) OnEndpointSliceUpdate(slice *discovery.EndpointSlice) {
	name, ok := sliceServiceName(slice)
	if !ok {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.slices[name] == nil {
		t.slices[name] = map[string]*discovery.EndpointSlice{}
	}
	t.slices[name][slice.Name] = slice
	t.dirtyEndpoints[name] = struct{}{}
	if ts, ok := triggerTime(slice); ok && !ts.Before(t.started) {
		t.triggerTimes[name] = append(t.triggerTimes[name], ts)
	}
}

// OnEndpointSliceDelete records that an EndpointSlice is gone.
func (t *Tracker) OnEndpointSliceDelete(slice *discovery.EndpointSlice) {
	name, ok := sliceServiceName(slice)
	if !ok {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.slices[name], slice.Name)
	if len(t.slices[name]) == 0 {
		delete(t.slices, name)
	}
	t.dirtyEndpoints[name] = struct{}{}
}

// Pending reports how many Services have unsynced service and endpoint changes.
func (t *Tracker) Pending() (services, endpoints int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.dirtyServices), len(t.dirtyEndpoints)
}

// serviceReference refers to a Service as the subject of an Event, or reports false when
// the tracker no longer holds it.
func (t *Tracker) serviceReference(name types.NamespacedName) (v1.ObjectReference, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	svc, ok := t.services[name]
	if !ok {
		return v1.ObjectReference{}, false
	}
	return objectReference("v1", "Service", svc.ObjectMeta), true
}

// OnNodeUpdate records this node's labels and reports whether its topology zone changed.
// A zone change can move every Service's endpoint selection, so the next Flush then asks
// for a full sync.
func (t *Tracker) OnNodeUpdate(node *v1.Node) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	ip := t.family.primaryNodeIP(node)
	changed := t.nodeLabels == nil || node.Labels[v1.LabelTopologyZone] != t.nodeLabels[v1.LabelTopologyZone] || ip != t.nodeIP
	t.nodeLabels = maps.Clone(node.Labels)
	if t.nodeLabels == nil {
		t.nodeLabels = map[string]string{}
	}
	t.nodeIP = ip
	t.nodeChanged = t.nodeChanged || changed
	return changed
}

// FlushResult is what one Flush hands to the sync.
type FlushResult struct {
	// State is the tracker's desired state. It is only modified by later Flush calls,
	// which the caller must not run concurrently with its use of State.
	State *State
	// Changed lists the ServicePorts whose service or endpoints changed.
	Changed map[ServicePortName]struct{}
	// NodeChanged is set when this node's topology zone or primary address changed since
	// the last flush, which affects every ServicePort.
	NodeChanged bool
	// Stale lists the UDP flows the folded changes made wrong, to delete once the new
	// rules are in place.
	Stale []StaleFlows
	// TriggerTimes are the last-change-trigger-time annotations of the EndpointSlice
	// changes folded into this flush, for the network-programming latency metric.
	TriggerTimes []time.Time
}

// Flush folds all pending events into the desired state and reports what changed.
func (t *Tracker) Flush() FlushResult {
	t.mu.Lock()
	dirty := make(map[types.NamespacedName]struct{}, len(t.dirtyServices)+len(t.dirtyEndpoints))
	for n := range t.dirtyServices {
		dirty[n] = struct{}{}
	}
	for n := range t.dirtyEndpoints {
		dirty[n] = struct{}{}
	}
	type input struct {
		svc    *v1.Service
		slices map[string]*discovery.EndpointSlice
	}
	inputs := make(map[types.NamespacedName]input, len(dirty))
	for n := range dirty {
		// A copy of the slice index, so translation can run outside the lock.
		inputs[n] = input{svc: t.services[n], slices: maps.Clone(t.slices[n])}
	}
	triggers := maps.Clone(t.triggerTimes)
	nodeChanged := t.nodeChanged
	if nodeChanged {
		t.state.NodeLabels, t.state.NodeIP = t.nodeLabels, t.nodeIP
		t.nodeChanged = false
	}
	clear(t.dirtyServices)
	clear(t.dirtyEndpoints)
	clear(t.triggerTimes)
	t.mu.Unlock()

	changed := map[ServicePortName]struct{}{}
	var triggerTimes []time.Time
	for name, in := range inputs {
		// Only a change that needs programming has a programming latency.
		if t.recompute(name, in.svc, in.slices, changed) {
			triggerTimes = append(triggerTimes, triggers[name]...)
		}
	}
	stale := t.stale
	t.stale = nil
	return FlushResult{State: &t.state, Changed: changed, NodeChanged: nodeChanged, TriggerTimes: triggerTimes, Stale: stale}
}

// recompute translates one Service again, records which of its ServicePorts changed, and
// reports whether any did.
func (t *Tracker) recompute(name types.NamespacedName, svc *v1.Service, sliceIndex map[string]*discovery.EndpointSlice, changed map[ServicePortName]struct{}) bool {
	before := len(changed)
	var ports []*ServicePort
	var endpoints map[ServicePortName][]Endpoint
	if svc != nil {
		var errs []FieldError
		ports, errs = ServicePorts(svc, t.family)
		if len(ports) > 0 {
			var epErrs []FieldError
			endpoints, epErrs = ServiceEndpoints(name, sliceIndex, t.family, t.state.NodeName)
			errs = append(errs, epErrs...)
		}
		if t.onFieldError != nil {
			for _, e := range errs {
				t.onFieldError(e)
			}
		}
	}

	newNames := make([]ServicePortName, 0, len(ports))
	for _, p := range ports {
		newNames = append(newNames, p.Name)
		old, existed := t.state.Services[p.Name]
		eps := endpoints[p.Name]
		if !existed || !old.equal(p) || !slices.EqualFunc(t.state.Endpoints[p.Name], eps, Endpoint.equal) {
			changed[p.Name] = struct{}{}
			t.noteStale(p, eps)
		}
		t.state.Services[p.Name] = p
		if len(eps) > 0 {
			t.state.Endpoints[p.Name] = eps
		} else {
			delete(t.state.Endpoints, p.Name)
		}
	}
	for _, old := range t.portNames[name] {
		if !slices.Contains(newNames, old) {
			delete(t.state.Services, old)
			delete(t.state.Endpoints, old)
			changed[old] = struct{}{}
		}
	}
	if len(newNames) > 0 {
		t.portNames[name] = newNames
	} else {
		delete(t.portNames, name)
	}
	return len(changed) > before
}

func sliceServiceName(slice *discovery.EndpointSlice) (types.NamespacedName, bool) {
	svc := slice.Labels[discovery.LabelServiceName]
	if svc == "" {
		return types.NamespacedName{}, false
	}
	return types.NamespacedName{Namespace: slice.Namespace, Name: svc}, true
}

func triggerTime(slice *discovery.EndpointSlice) (time.Time, bool) {
	s, ok := slice.Annotations[v1.EndpointsLastChangeTriggerTime]
	if !ok {
		return time.Time{}, false
	}
	ts, err := time.Parse(time.RFC3339Nano, s)
	return ts, err == nil
}
