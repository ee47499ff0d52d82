package ipvs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"

	"github.com/switchyard/switchyard/iptables"
)

// The ipsets this mode owns. The static iptables rules match against them, so that adding
// or removing a Service changes set members over netlink and never the rules.
const (
	// clusterIPSet holds clusterIP,proto:port of every Service port: traffic to these is
	// load-balanced by IPVS (and masqueraded from outside the cluster CIDR).
	clusterIPSet = iptables.ChainPrefix + "CLUSTER-IP"
	// loopbackSet holds endpoint,proto:port,endpoint: a pod reaching itself through its
	// own Service, which must be masqueraded (hairpin).
	loopbackSet = iptables.ChainPrefix + "LOOP-BACK"
	// serviceIPsSet holds every address bound on kube-ipvs0: new connections to those on
	// ports that are not Service ports are rejected, so host processes never answer there.
	serviceIPsSet = iptables.ChainPrefix + "IPVS-IPS"
	// externalSet holds address,proto:port of the external entry points (external IPs,
	// load-balancer IPs, node addresses with NodePorts) of Services with
	// externalTrafficPolicy Cluster: their traffic is masqueraded.
	externalSet = iptables.ChainPrefix + "EXTERNAL"
	// externalLocalSet holds the same for externalTrafficPolicy Local: not masqueraded.
	externalLocalSet = iptables.ChainPrefix + "EXTERNAL-LOCAL"
	// noLocalEndpointsSet holds the cluster IP,proto:port of Services with
	// internalTrafficPolicy Local while this node has no endpoint (but others do): their
	// traffic is dropped, not refused, as in iptables mode. It applies to traffic that
	// enters the node (from pods or outside); the node's own connections are refused by
	// IPVS, which sees them before any filter rule.
	noLocalEndpointsSet = iptables.ChainPrefix + "NO-LOCAL-ENDPOINTS"
	// externalNoLocalSet holds the external entry points of Services with
	// externalTrafficPolicy Local while this node has no endpoint but others do: clients
	// from outside the cluster are dropped, while pods and the node itself reach any
	// endpoint through the virtual server (kube-proxy's short-circuit; its IPVS mode also
	// gives them the cluster's endpoints, kubernetes#97081).
	externalNoLocalSet = iptables.ChainPrefix + "EXTERNAL-NO-LOCAL"
	// loadBalancerFirewallSet holds the load-balancer IP,proto:port that have
	// loadBalancerSourceRanges; loadBalancerSourceSet holds IP,proto:port,range for each
	// allowed range. Traffic to the first from outside the second is dropped.
	loadBalancerFirewallSet = iptables.ChainPrefix + "LB-FW"
	loadBalancerSourceSet   = iptables.ChainPrefix + "LB-SOURCE"
	// healthCheckNodePortSet holds the healthCheckNodePort of every Service that has one
	// (a port only, like kube-proxy's KUBE-HEALTH-CHECK-NODE-PORT): connections to it are
	// accepted on every address of the node, so that a load balancer's health check gets
	// its answer even where INPUT's policy drops. The kernel matches a bitmap:port member
	// for TCP and UDP only.
	healthCheckNodePortSet = iptables.ChainPrefix + "HEALTH-CHECK-NODE-PORT"
)

var setTypes = map[string]string{
	clusterIPSet:            "hash:ip,port",
	loopbackSet:             "hash:ip,port,ip",
	serviceIPsSet:           "hash:ip",
	externalSet:             "hash:ip,port",
	externalLocalSet:        "hash:ip,port",
	noLocalEndpointsSet:     "hash:ip,port",
	externalNoLocalSet:      "hash:ip,port",
	loadBalancerFirewallSet: "hash:ip,port",
	loadBalancerSourceSet:   "hash:ip,port,net",
	healthCheckNodePortSet:  "bitmap:port",
}

// SetEntry is one member of one of our sets.
type SetEntry struct {
	// Set is the set's name as the IPv4 sets have it (SWYD-CLUSTER-IP, ...): the IPv6
	// set of the same name, with "-6" appended, holds the IPv6 members.
	Set      string
	IP       netip.Addr  // invalid for bitmap:port
	Protocol v1.Protocol // "" for hash:ip and bitmap:port
	Port     uint16
	IP2      netip.Addr   // only for hash:ip,port,ip
	Net      netip.Prefix // only for hash:ip,port,net
}

var ipProtocols = map[v1.Protocol]uint8{v1.ProtocolTCP: syscall.IPPROTO_TCP, v1.ProtocolUDP: syscall.IPPROTO_UDP, v1.ProtocolSCTP: syscall.IPPROTO_SCTP}

func (e SetEntry) toNetlink() *netlink.IPSetEntry {
	n := &netlink.IPSetEntry{IP: net.IP(e.IP.AsSlice())}
	if e.Protocol != "" {
		proto, port := ipProtocols[e.Protocol], e.Port
		n.Protocol, n.Port = &proto, &port
	}
	if e.IP2.IsValid() {
		n.IP2 = net.IP(e.IP2.AsSlice())
	}
	if e.Net.IsValid() {
		n.IP2, n.CIDR2 = net.IP(e.Net.Addr().AsSlice()), uint8(e.Net.Bits())
	}
	return n
}

// Sets is the backend's boundary to the kernel's ipsets: the members of our sets of one
// IP family, which the static iptables rules match against. The backend reaches them
// through this interface so that its whole Sync runs against a stateful fake in unit
// tests (ipvs/ipvstest); the kernel's are kept over netlink.
type Sets interface {
	// Ensure creates our sets when missing.
	Ensure() error
	// List returns every member of our sets.
	List() (map[SetEntry]bool, error)
	// Add adds a member; adding one that is there is not an error.
	Add(SetEntry) error
	// Del deletes a member; deleting one that is not there is not an error.
	Del(SetEntry) error
}

// SetByName finds one of our sets by its name in the kernel, as the rules name it in
// `-m set --match-set NAME` (an IPv6 set's ends in "-6"): set is the name its members
// carry in SetEntry.Set, and typ its ipset type, as `ipset create NAME TYPE` takes it.
// It is how a fake of the kernel's ipsets reads the rules the backend writes.
func SetByName(name string) (set, typ string, ok bool) {
	for _, family := range []ipsets{{ipv6: false}, {ipv6: true}} {
		for s, t := range setTypes {
			if family.name(s) == name {
				return s, t, true
			}
		}
	}
	return "", "", false
}

// ipsets is our sets for one IP family. The IPv4 sets have the names above; the IPv6
// ones the same names with "-6" appended (an ipset holds one family).
type ipsets struct{ ipv6 bool }

// name is the kernel's name of one of our sets in this family.
func (s ipsets) name(set string) string {
	if s.ipv6 {
		return set + "-6"
	}
	return set
}

func (s ipsets) family() uint8 {
	if s.ipv6 {
		return syscall.AF_INET6
	}
	return syscall.AF_INET
}

// Ensure is part of Sets.
//
// Equivalent to: `ipset create SWYD-CLUSTER-IP hash:ip,port [family inet6]` (and the others;
// `ipset create SWYD-HEALTH-CHECK-NODE-PORT bitmap:port range 0-65535`, which has no family)
func (s ipsets) Ensure() error {
	for set, typ := range setTypes {
		opts := netlink.IpsetCreateOptions{Family: s.family()}
		if typ == "bitmap:port" {
			opts.PortTo = math.MaxUint16
		}
		err := netlink.IpsetCreate(s.name(set), typ, opts)
		if err != nil && !errors.Is(err, syscall.EEXIST) {
			return fmt.Errorf("creating ipset %s (%s): %w", s.name(set), typ, err)
		}
	}
	return nil
}

// List is part of Sets.
//
// Equivalent to: `ipset list SWYD-CLUSTER-IP` (and the others)
func (s ipsets) List() (map[SetEntry]bool, error) {
	out := map[SetEntry]bool{}
	for set := range setTypes {
		res, err := netlink.IpsetList(s.name(set))
		if err != nil {
			return nil, fmt.Errorf("listing ipset %s: %w", s.name(set), err)
		}
		for _, e := range res.Entries {
			if setTypes[set] == "bitmap:port" {
				if e.Port != nil {
					out[SetEntry{Set: set, Port: *e.Port}] = true
				}
				continue
			}
			ip, ok := netip.AddrFromSlice(e.IP)
			if !ok {
				continue
			}
			entry := SetEntry{Set: set, IP: ip.Unmap()}
			if e.Port != nil && e.Protocol != nil {
				entry.Port = *e.Port
				for p, n := range ipProtocols {
					if n == *e.Protocol {
						entry.Protocol = p
					}
				}
			}
			if ip2, ok := netip.AddrFromSlice(e.IP2); ok {
				if setTypes[set] == "hash:ip,port,net" {
					entry.Net = netip.PrefixFrom(ip2.Unmap(), int(e.CIDR2))
				} else {
					entry.IP2 = ip2.Unmap()
				}
			}
			out[entry] = true
		}
	}
	return out, nil
}

// Add is part of Sets.
//
// Equivalent to: `ipset add SET MEMBER -exist`
func (s ipsets) Add(e SetEntry) error {
	var err error
	if setTypes[e.Set] == "bitmap:port" {
		err = ipsetPort(nl.IPSET_CMD_ADD, s.name(e.Set), e.Port)
	} else {
		n := e.toNetlink()
		n.Replace = true // like -exist: adding a member twice is not an error
		err = netlink.IpsetAdd(s.name(e.Set), n)
	}
	if err != nil {
		return fmt.Errorf("adding %v to ipset %s: %w", e, s.name(e.Set), err)
	}
	return nil
}

// Del is part of Sets.
//
// Equivalent to: `ipset del SET MEMBER -exist`
func (s ipsets) Del(e SetEntry) error {
	var err error
	if setTypes[e.Set] == "bitmap:port" {
		err = ipsetPort(nl.IPSET_CMD_DEL, s.name(e.Set), e.Port)
	} else {
		err = netlink.IpsetDel(s.name(e.Set), e.toNetlink())
	}
	if err != nil && !errors.Is(err, syscall.ENOENT) && !isIpsetNotExist(err) {
		return fmt.Errorf("deleting %v from ipset %s: %w", e, s.name(e.Set), err)
	}
	return nil
}

// ipsetPort adds (IPSET_CMD_ADD, as with -exist) or deletes (IPSET_CMD_DEL) the member of a
// bitmap:port set, which is a port alone. netlink's IpsetAdd and IpsetDel send a protocol
// with every port, an attribute the bitmap:port type does not take: kernels that check a
// request against the type's attributes refuse it as an ipset protocol error
// (vishvananda/netlink#1054). This sends what `ipset add SET PORT` does.
func ipsetPort(cmd int, set string, port uint16) error {
	_, err := ipsetPortRequest(cmd, set, port).Execute(unix.NETLINK_NETFILTER, 0)
	// As netlink does: ipset's own errors come back as errnos from IPSET_ERR_PRIVATE on.
	var errno syscall.Errno
	if errors.As(err, &errno) && int(errno) >= nl.IPSET_ERR_PRIVATE {
		err = nl.IPSetError(uintptr(errno))
	}
	return err
}

// ipsetPortRequest is ipsetPort's request: the set's name, and the port as the member's
// only attribute.
func ipsetPortRequest(cmd int, set string, port uint16) *nl.NetlinkRequest {
	req := nl.NewNetlinkRequest(cmd|(unix.NFNL_SUBSYS_IPSET<<8), nl.GetIpsetFlags(cmd))
	req.AddData(&nl.Nfgenmsg{NfgenFamily: unix.AF_NETLINK, Version: nl.NFNETLINK_V0})
	req.AddData(nl.NewRtAttr(nl.IPSET_ATTR_PROTOCOL, nl.Uint8Attr(nl.IPSET_PROTOCOL)))
	req.AddData(nl.NewRtAttr(nl.IPSET_ATTR_SETNAME, nl.ZeroTerminated(set)))
	data := nl.NewRtAttr(nl.IPSET_ATTR_DATA|int(nl.NLA_F_NESTED), nil)
	data.AddChild(nl.NewRtAttr(nl.IPSET_ATTR_PORT|int(nl.NLA_F_NET_BYTEORDER), binary.BigEndian.AppendUint16(nil, port)))
	req.AddData(data)
	return req
}

// isIpsetNotExist recognises ipset's own "element is missing" error (IPSET_ERR_EXIST),
// which the kernel also uses for deleting a member that is not there.
func isIpsetNotExist(err error) bool {
	var ipsetErr nl.IPSetError
	return errors.As(err, &ipsetErr) && ipsetErr == nl.IPSetError(nl.IPSET_ERR_EXIST)
}

// destroySets removes our sets of both families (--cleanup); the rules that use them must
// be gone first.
//
// Equivalent to: `ipset destroy SWYD-CLUSTER-IP` (and the others)
func destroySets() error {
	var errs []error
	for _, s := range []ipsets{{ipv6: false}, {ipv6: true}} {
		for set := range setTypes {
			if err := netlink.IpsetDestroy(s.name(set)); err != nil && !errors.Is(err, syscall.ENOENT) {
				errs = append(errs, fmt.Errorf("destroying ipset %s: %w", s.name(set), err))
			}
		}
	}
	return errors.Join(errs...)
}
