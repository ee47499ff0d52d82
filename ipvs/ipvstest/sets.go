package ipvstest

import (
	"fmt"
	"maps"
	"net/netip"
	"strings"
	"sync"

	"github.com/switchyard/switchyard/iptables/iptablestest"
	"github.com/switchyard/switchyard/ipvs"
)

// Sets are the IPVS backend's ipsets of one IP family, implementing ipvs.Sets: the
// members it adds, under the names the rules it writes use. It is also an
// iptablestest.Sets, so the tracer answers those rules' `-m set` matches from it. It is
// safe for concurrent use.
type Sets struct {
	mu      sync.Mutex
	members map[ipvs.SetEntry]bool
}

// NewSets returns sets without members.
func NewSets() *Sets { return &Sets{members: map[ipvs.SetEntry]bool{}} }

// Ensure is part of ipvs.Sets: the fake's sets always exist.
func (s *Sets) Ensure() error { return nil }

// List is part of ipvs.Sets.
func (s *Sets) List() (map[ipvs.SetEntry]bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.members), nil
}

// Add is part of ipvs.Sets.
func (s *Sets) Add(e ipvs.SetEntry) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.members[e] = true
	return nil
}

// Del is part of ipvs.Sets.
func (s *Sets) Del(e ipvs.SetEntry) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.members, e)
	return nil
}

// Match is part of iptablestest.Sets: whether the set named holds the member that flags
// select from p, one flag (src or dst) for each dimension of the set's type, as
// `-m set --match-set NAME FLAGS` takes them. A hash:ip,port,net set holds the member
// when one of its nets contains the address. A bitmap:port set holds ports alone, which
// the kernel finds in TCP and UDP packets only (ip_set_get_ip_port). What the fake cannot
// answer (an unknown set or type, flags that do not fit the type) is an error, never a
// miss.
func (s *Sets) Match(name, flags string, p iptablestest.Packet) (bool, error) {
	set, typ, ok := ipvs.SetByName(name)
	if !ok {
		return false, fmt.Errorf("no ipset %s", name)
	}
	kind, dimensions, _ := strings.Cut(typ, ":")
	if kind != "hash" && typ != "bitmap:port" {
		return false, fmt.Errorf("ipset %s: the fake does not know the type %s", name, typ)
	}
	dims, dirs := strings.Split(dimensions, ","), strings.Split(flags, ",")
	if len(dirs) != len(dims) {
		return false, fmt.Errorf("ipset %s of type %s matched with the flags %s", name, typ, flags)
	}
	want := ipvs.SetEntry{Set: set}
	var inNet netip.Addr
	for i, dim := range dims {
		addr := p.Dst.Addr()
		switch dirs[i] {
		case "dst":
		case "src":
			addr = p.Src
		default:
			return false, fmt.Errorf("ipset %s: unknown flag %q in %s", name, dirs[i], flags)
		}
		switch {
		case dim == "port" && dirs[i] == "src":
			return false, fmt.Errorf("ipset %s: the tracer's packets have no source port (flags %s)", name, flags)
		case dim == "port" && kind == "bitmap":
			if p.Protocol != "tcp" && p.Protocol != "udp" {
				return false, nil
			}
			want.Port = p.Dst.Port()
		case dim == "port":
			want.Protocol, want.Port = kubeProtocol(p.Protocol), p.Dst.Port()
		case dim == "ip" && i == 0:
			want.IP = addr
		case dim == "ip":
			want.IP2 = addr
		case dim == "net":
			inNet = addr
		default:
			return false, fmt.Errorf("ipset %s: the fake does not know the type %s", name, typ)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !inNet.IsValid() {
		return s.members[want], nil
	}
	for e := range s.members {
		net := e.Net
		e.Net = netip.Prefix{}
		if e == want && net.Contains(inNet) {
			return true, nil
		}
	}
	return false, nil
}
