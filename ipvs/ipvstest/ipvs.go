// Package ipvstest holds stateful fakes of the IPVS backend's kernel boundaries, for the
// tests of any package: IPVS is the virtual server table (ipvs.Interface), Device is
// kube-ipvs0 with the node's own addresses (ipvs.Device), and Sets are the ipsets
// (ipvs.Sets). Like iptablestest.Fake, they are not call recorders: they hold what the
// kernel would hold and refuse what it refuses, so tests assert on the resulting state,
// and Node.Trace follows packets through them as the kernel would.
package ipvstest

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/switchyard/switchyard/ipvs"
)

// IPVS is a stateful IP Virtual Server table implementing ipvs.Interface: virtual
// servers by key, each with its real servers. It refuses what the kernel refuses (adding
// what exists, changing or deleting what does not) with the kernel's errno. It is also an
// iptablestest.IPVS, so the tracer sends connections through it. It is safe for
// concurrent use.
type IPVS struct {
	mu       sync.Mutex
	servers  map[ipvs.Key]*ipvs.VirtualServer
	reals    map[ipvs.Key]map[netip.AddrPort]*ipvs.RealServer
	timeouts ipvs.Timeouts
}

// DefaultTimeouts are the connection timeouts IPVS starts with (include/net/ip_vs.h, the
// TCP ESTABLISHED and FIN_WAIT states, and UDP).
var DefaultTimeouts = ipvs.Timeouts{TCP: 15 * time.Minute, TCPFin: 2 * time.Minute, UDP: 5 * time.Minute}

// NewIPVS returns an empty table with the kernel's default timeouts.
func NewIPVS() *IPVS {
	return &IPVS{servers: map[ipvs.Key]*ipvs.VirtualServer{}, reals: map[ipvs.Key]map[netip.AddrPort]*ipvs.RealServer{}, timeouts: DefaultTimeouts}
}

// VirtualServers is part of ipvs.Interface. The callers get copies, as from the kernel:
// changing one changes nothing in the table.
func (f *IPVS) VirtualServers() ([]*ipvs.VirtualServer, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*ipvs.VirtualServer
	for _, v := range f.servers {
		c := *v
		out = append(out, &c)
	}
	return out, nil
}

// AddVirtualServer is part of ipvs.Interface.
func (f *IPVS) AddVirtualServer(v *ipvs.VirtualServer) error { return f.setServer("adding", v, true) }

// UpdateVirtualServer is part of ipvs.Interface.
func (f *IPVS) UpdateVirtualServer(v *ipvs.VirtualServer) error {
	return f.setServer("updating", v, false)
}

// setServer adds (add) or replaces (!add) a virtual server, refusing, as the kernel does,
// a duplicate add (EEXIST) or an update of a missing one (ESRCH). A new one has no real
// servers.
func (f *IPVS) setServer(op string, v *ipvs.VirtualServer, add bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch _, exists := f.servers[v.Key()]; {
	case exists && add:
		return fmt.Errorf("%s virtual server %s: %w", op, v.Key(), syscall.EEXIST)
	case !exists && !add:
		return fmt.Errorf("%s virtual server %s: %w", op, v.Key(), syscall.ESRCH)
	}
	if add {
		f.reals[v.Key()] = map[netip.AddrPort]*ipvs.RealServer{}
	}
	c := *v
	f.servers[v.Key()] = &c
	return nil
}

// DeleteVirtualServer is part of ipvs.Interface. Its real servers go with it.
func (f *IPVS) DeleteVirtualServer(v *ipvs.VirtualServer) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.servers[v.Key()]; !ok {
		return fmt.Errorf("deleting virtual server %s: %w", v.Key(), syscall.ESRCH)
	}
	delete(f.servers, v.Key())
	delete(f.reals, v.Key())
	return nil
}

// RealServers is part of ipvs.Interface. Only v's key counts, so a VirtualServer holding
// just the address, protocol and port lists one. Listing those of a virtual server that
// does not exist is an error.
func (f *IPVS) RealServers(v *ipvs.VirtualServer) ([]*ipvs.RealServer, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	rs, ok := f.reals[v.Key()]
	if !ok {
		return nil, fmt.Errorf("listing the real servers of %s: no such virtual server", v.Key())
	}
	var out []*ipvs.RealServer
	for _, r := range rs {
		c := *r
		out = append(out, &c)
	}
	return out, nil
}

// AddRealServer is part of ipvs.Interface.
func (f *IPVS) AddRealServer(v *ipvs.VirtualServer, r *ipvs.RealServer) error {
	return f.setReal("adding", v, r, true)
}

// UpdateRealServer is part of ipvs.Interface.
func (f *IPVS) UpdateRealServer(v *ipvs.VirtualServer, r *ipvs.RealServer) error {
	return f.setReal("updating", v, r, false)
}

// setReal adds (add) or replaces (!add) a real server of a virtual server that exists,
// refusing, as the kernel does, a duplicate add (EEXIST) or an update of a missing one
// (ENOENT).
func (f *IPVS) setReal(op string, v *ipvs.VirtualServer, r *ipvs.RealServer, add bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	rs, ok := f.reals[v.Key()]
	if !ok {
		return fmt.Errorf("%s real server %s of %s: %w", op, r.Endpoint(), v.Key(), syscall.ESRCH)
	}
	switch _, exists := rs[r.Endpoint()]; {
	case exists && add:
		return fmt.Errorf("%s real server %s of %s: %w", op, r.Endpoint(), v.Key(), syscall.EEXIST)
	case !exists && !add:
		return fmt.Errorf("%s real server %s of %s: %w", op, r.Endpoint(), v.Key(), syscall.ENOENT)
	}
	c := *r
	rs[r.Endpoint()] = &c
	return nil
}

// DeleteRealServer is part of ipvs.Interface.
func (f *IPVS) DeleteRealServer(v *ipvs.VirtualServer, r *ipvs.RealServer) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.reals[v.Key()][r.Endpoint()]; !ok {
		return fmt.Errorf("deleting real server %s of %s: %w", r.Endpoint(), v.Key(), syscall.ENOENT)
	}
	delete(f.reals[v.Key()], r.Endpoint())
	return nil
}

// ConfigureTimeouts is part of ipvs.Interface. As through moby/ipvs and the kernel, each
// timeout is kept in whole seconds (truncated), and one that is 0 is left as it is.
func (f *IPVS) ConfigureTimeouts(t ipvs.Timeouts) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	set := func(cur *time.Duration, given time.Duration) {
		if whole := given.Truncate(time.Second); whole > 0 {
			*cur = whole
		}
	}
	set(&f.timeouts.TCP, t.TCP)
	set(&f.timeouts.TCPFin, t.TCPFin)
	set(&f.timeouts.UDP, t.UDP)
	return nil
}

// Timeouts are the connection timeouts the table holds.
//
// Equivalent to: `ipvsadm -L --timeout`
func (f *IPVS) Timeouts() ipvs.Timeouts {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.timeouts
}

// Lookup is part of iptablestest.IPVS. IPVS schedules new connections to the real servers
// of weight above 0 only: those of weight 0 are draining. They come sorted, so that a
// trace's results have a stable order.
func (f *IPVS) Lookup(protocol string, dst netip.AddrPort) ([]netip.AddrPort, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	key := ipvs.Key{Address: dst.Addr(), Protocol: kubeProtocol(protocol), Port: dst.Port()}
	if _, ok := f.servers[key]; !ok {
		return nil, false
	}
	var reals []netip.AddrPort
	for ep, r := range f.reals[key] {
		if r.Weight > 0 {
			reals = append(reals, ep)
		}
	}
	slices.SortFunc(reals, netip.AddrPort.Compare)
	return reals, true
}

// kubeProtocol is the protocol iptables spells "tcp" as Kubernetes spells it.
func kubeProtocol(protocol string) v1.Protocol { return v1.Protocol(strings.ToUpper(protocol)) }
