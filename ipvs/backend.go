package ipvs

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"

	"github.com/switchyard/switchyard/dummy"
	"github.com/switchyard/switchyard/iptables"
	"github.com/switchyard/switchyard/proxier"
)

// Config is what the IPVS backend needs besides the desired state.
type Config struct {
	Scheduler string
	// ResolveConfig is what the Service semantics depend on (masquerading, and the pod
	// network that tells pods from other clients).
	proxier.ResolveConfig
	// MasqueradeMark is the fwmark bit that asks SWYD-POSTROUTING to masquerade.
	MasqueradeMark string
	// TerminationGrace bounds how long a removed real server keeps its open connections
	// (at weight 0, so it gets no new ones) before it is deleted anyway.
	TerminationGrace time.Duration
	// NodePortAddresses limits NodePorts to node addresses in these ranges; empty means
	// every address of the node but loopback and link-local ones.
	NodePortAddresses []netip.Prefix
	// IPv6 is set for the backend of the IPv6 proxier.
	IPv6 bool
	// ExcludeCIDRs (--ipvs-exclude-cidrs) hold addresses whose virtual servers are never
	// deleted, even ours.
	ExcludeCIDRs []netip.Prefix
}

// vsPlan is one virtual server and the endpoints it sends traffic to.
type vsPlan struct {
	vs    *VirtualServer
	reals []netip.AddrPort
}

// portPlan is what one ServicePort contributes to the kernel.
type portPlan struct {
	servers []vsPlan
	// addrs are the Service addresses bound on kube-ipvs0 (cluster, external and
	// load-balancer IPs; NodePorts use the node's own addresses).
	addrs []netip.Addr
	sets  []SetEntry
	// nodeDrops are the load-balancer entry points whose loadBalancerSourceRanges do not
	// admit the node: SWYD-IPVS-OUT-FILTER drops the node's own connections to them.
	nodeDrops []Key
}

func (p *portPlan) server(k Key) *VirtualServer {
	for _, s := range p.servers {
		if s.vs.Key() == k {
			return s.vs
		}
	}
	return nil
}

// terminating is a removed real server waiting for its connections to drain.
type terminating struct {
	vs       *VirtualServer
	rs       netip.AddrPort
	deadline time.Time
}

// Backend programs Services as IPVS virtual servers. A full sync lists the kernel's
// virtual servers, bound addresses and set members once and applies the difference; a
// partial sync touches only the virtual servers of the ServicePorts that changed.
// Everything but the iptables rules goes over netlink: a full sync writes the rules in
// one iptables-restore, and a partial sync starts one only when the node drops change (a
// load-balancer IP whose source ranges do not admit the node comes or goes).
type Backend struct {
	ipvs   Interface
	ipt    iptables.Interface
	dev    Device
	sets   Sets
	cfg    Config
	logger klog.Logger

	mu sync.Mutex
	// plans is what the last syncs programmed, per ServicePort, or tried to for those in
	// failed.
	plans map[proxier.ServicePortName]*portPlan
	// failed holds the ServicePorts whose last programming failed part-way: the kernel
	// may hold any part of their plans, old or new, so their next sync looks at the
	// kernel rather than at plans.
	failed map[proxier.ServicePortName]bool
	// addrUsers counts the ServicePorts using each bound address, so an address is
	// unbound exactly when the last of them goes.
	addrUsers map[netip.Addr]int
	// setUsers counts the ServicePorts needing each set member.
	setUsers    map[SetEntry]int
	terminating map[Key]map[netip.AddrPort]terminating
	// left are the virtual servers in ExcludeCIDRs that stay in the kernel with no plan
	// using them (deleteVirtualServer leaves them): a ServicePort that wants one again
	// takes it over, as kube-proxy's sync, which looks each one up in the kernel, does.
	left map[Key]*VirtualServer
	// nodeDropUsers counts the ServicePorts needing each node drop; nodeDropsWritten are
	// those SWYD-IPVS-OUT-FILTER holds since our last write to it, sorted.
	nodeDropUsers    map[Key]int
	nodeDropsWritten []Key
	// nodeIPs are the node's own addresses, and nodePortIPs those NodePorts are served on,
	// as of the last full sync.
	nodeIPs, nodePortIPs []netip.Addr

	operations *prometheus.CounterVec
}

// NewBackend makes an IPVS backend and registers its metrics with reg. dev is kube-ipvs0,
// nil when it does not exist (Explain reports that); the ipsets are the kernel's.
func NewBackend(ipvs Interface, ipt iptables.Interface, dev *dummy.Device, cfg Config, reg prometheus.Registerer, logger klog.Logger) *Backend {
	// A nil *dummy.Device must become a nil Device, not one holding a nil pointer, as
	// Explain tells a missing device by a nil b.dev.
	var d Device
	if dev != nil {
		d = kernelDevice{dev}
	}
	return NewBackendWithKernel(ipvs, ipt, d, ipsets{ipv6: cfg.IPv6}, cfg, reg, logger)
}

// NewBackendWithKernel is NewBackend with every kernel boundary given as an interface: dev
// is kube-ipvs0 with the node's addresses (nil when the device does not exist), and sets
// are the ipsets of cfg's IP family. Unit tests give it the stateful fakes of package
// ipvstest.
func NewBackendWithKernel(ipvs Interface, ipt iptables.Interface, dev Device, sets Sets, cfg Config, reg prometheus.Registerer, logger klog.Logger) *Backend {
	family := "IPv4"
	if cfg.IPv6 {
		family = "IPv6"
	}
	logger = logger.WithValues("ipFamily", family)
	b := &Backend{
		ipvs: ipvs, ipt: ipt, dev: dev, sets: sets, cfg: cfg, logger: logger,
		plans:         map[proxier.ServicePortName]*portPlan{},
		failed:        map[proxier.ServicePortName]bool{},
		addrUsers:     map[netip.Addr]int{},
		setUsers:      map[SetEntry]int{},
		nodeDropUsers: map[Key]int{},
		terminating:   map[Key]map[netip.AddrPort]terminating{},
		left:          map[Key]*VirtualServer{},
		operations: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "switchyard", Name: "ipvs_operations_total",
			Help: "IPVS, address and ipset changes made over netlink", ConstLabels: prometheus.Labels{"backend": "ipvs", "ip_family": family}}, []string{"operation"}),
	}
	reg.MustRegister(b.operations)
	return b
}

// Name is part of proxier.Backend.
func (b *Backend) Name() string { return "ipvs" }

// plan translates one ServicePort's resolution into virtual servers, bound addresses
// and set members: a virtual server on each entry point (the NodePort on each node-port
// address), fed by the endpoints its decision forwards to. A virtual server without
// endpoints makes IPVS answer new connections with ICMP port unreachable: the client is
// refused at once, like a REJECT rule. Drops and masquerading are set members that the
// fixed rule set (ruleset) acts on.
//
// One virtual server has one set of real servers for every client, so where the
// resolution sends classes of clients at an external entry point to different endpoint
// sets, the off-node clients' set wins, as in kube-proxy's IPVS mode: pods and the node
// reach a Service with externalTrafficPolicy Local through its local endpoints when
// there are any (docs/node-contract.md). When there are none, the virtual server takes
// the cluster's endpoints for pods and the node, and the off-node clients are dropped
// before IPVS sees them.
func (b *Backend) plan(state *proxier.State, sp *proxier.ServicePort) *portPlan {
	res := proxier.Resolve(&b.cfg.ResolveConfig, state, sp, b.nodeIPs)
	p := &portPlan{}
	add := func(addr netip.Addr, port int32, d proxier.Decision) {
		s := vsPlan{vs: &VirtualServer{Address: addr, Protocol: sp.Protocol, Port: uint16(port), Scheduler: b.cfg.Scheduler,
			AffinityTimeout: uint32(sp.SessionAffinityTimeout.Seconds())}}
		for _, e := range d.Endpoints {
			s.reals = append(s.reals, netip.AddrPortFrom(e.IP, uint16(e.Port)))
		}
		p.servers = append(p.servers, s)
	}
	entry := func(set string, ip netip.Addr, port int32) SetEntry {
		return SetEntry{Set: set, IP: ip, Protocol: sp.Protocol, Port: uint16(port)}
	}

	// What the virtual servers of the external entry points forward, and the set that
	// gives their traffic what it needs beyond IPVS: masquerading under the Cluster
	// policy, none under Local, and the drop of off-node clients when only pods and the
	// node may be served.
	external, externalMembership := res.External, externalSet
	switch {
	case res.External.Verdict == proxier.Drop:
		external, externalMembership = res.ExternalFromNode, externalNoLocalSet
	case res.External.Masquerade == proxier.MasqueradeNone:
		externalMembership = externalLocalSet
	}
	for _, e := range res.EntryPoints {
		if e.Kind == proxier.NodePortEntry {
			for _, ip := range b.nodePortIPs {
				add(ip, e.Port, external)
				p.sets = append(p.sets, entry(externalMembership, ip, e.Port))
			}
			continue
		}
		if e.Kind == proxier.ClusterIPEntry {
			// Masquerading of cluster IP traffic is decided by the fixed rules (from the
			// configuration, the same for every Service); the set names the port, or
			// the drop of internalTrafficPolicy Local without a local endpoint.
			add(e.Addr, e.Port, res.Internal)
			membership := clusterIPSet
			if res.Internal.Verdict == proxier.Drop {
				membership = noLocalEndpointsSet
			}
			p.sets = append(p.sets, entry(membership, e.Addr, e.Port))
		} else {
			add(e.Addr, e.Port, external)
			p.sets = append(p.sets, entry(externalMembership, e.Addr, e.Port))
		}
		// A node address is the node's already: binding it to kube-ipvs0 would make
		// unbinding remove it, and listing it as a Service address would close every
		// other port of the node on it.
		if !e.NodeAddress {
			p.addrs = append(p.addrs, e.Addr)
			p.sets = append(p.sets, SetEntry{Set: serviceIPsSet, IP: e.Addr})
		}
		if len(e.SourceRanges) > 0 {
			p.sets = append(p.sets, entry(loadBalancerFirewallSet, e.Addr, e.Port))
			sources := e.SourceRanges
			if e.AllowLoadBalancerSources {
				for _, ip := range sp.LoadBalancerIPs {
					sources = append(slices.Clip(sources), netip.PrefixFrom(ip, ip.BitLen()))
				}
			} else {
				// IPVS takes the node's own connections before any filter rule sees them,
				// so the source filter above never meets them: a rule after IPVS drops
				// them instead, as kube-proxy's lbNoNodeAccessIPPortProtocolEntries do.
				// kube-proxy lists these also while the Service has no endpoint (we
				// resolve no source ranges then); its virtual server has no real server
				// then, so IPVS refuses the node before that rule could see the packet,
				// here as there.
				p.nodeDrops = append(p.nodeDrops, Key{e.Addr, sp.Protocol, uint16(e.Port)})
			}
			for _, src := range sources {
				s := entry(loadBalancerSourceSet, e.Addr, e.Port)
				s.Net = src
				p.sets = append(p.sets, s)
			}
		}
	}
	if sp.HealthCheckNodePort != 0 {
		// Whatever the endpoints, so that a load balancer's health check gets its
		// answer (503 without a local endpoint), as kube-proxy adds every Service's.
		p.sets = append(p.sets, SetEntry{Set: healthCheckNodePortSet, Port: uint16(sp.HealthCheckNodePort)})
	}
	// Hairpin traffic (a pod reaching itself through the Service) is masqueraded by this
	// set; only a pod on this node can hairpin here, so remote endpoints are left out, as
	// kube-proxy does: at 10 endpoints per Service they would double a full sync's work.
	for _, e := range res.Endpoints.AllReachable {
		if !e.IsLocal(state.NodeName) {
			continue
		}
		p.sets = append(p.sets, SetEntry{Set: loopbackSet, IP: e.IP, Protocol: sp.Protocol, Port: uint16(e.Port), IP2: e.IP})
	}
	return p
}

// Sync is part of proxier.Backend. A failed netlink operation is blamed on the
// ServicePorts it was for (a virtual server and its real servers on their port, a bound
// address or a set member on every port using it); everything else is applied, and the
// ports are returned in a proxier.PortErrors. A failure of anything no port owns (the
// static rules, a listing, the removal of what no port uses any more) fails the sync.
func (b *Backend) Sync(ctx context.Context, state *proxier.State, changes proxier.Changes) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	var failed proxier.PortErrors
	var err error
	if changes.Full {
		failed, err = b.fullSync(ctx, state)
	} else {
		failed, err = b.partialSync(ctx, state, changes.ServicePorts)
	}
	if err != nil {
		return err
	}
	return failed.ErrorOrNil()
}

func (b *Backend) fullSync(ctx context.Context, state *proxier.State) (proxier.PortErrors, error) {
	if err := b.dev.Refresh(); err != nil {
		return nil, err
	}
	if err := b.sets.Ensure(); err != nil {
		return nil, err
	}
	if err := b.readNodeAddresses(); err != nil {
		return nil, err
	}

	plans := make(map[proxier.ServicePortName]*portPlan, len(state.Services))
	addrUsers := map[netip.Addr]int{}
	setUsers := map[SetEntry]int{}
	nodeDropUsers := map[Key]int{}
	wanted := map[Key]vsPlan{}
	for name, sp := range state.Services {
		p := b.plan(state, sp)
		plans[name] = p
		for _, a := range p.addrs {
			addrUsers[a]++
		}
		for _, e := range p.sets {
			setUsers[e]++
		}
		for _, k := range p.nodeDrops {
			nodeDropUsers[k]++
		}
		for _, s := range p.servers {
			wanted[s.vs.Key()] = s
		}
	}

	failed := proxier.PortErrors{}
	rules := func(nodeDrops []Key) error {
		_, _, err := iptables.Apply(ctx, b.ipt, b.ruleset(nodeDrops))
		return err
	}
	if err := b.writeNodeDrops(rules, sortedKeys(nodeDropUsers), plans, failed); err != nil {
		return nil, fmt.Errorf("static iptables rules: %w", err)
	}
	bound, err := b.boundAddresses(addrUsers)
	if err != nil {
		return nil, err
	}
	for a := range addrUsers {
		if bound[a] {
			continue
		}
		if err := b.bind(a); err != nil {
			failed.Add(err, users(plans, func(p *portPlan) bool { return slices.Contains(p.addrs, a) })...)
		}
	}
	// Set members go in before the virtual servers they describe, so the first packet a
	// new virtual server takes is already masqueraded and filtered as it should be; stale
	// members go after the virtual servers that used them.
	members, err := b.sets.List()
	if err != nil {
		return nil, err
	}
	for e := range setUsers {
		if members[e] {
			continue
		}
		if err := b.addEntry(e); err != nil {
			failed.Add(err, users(plans, func(p *portPlan) bool { return slices.Contains(p.sets, e) })...)
		}
	}
	current, err := b.ipvs.VirtualServers()
	if err != nil {
		return nil, err
	}
	inKernel := map[Key]*VirtualServer{}
	clear(b.left)
	for _, vs := range current {
		inKernel[vs.Key()] = vs
		if _, ok := wanted[vs.Key()]; !ok && b.excluded(vs) {
			b.left[vs.Key()] = vs
		}
	}
	for key, s := range wanted {
		if err := b.syncVirtualServer(inKernel[key], s); err != nil {
			failed.Add(err, users(plans, func(p *portPlan) bool { return p.server(key) != nil })...)
		}
	}
	var errs []error
	for key, vs := range inKernel {
		if _, ok := wanted[key]; !ok && b.owns(vs, bound) {
			errs = append(errs, b.deleteVirtualServer(vs))
		}
	}
	for a := range bound {
		if addrUsers[a] == 0 {
			errs = append(errs, b.unbind(a))
		}
	}
	for e := range members {
		if setUsers[e] == 0 {
			errs = append(errs, b.delEntry(e))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, errors.Join(err, failed.ErrorOrNil())
	}
	b.plans, b.addrUsers, b.setUsers, b.nodeDropUsers = plans, addrUsers, setUsers, nodeDropUsers
	clear(b.failed)
	for name := range failed {
		b.failed[name] = true
	}
	b.logger.V(2).Info("Full IPVS sync", "servicePorts", len(plans), "failedServicePorts", len(failed), "virtualServers", len(wanted), "addresses", len(addrUsers))
	return failed, nil
}

// users lists the ServicePorts whose plans use a kernel object, to blame its failure on
// each of them. It walks every plan, which only a failure pays for.
func users(plans map[proxier.ServicePortName]*portPlan, uses func(*portPlan) bool) []proxier.ServicePortName {
	var out []proxier.ServicePortName
	for name, p := range plans {
		if uses(p) {
			out = append(out, name)
		}
	}
	return out
}

// readNodeAddresses refreshes the node's own addresses and the node-port addresses.
func (b *Backend) readNodeAddresses() error {
	nodeIPs, err := b.dev.NodeAddresses(b.cfg.IPv6)
	if err != nil {
		return err
	}
	b.nodeIPs, b.nodePortIPs = nodeIPs, inRanges(nodeIPs, b.cfg.NodePortAddresses)
	return nil
}

// boundAddresses lists the Service addresses of this family that we bound on kube-ipvs0.
// IPv4 ones carry our label. IPv6 addresses have no labels: one is ours when a Service
// wants it or a virtual server uses it, so an address someone else put on the device
// without a virtual server stays.
func (b *Backend) boundAddresses(wanted map[netip.Addr]int) (map[netip.Addr]bool, error) {
	if !b.cfg.IPv6 {
		return b.dev.Addresses()
	}
	all, err := b.dev.AddressesIPv6()
	if err != nil {
		return nil, err
	}
	current, err := b.ipvs.VirtualServers()
	if err != nil {
		return nil, err
	}
	ours := map[netip.Addr]bool{}
	for a := range all {
		if wanted[a] > 0 || slices.ContainsFunc(current, func(vs *VirtualServer) bool { return vs.Address == a }) {
			ours[a] = true
		}
	}
	return ours, nil
}

// owns tells whether a virtual server in the kernel is ours: one on an address we bound,
// or one on a node address with a port in the NodePort range. Anything else in the table
// belongs to someone else and is left alone.
func (b *Backend) owns(vs *VirtualServer, bound map[netip.Addr]bool) bool {
	if bound[vs.Address] {
		return true
	}
	return slices.Contains(b.nodePortIPs, vs.Address) && vs.Port >= nodePortMin && vs.Port <= nodePortMax
}

// The default --service-node-port-range of kube-apiserver.
const (
	nodePortMin = 30000
	nodePortMax = 32767
)

func (b *Backend) partialSync(ctx context.Context, state *proxier.State, changed map[proxier.ServicePortName]struct{}) (proxier.PortErrors, error) {
	// The virtual servers of a port whose last programming failed are looked up in the
	// kernel, in one listing for all of them.
	var inKernel map[Key]*VirtualServer
	for name := range changed {
		if !b.failed[name] || inKernel != nil {
			continue
		}
		current, err := b.ipvs.VirtualServers()
		if err != nil {
			return nil, err
		}
		inKernel = make(map[Key]*VirtualServer, len(current))
		for _, vs := range current {
			inKernel[vs.Key()] = vs
		}
	}
	failed := proxier.PortErrors{}
	broken := &brokenObjects{addrs: map[netip.Addr]error{}, entries: map[SetEntry]error{}}
	for name := range changed {
		old := b.plans[name]
		var cur *portPlan
		if sp, ok := state.Services[name]; ok {
			cur = b.plan(state, sp)
		}
		var kernel map[Key]*VirtualServer
		if b.failed[name] {
			kernel = inKernel
		}
		if err := b.replacePlan(name, old, cur, kernel, broken); err != nil {
			failed[name] = err
			b.failed[name] = true
		} else {
			// Also a deleted port whose removal failed before: what it left in the kernel
			// is no port's now, and the next full sync, every sync period, removes it.
			delete(b.failed, name)
		}
	}
	// The node drops are rules, not set members: the chain is written again, alone,
	// when they changed (or the kernel refused some last time).
	if want := sortedKeys(b.nodeDropUsers); !slices.Equal(want, b.nodeDropsWritten) {
		refused := proxier.PortErrors{}
		write := func(nodeDrops []Key) error { return b.ipt.Restore(ctx, outFilterRestore(nodeDrops)) }
		if err := b.writeNodeDrops(write, want, b.plans, refused); err != nil {
			return nil, fmt.Errorf("%s: %w", ipvsOutFilterChain, err)
		}
		for name, err := range refused {
			failed.Add(err, name)
			b.failed[name] = true
		}
	}
	return failed, nil
}

// writeNodeDrops has write put the node drops of want in the kernel (with whatever else
// write writes). When the kernel refuses them, the drops it held before and still wanted
// are written again, without the new ones, which are blamed on the ports that want them:
// a kernel without xt_ipvs then still gets every other Service, as a refused Service does
// (docs/node-contract.md). It fails when the kernel refuses that too.
func (b *Backend) writeNodeDrops(write func(nodeDrops []Key) error, want []Key, plans map[proxier.ServicePortName]*portPlan, failed proxier.PortErrors) error {
	refused := write(want)
	if refused == nil {
		b.nodeDropsWritten = want
		return nil
	}
	kept := slices.DeleteFunc(slices.Clone(want), func(k Key) bool { return !slices.Contains(b.nodeDropsWritten, k) })
	if len(kept) == len(want) {
		return refused
	}
	if err := write(kept); err != nil {
		return errors.Join(refused, err)
	}
	b.nodeDropsWritten = kept
	for _, k := range want {
		if !slices.Contains(kept, k) {
			failed.Add(refused, users(plans, func(p *portPlan) bool { return slices.Contains(p.nodeDrops, k) })...)
		}
	}
	return nil
}

// sortedKeys lists the keys with users, in a stable order for the rules.
func sortedKeys(users map[Key]int) []Key {
	var out []Key
	for k, n := range users {
		if n > 0 {
			out = append(out, k)
		}
	}
	slices.SortFunc(out, func(a, b Key) int {
		return cmp.Or(a.Address.Compare(b.Address), cmp.Compare(a.Protocol, b.Protocol), cmp.Compare(a.Port, b.Port))
	})
	return out
}

// brokenObjects are the addresses and set members that failed to go in during one sync,
// so that every port using one is blamed, not only the first to try it.
type brokenObjects struct {
	addrs   map[netip.Addr]error
	entries map[SetEntry]error
}

// replacePlan moves one ServicePort from what was programmed to what is wanted. New
// addresses are bound and set members added before their virtual servers exist (which
// wait while one of them fails), and old ones go after their virtual servers are gone.
// The users counted are those that want each object, whether it went in or not, so
// that they stay right whatever fails.
//
// inKernel, when set, is the kernel's virtual servers, for a port whose last
// programming failed part-way: nothing of old can then be trusted, so every address and
// set member of cur is applied again (both are idempotent), and its virtual servers are
// compared with the kernel's.
func (b *Backend) replacePlan(name proxier.ServicePortName, old, cur *portPlan, inKernel map[Key]*VirtualServer, broken *brokenObjects) error {
	if old == nil {
		old = &portPlan{}
	}
	if cur == nil {
		delete(b.plans, name)
		cur = &portPlan{}
	} else {
		b.plans[name] = cur
	}
	recheck := inKernel != nil
	var errs []error
	for _, a := range cur.addrs {
		if err, ok := broken.addrs[a]; ok {
			errs = append(errs, err)
		} else if b.addrUsers[a] == 0 || recheck {
			if err := b.bind(a); err != nil {
				broken.addrs[a] = err
				errs = append(errs, err)
			}
		}
		b.addrUsers[a]++
	}
	for _, e := range cur.sets {
		if err, ok := broken.entries[e]; ok {
			errs = append(errs, err)
		} else if b.setUsers[e] == 0 || recheck {
			if err := b.addEntry(e); err != nil {
				broken.entries[e] = err
				errs = append(errs, err)
			}
		}
		b.setUsers[e]++
	}
	if len(errs) == 0 {
		for _, s := range cur.servers {
			current := old.server(s.vs.Key())
			if recheck {
				current = inKernel[s.vs.Key()]
			} else if current == nil {
				current = b.left[s.vs.Key()]
			}
			errs = append(errs, b.syncVirtualServer(current, s))
		}
	}
	for _, s := range old.servers {
		if cur.server(s.vs.Key()) == nil && (!recheck || inKernel[s.vs.Key()] != nil) {
			errs = append(errs, b.deleteVirtualServer(s.vs))
		}
	}
	for _, a := range old.addrs {
		if b.addrUsers[a]--; b.addrUsers[a] <= 0 {
			delete(b.addrUsers, a)
			errs = append(errs, b.unbind(a))
		}
	}
	for _, e := range old.sets {
		if b.setUsers[e]--; b.setUsers[e] <= 0 {
			delete(b.setUsers, e)
			errs = append(errs, b.delEntry(e))
		}
	}
	// The node drops are written after every changed port is replaced (partialSync).
	for _, k := range cur.nodeDrops {
		b.nodeDropUsers[k]++
	}
	for _, k := range old.nodeDrops {
		if b.nodeDropUsers[k]--; b.nodeDropUsers[k] <= 0 {
			delete(b.nodeDropUsers, k)
		}
	}
	return errors.Join(errs...)
}

// syncVirtualServer makes the kernel's virtual server (current, nil when absent) and its
// real servers match the plan. Removed real servers drain gracefully: TCP ones get
// weight 0 (no new connections) and are deleted once their connections are gone or the
// grace period ends; UDP and SCTP ones go at once, as kube-proxy's
// IsRsGracefulTerminationNeeded decides.
func (b *Backend) syncVirtualServer(current *VirtualServer, p vsPlan) error {
	delete(b.left, p.vs.Key())
	switch {
	case current == nil:
		if err := b.ipvs.AddVirtualServer(p.vs); err != nil {
			return err
		}
		b.count("add_virtual_server")
	case *current != *p.vs:
		if err := b.ipvs.UpdateVirtualServer(p.vs); err != nil {
			return err
		}
		b.count("update_virtual_server")
	}
	reals := map[netip.AddrPort]*RealServer{}
	if current != nil {
		list, err := b.ipvs.RealServers(p.vs)
		if err != nil {
			return err
		}
		for _, r := range list {
			reals[r.Endpoint()] = r
		}
	}
	key := p.vs.Key()
	for _, ep := range p.reals {
		delete(b.terminating[key], ep)
		r := &RealServer{Address: ep.Addr(), Port: ep.Port(), Weight: 1}
		switch have, ok := reals[ep]; {
		case !ok:
			if err := b.ipvs.AddRealServer(p.vs, r); err != nil {
				return err
			}
			b.count("add_real_server")
		case have.Weight != 1:
			if err := b.ipvs.UpdateRealServer(p.vs, r); err != nil {
				return err
			}
			b.count("update_real_server")
		}
	}
	for ep, r := range reals {
		if slices.Contains(p.reals, ep) {
			continue
		}
		if p.vs.Protocol != v1.ProtocolTCP || b.cfg.TerminationGrace <= 0 {
			if err := b.ipvs.DeleteRealServer(p.vs, r); err != nil {
				return err
			}
			b.count("delete_real_server")
			continue
		}
		if r.Weight != 0 {
			r.Weight = 0
			if err := b.ipvs.UpdateRealServer(p.vs, r); err != nil {
				return err
			}
			b.count("update_real_server")
		}
		if _, waiting := b.terminating[key][ep]; !waiting {
			if b.terminating[key] == nil {
				b.terminating[key] = map[netip.AddrPort]terminating{}
			}
			b.terminating[key][ep] = terminating{vs: p.vs, rs: ep, deadline: time.Now().Add(b.cfg.TerminationGrace)}
		}
	}
	return nil
}

// deleteVirtualServer deletes a virtual server of ours, unless its address is in
// ExcludeCIDRs: kube-proxy never deletes those (cleanLegacyService), so that IPVS users
// other than the proxy can keep virtual servers there. One left keeps its real servers,
// and those draining go on draining.
func (b *Backend) deleteVirtualServer(vs *VirtualServer) error {
	if b.excluded(vs) {
		b.logger.V(4).Info("Leaving a virtual server in --ipvs-exclude-cidrs", "virtualServer", vs.Key())
		b.left[vs.Key()] = vs
		return nil
	}
	delete(b.terminating, vs.Key())
	if err := b.ipvs.DeleteVirtualServer(vs); err != nil {
		return err
	}
	b.count("delete_virtual_server")
	return nil
}

// excluded tells whether a virtual server's address is in ExcludeCIDRs.
func (b *Backend) excluded(vs *VirtualServer) bool {
	return slices.ContainsFunc(b.cfg.ExcludeCIDRs, func(p netip.Prefix) bool { return p.Contains(vs.Address) })
}

// DrainTerminating deletes the real servers whose connections have drained or whose
// grace period has ended. Run it periodically (RunDrainer).
func (b *Backend) DrainTerminating() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	var errs []error
	now := time.Now()
	for key, waiting := range b.terminating {
		var vs *VirtualServer
		for _, t := range waiting {
			vs = t.vs
			break
		}
		if vs == nil {
			delete(b.terminating, key)
			continue
		}
		reals, err := b.ipvs.RealServers(vs)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, r := range reals {
			t, ok := waiting[r.Endpoint()]
			if !ok || (r.ActiveConnections+r.InactiveConnections > 0 && now.Before(t.deadline)) {
				continue
			}
			if err := b.ipvs.DeleteRealServer(vs, r); err != nil {
				errs = append(errs, err)
				continue
			}
			b.count("delete_real_server")
			delete(waiting, r.Endpoint())
		}
		// Anything still listed as waiting but gone from the kernel needs no more work.
		for ep := range waiting {
			if !slices.ContainsFunc(reals, func(r *RealServer) bool { return r.Endpoint() == ep }) {
				delete(waiting, ep)
			}
		}
		if len(waiting) == 0 {
			delete(b.terminating, key)
		}
	}
	return errors.Join(errs...)
}

// RunDrainer calls DrainTerminating every interval until ctx ends.
func (b *Backend) RunDrainer(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := b.DrainTerminating(); err != nil {
				b.logger.Error(err, "Draining terminating real servers")
			}
		}
	}
}

func (b *Backend) bind(a netip.Addr) error {
	if err := b.dev.Bind(a); err != nil {
		return err
	}
	b.count("bind_address")
	return nil
}

func (b *Backend) unbind(a netip.Addr) error {
	if err := b.dev.Unbind(a); err != nil {
		return err
	}
	b.count("unbind_address")
	return nil
}

func (b *Backend) addEntry(e SetEntry) error {
	if err := b.sets.Add(e); err != nil {
		return err
	}
	b.count("add_ipset_entry")
	return nil
}

func (b *Backend) delEntry(e SetEntry) error {
	if err := b.sets.Del(e); err != nil {
		return err
	}
	b.count("delete_ipset_entry")
	return nil
}

func (b *Backend) count(op string) { b.operations.WithLabelValues(op).Inc() }

const (
	// ipvsFilterChain closes the ports of Service addresses that are not Service ports,
	// and drops what the sets say must not reach IPVS.
	ipvsFilterChain = iptables.ChainPrefix + "IPVS-FILTER"
	// ipvsOutFilterChain drops the node's own connections to the load-balancer entry
	// points whose source ranges do not admit it (kube-proxy's KUBE-IPVS-OUT-FILTER).
	ipvsOutFilterChain = iptables.ChainPrefix + "IPVS-OUT-FILTER"
)

// outFilterRules are SWYD-IPVS-OUT-FILTER's rules for the node drops. A connection the node
// opens to a Service address bound on kube-ipvs0 has that address as its source, and IPVS
// takes it (in OUTPUT, before the filter table) and sends it on to a real server: filter
// OUTPUT sees it then, addressed to the real server, and the ipvs match (xt_ipvs) tells
// which virtual server it is for.
func outFilterRules(nodeDrops []Key) []string {
	var rules []string
	for _, k := range nodeDrops {
		rules = append(rules, fmt.Sprintf(`-m comment --comment "switchyard loadBalancerSourceRanges do not admit the node" -s %s -m ipvs --vaddr %s --vproto %s --vport %d -j DROP`,
			k.Address, k.Address, strings.ToLower(string(k.Protocol)), k.Port))
	}
	return rules
}

// outFilterRestore rewrites SWYD-IPVS-OUT-FILTER alone, as a partial sync does.
//
// Equivalent to: `iptables-restore --noflush` of the chain
func outFilterRestore(nodeDrops []Key) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "*%s\n:%s - [0:0]\n", iptables.TableFilter, ipvsOutFilterChain)
	for _, r := range outFilterRules(nodeDrops) {
		fmt.Fprintf(&b, "-A %s %s\n", ipvsOutFilterChain, r)
	}
	b.WriteString("COMMIT\n")
	return []byte(b.String())
}

// ruleset is the small set of iptables rules IPVS mode needs, with the node drops given.
// Nothing else in it changes with Services (those change set members), so it is written
// on full syncs only; partial syncs rewrite SWYD-IPVS-OUT-FILTER alone, when the node
// drops change.
func (b *Backend) ruleset(nodeDrops []Key) iptables.Ruleset {
	mark := b.cfg.MasqueradeMark
	set := ipsets{ipv6: b.cfg.IPv6}.name
	var services []string
	switch {
	case b.cfg.MasqueradeAll:
		services = append(services, fmt.Sprintf(`-m comment --comment "switchyard service traffic requiring SNAT" -m set --match-set %s dst,dst -j %s`, set(clusterIPSet), iptables.MarkMasqChain))
	case b.cfg.ClusterCIDR.IsValid():
		services = append(services, fmt.Sprintf(`-m comment --comment "switchyard service traffic requiring SNAT" -m set --match-set %s dst,dst ! -s %s -j %s`, set(clusterIPSet), b.cfg.ClusterCIDR, iptables.MarkMasqChain))
	default:
		// Cluster IPs are local addresses here, so the node's own connections to one
		// leave with the cluster IP as their source, which a remote endpoint would answer
		// to itself: masquerade those, as kube-proxy's IPVS mode does without a local
		// traffic detector.
		services = append(services, fmt.Sprintf(`-m comment --comment "switchyard service traffic from a service address requiring SNAT" -m set --match-set %s src,dst -j %s`, set(clusterIPSet), iptables.MarkMasqChain))
	}
	services = append(services,
		fmt.Sprintf(`-m comment --comment "switchyard external traffic requiring SNAT" -m set --match-set %s dst,dst -j %s`, set(externalSet), iptables.MarkMasqChain))
	// The node's own connections to the external entry points of a Local Service without
	// a local endpoint go to the cluster's endpoints (Resolution.ExternalFromNode). To an
	// address bound on kube-ipvs0 their source is that address, which every node of the
	// cluster binds too, so a remote endpoint's reply would end on its own node: those
	// are masqueraded (kube-proxy's IPVS mode leaves them unmarked and loses the reply;
	// node-contract.md). To a NodePort or a node address the source is the node's
	// address, which the reply finds its way back to; kube-proxy's IPVS mode keeps it,
	// and so does this rule. With a local endpoint the virtual server holds only local
	// ones, whose replies come back through this node: never masqueraded, as kube-proxy's
	// KUBE-EXTERNAL-IP-LOCAL and KUBE-NODE-PORT-LOCAL members are never marked.
	services = append(services, fmt.Sprintf(`-m comment --comment "switchyard LOCAL traffic to external destinations requiring SNAT" -m set --match-set %s src -m set --match-set %s dst,dst -j %s`, set(serviceIPsSet), set(externalNoLocalSet), iptables.MarkMasqChain))
	servicePortSets := []string{set(clusterIPSet), set(externalSet), set(externalLocalSet), set(externalNoLocalSet)}
	// IPVS takes it from here; skip the rest of nat for Service traffic.
	for _, s := range servicePortSets {
		services = append(services, fmt.Sprintf(`-m comment --comment "switchyard service traffic" -m set --match-set %s dst,dst -j ACCEPT`, s))
	}
	hairpin := fmt.Sprintf(`-m comment --comment "switchyard hairpin traffic" -m set --match-set %s dst,dst,src -j MASQUERADE`, set(loopbackSet))
	// INPUT sees Service traffic before IPVS does (IPVS hooks in after the filter table).
	filter := []string{
		fmt.Sprintf(`-m comment --comment "switchyard loadBalancerSourceRanges" -m set --match-set %s dst,dst -m set ! --match-set %s dst,dst,src -j DROP`, set(loadBalancerFirewallSet), set(loadBalancerSourceSet)),
		fmt.Sprintf(`-m comment --comment "switchyard traffic policy Local without local endpoints" -m set --match-set %s dst,dst -j DROP`, set(noLocalEndpointsSet)),
	}
	// Without a local endpoint, only pods (told apart by the cluster CIDR) and the node
	// (which IPVS serves before INPUT) reach the endpoints of the cluster.
	fromOffNode := ""
	if b.cfg.ClusterCIDR.IsValid() {
		fromOffNode = fmt.Sprintf(" ! -s %s", b.cfg.ClusterCIDR)
	}
	filter = append(filter, fmt.Sprintf(`-m comment --comment "switchyard externalTrafficPolicy Local without local endpoints" -m set --match-set %s dst,dst%s -j DROP`, set(externalNoLocalSet), fromOffNode),
		// On every address, Service addresses included, and before the reject of their
		// other ports: kube-proxy returns these from KUBE-IPVS-FILTER and accepts them in
		// its KUBE-NODE-PORT chain.
		fmt.Sprintf(`-m comment --comment "switchyard health check node ports" -m set --match-set %s dst -j ACCEPT`, set(healthCheckNodePortSet)))
	for _, s := range servicePortSets {
		filter = append(filter, fmt.Sprintf(`-m comment --comment "switchyard service ports" -m set --match-set %s dst,dst -j RETURN`, s))
	}
	filter = append(filter, fmt.Sprintf(`-m comment --comment "switchyard other ports of service addresses" -m conntrack --ctstate NEW -m set --match-set %s dst -j REJECT`, set(serviceIPsSet)))
	return iptables.Ruleset{
		Chains: map[iptables.Table][]iptables.Chain{
			iptables.TableNAT:    append([]iptables.Chain{{Name: iptables.ServicesChain, Rules: services}}, iptables.MasqueradeChains(mark, hairpin)...),
			iptables.TableFilter: {iptables.ForwardChainRules(mark, false), {Name: ipvsFilterChain, Rules: filter}, {Name: ipvsOutFilterChain, Rules: outFilterRules(nodeDrops)}},
		},
		Hooks: append(iptables.CommonHooks(),
			iptables.Hook{Table: iptables.TableFilter, Chain: "INPUT",
				Rule: []string{"-m", "comment", "--comment", "switchyard ipvs access filter", "-j", ipvsFilterChain}},
			iptables.Hook{Table: iptables.TableFilter, Chain: "OUTPUT",
				Rule: []string{"-m", "comment", "--comment", "switchyard ipvs access filter", "-j", ipvsOutFilterChain}}),
	}
}

// Cleanup removes everything IPVS mode owns: virtual servers on addresses we bound, those
// addresses, our iptables rules and our ipsets. Virtual servers and addresses that are not
// ours are left alone. It is idempotent.
func Cleanup(ctx context.Context, ipvs Interface, ipt iptables.Interface, deviceName string) error {
	if err := iptables.Cleanup(ctx, ipt); err != nil {
		return err
	}
	return CleanupKernel(ipvs, deviceName)
}

// CleanupKernel removes what IPVS mode owns outside iptables: our virtual servers, our
// addresses and the dummy device once it is empty, and our ipsets. iptables mode runs it
// after its first full sync, which has removed IPVS mode's rules, the sets' last users.
func CleanupKernel(ipvs Interface, deviceName string) error {
	var errs []error
	if dev, err := dummy.Lookup(deviceName); err != nil {
		errs = append(errs, err)
	} else if dev != nil {
		bound, err := dev.Addresses()
		if err != nil {
			return err
		}
		current, err := ipvs.VirtualServers()
		if err != nil {
			return err
		}
		for _, vs := range current {
			if bound[vs.Address] {
				errs = append(errs, ipvs.DeleteVirtualServer(vs))
			}
		}
		for a := range bound {
			errs = append(errs, dev.Unbind(a))
		}
		errs = append(errs, dev.DeleteIfUnused())
	}
	errs = append(errs, destroySets())
	return errors.Join(errs...)
}
