// Package ipvs is the IPVS backend: every Service address becomes an IPVS virtual server
// whose real servers are the eligible endpoints, the address is bound on the kube-ipvs0
// dummy device, and a small fixed set of iptables rules (matching ipsets kept over
// netlink) handles masquerading and closes the ports of Service addresses that are not
// Service ports.
package ipvs

import (
	"fmt"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	mobyipvs "github.com/moby/ipvs"
	v1 "k8s.io/api/core/v1"
)

// VirtualServer is an IPVS service: one Service address, protocol and port.
type VirtualServer struct {
	Address   netip.Addr
	Protocol  v1.Protocol
	Port      uint16
	Scheduler string
	// AffinityTimeout, when non-zero, makes the virtual server persistent: a client keeps
	// going to the same real server until this many seconds pass without traffic.
	AffinityTimeout uint32
}

// Key identifies a virtual server in the kernel.
type Key struct {
	Address  netip.Addr
	Protocol v1.Protocol
	Port     uint16
}

// Key is the virtual server's identity.
func (v *VirtualServer) Key() Key { return Key{v.Address, v.Protocol, v.Port} }

func (k Key) String() string {
	return fmt.Sprintf("%s/%s", netip.AddrPortFrom(k.Address, k.Port), k.Protocol)
}

// RealServer is an IPVS destination: one endpoint of a virtual server.
type RealServer struct {
	Address             netip.Addr
	Port                uint16
	Weight              int
	ActiveConnections   int
	InactiveConnections int
}

// Endpoint is the real server's identity within its virtual server.
func (r *RealServer) Endpoint() netip.AddrPort { return netip.AddrPortFrom(r.Address, r.Port) }

// Timeouts are IPVS's connection timeouts, which apply to every virtual server of the
// network namespace. The kernel keeps them in whole seconds, and leaves one given as 0 as
// it is.
type Timeouts struct {
	// TCP is how long an idle established TCP connection is kept, TCPFin one that has
	// seen a FIN, UDP an idle UDP flow.
	TCP, TCPFin, UDP time.Duration
}

// Interface is the backend's boundary to the kernel's IP Virtual Server table.
// Implementations must be safe for concurrent use.
type Interface interface {
	// VirtualServers lists every virtual server, ours or not.
	// Equivalent to: `ipvsadm -Ln`
	VirtualServers() ([]*VirtualServer, error)
	// AddVirtualServer equivalent: `ipvsadm -A -t ADDR:PORT -s SCHED [-p TIMEOUT]`
	AddVirtualServer(*VirtualServer) error
	// UpdateVirtualServer equivalent: `ipvsadm -E -t ADDR:PORT -s SCHED [-p TIMEOUT]`
	UpdateVirtualServer(*VirtualServer) error
	// DeleteVirtualServer equivalent: `ipvsadm -D -t ADDR:PORT`
	DeleteVirtualServer(*VirtualServer) error
	// RealServers equivalent: `ipvsadm -Ln -t ADDR:PORT`
	RealServers(*VirtualServer) ([]*RealServer, error)
	// AddRealServer equivalent: `ipvsadm -a -t ADDR:PORT -r RADDR:RPORT -m -w WEIGHT`
	AddRealServer(*VirtualServer, *RealServer) error
	// UpdateRealServer equivalent: `ipvsadm -e -t ADDR:PORT -r RADDR:RPORT -m -w WEIGHT`
	UpdateRealServer(*VirtualServer, *RealServer) error
	// DeleteRealServer equivalent: `ipvsadm -d -t ADDR:PORT -r RADDR:RPORT`
	DeleteRealServer(*VirtualServer, *RealServer) error
	// ConfigureTimeouts equivalent: `ipvsadm --set TCP TCPFIN UDP` (in seconds)
	ConfigureTimeouts(Timeouts) error
}

// Flags of an IPVS service (include/uapi/linux/ip_vs.h).
const (
	flagPersistent = 0x1
	// flagHashed is set by the kernel on every service it reports; it is not ours to set.
	flagHashed = 0x2
	// flagSourcePortHash is IP_VS_SVC_F_SCHED2: the mh scheduler hashes the source port too.
	flagSourcePortHash = 0x10
)

type kernel struct {
	// mu serialises calls: a moby/ipvs handle shares one netlink socket.
	mu     sync.Mutex
	handle *mobyipvs.Handle
}

// New opens the IPVS table of the current network namespace.
func New() (Interface, error) {
	h, err := mobyipvs.New("")
	if err != nil {
		return nil, fmt.Errorf("opening IPVS over netlink (is the ip_vs kernel module loaded?): %w", err)
	}
	return &kernel{handle: h}, nil
}

var protocols = map[v1.Protocol]uint16{v1.ProtocolTCP: syscall.IPPROTO_TCP, v1.ProtocolUDP: syscall.IPPROTO_UDP, v1.ProtocolSCTP: syscall.IPPROTO_SCTP}

func toService(v *VirtualServer) *mobyipvs.Service {
	s := &mobyipvs.Service{
		Address:       net.IP(v.Address.AsSlice()),
		Protocol:      protocols[v.Protocol],
		Port:          v.Port,
		SchedName:     v.Scheduler,
		AddressFamily: syscall.AF_INET,
		Netmask:       0xffffffff,
	}
	if v.Address.Is6() {
		s.AddressFamily, s.Netmask = syscall.AF_INET6, 128
	}
	if v.AffinityTimeout > 0 {
		s.Flags, s.Timeout = flagPersistent, v.AffinityTimeout
	}
	if v.Scheduler == "mh" {
		// Maglev hashing on the source port as well as the address, so one client's
		// connections spread over the endpoints, as kube-proxy sets it.
		s.Flags |= flagSourcePortHash
	}
	return s
}

func fromService(s *mobyipvs.Service) (*VirtualServer, bool) {
	addr, ok := netip.AddrFromSlice(s.Address)
	if !ok || s.FWMark != 0 {
		return nil, false // firewall-mark services are never ours
	}
	v := &VirtualServer{Address: addr.Unmap(), Port: s.Port, Scheduler: s.SchedName}
	for name, number := range protocols {
		if number == s.Protocol {
			v.Protocol = name
		}
	}
	if s.Flags&^flagHashed&flagPersistent != 0 {
		v.AffinityTimeout = s.Timeout
	}
	return v, v.Protocol != ""
}

func toDestination(r *RealServer) *mobyipvs.Destination {
	d := &mobyipvs.Destination{
		Address:         net.IP(r.Address.AsSlice()),
		Port:            r.Port,
		Weight:          r.Weight,
		ConnectionFlags: mobyipvs.ConnectionFlagMasq,
		AddressFamily:   syscall.AF_INET,
	}
	if r.Address.Is6() {
		d.AddressFamily = syscall.AF_INET6
	}
	return d
}

func (k *kernel) VirtualServers() ([]*VirtualServer, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	svcs, err := k.handle.GetServices()
	if err != nil {
		return nil, fmt.Errorf("listing IPVS services: %w", err)
	}
	out := make([]*VirtualServer, 0, len(svcs))
	for _, s := range svcs {
		if v, ok := fromService(s); ok {
			out = append(out, v)
		}
	}
	return out, nil
}

func (k *kernel) AddVirtualServer(v *VirtualServer) error {
	return k.do("adding IPVS service "+v.Key().String(), func() error { return k.handle.NewService(toService(v)) })
}

func (k *kernel) UpdateVirtualServer(v *VirtualServer) error {
	return k.do("updating IPVS service "+v.Key().String(), func() error { return k.handle.UpdateService(toService(v)) })
}

func (k *kernel) DeleteVirtualServer(v *VirtualServer) error {
	return k.do("deleting IPVS service "+v.Key().String(), func() error { return k.handle.DelService(toService(v)) })
}

func (k *kernel) RealServers(v *VirtualServer) ([]*RealServer, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	dsts, err := k.handle.GetDestinations(toService(v))
	if err != nil {
		return nil, fmt.Errorf("listing real servers of %s: %w", v.Key(), err)
	}
	out := make([]*RealServer, 0, len(dsts))
	for _, d := range dsts {
		addr, ok := netip.AddrFromSlice(d.Address)
		if !ok {
			continue
		}
		out = append(out, &RealServer{Address: addr.Unmap(), Port: d.Port, Weight: d.Weight,
			ActiveConnections: d.ActiveConnections, InactiveConnections: d.InactiveConnections})
	}
	return out, nil
}

func (k *kernel) AddRealServer(v *VirtualServer, r *RealServer) error {
	return k.do(fmt.Sprintf("adding real server %s to %s", r.Endpoint(), v.Key()), func() error {
		return k.handle.NewDestination(toService(v), toDestination(r))
	})
}

func (k *kernel) UpdateRealServer(v *VirtualServer, r *RealServer) error {
	return k.do(fmt.Sprintf("updating real server %s of %s", r.Endpoint(), v.Key()), func() error {
		return k.handle.UpdateDestination(toService(v), toDestination(r))
	})
}

func (k *kernel) DeleteRealServer(v *VirtualServer, r *RealServer) error {
	return k.do(fmt.Sprintf("deleting real server %s from %s", r.Endpoint(), v.Key()), func() error {
		return k.handle.DelDestination(toService(v), toDestination(r))
	})
}

func (k *kernel) ConfigureTimeouts(t Timeouts) error {
	return k.do("setting the IPVS timeouts", func() error {
		return k.handle.SetConfig(&mobyipvs.Config{TimeoutTCP: t.TCP, TimeoutTCPFin: t.TCPFin, TimeoutUDP: t.UDP})
	})
}

func (k *kernel) do(what string, fn func() error) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := fn(); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}
