package ipvs

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/switchyard/switchyard/dummy"
	"github.com/switchyard/switchyard/internal/sysctl"
)

// CheckScheduler fails unless the running kernel offers the scheduler (one of
// config.IPVSSchedulers): its module is loaded (or built in), or can be loaded now.
func CheckScheduler(name string) error {
	module := "ip_vs_" + name
	if _, err := os.Stat(filepath.Join("/sys/module", module)); err == nil {
		return nil
	}
	if out, err := exec.Command("modprobe", module).CombinedOutput(); err != nil {
		return fmt.Errorf("IPVS scheduler %q is not available: kernel module %s is not loaded and modprobe failed: %w: %s", name, module, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// kernelParam is one kernel setting (a sysctl) IPVS mode depends on.
type kernelParam struct {
	path  string
	value string
}

// nodeSysctls are the settings kube-proxy's IPVS mode makes, for the same reasons.
func nodeSysctls(strictARP, ipv6 bool) []kernelParam {
	s := []kernelParam{
		// Without conntrack entries for IPVS connections, iptables cannot masquerade them.
		{"net/ipv4/vs/conntrack", "1"},
		// Send new connections whose real server is gone elsewhere instead of dropping
		// them, so a removed endpoint does not black-hole a client that reuses a port.
		{"net/ipv4/vs/expire_nodest_conn", "1"},
		// Expire persistence templates of a real server at weight 0, so session affinity
		// does not keep sending clients to a terminating endpoint.
		{"net/ipv4/vs/expire_quiescent_template", "1"},
		// IPVS forwards to endpoints in other network namespaces.
		{"net/ipv4/ip_forward", "1"},
	}
	// Before Linux 5.9, conn_reuse_mode=1 delayed every reused connection by a second
	// (https://github.com/kubernetes/kubernetes/issues/81775), so kube-proxy sets 0 there;
	// later kernels fixed it and keep the default.
	if kernelBefore(5, 9) {
		s = append(s, kernelParam{"net/ipv4/vs/conn_reuse_mode", "0"})
	}
	if ipv6 {
		s = append(s, kernelParam{"net/ipv6/conf/all/forwarding", "1"})
	}
	if strictARP {
		// Do not answer ARP for Service addresses bound on kube-ipvs0 (needed by
		// load balancers such as MetalLB in L2 mode).
		s = append(s, kernelParam{"net/ipv4/conf/all/arp_ignore", "1"}, kernelParam{"net/ipv4/conf/all/arp_announce", "2"})
	}
	return s
}

// NodeConfig is what IPVS mode sets on the node for one IP family.
type NodeConfig struct {
	// StrictARP sets arp_ignore and arp_announce (--ipvs-strict-arp).
	StrictARP bool
	// IPv6 is set for the IPv6 proxier.
	IPv6 bool
	// Timeouts are the IPVS connection timeouts to set (--ipvs-*-timeout).
	Timeouts Timeouts
}

// PrepareNode makes IPVS mode's node settings as kube-proxy's IPVS NewProxier does for
// each IP family. First the sysctls: the first that cannot be set is returned, and the
// proxy does not start; one that holds its value already is not written, so a proxy
// whose /proc/sys is read-only starts once --init-only has set them. Then, when any is
// given, the connection timeouts of ipvs, whose failure is only logged.
func PrepareNode(sys sysctl.Interface, ipvs Interface, cfg NodeConfig, logger klog.Logger) error {
	for _, s := range nodeSysctls(cfg.StrictARP, cfg.IPv6) {
		if err := sysctl.Ensure(sys, s.path, s.value, logger); err != nil {
			return err
		}
	}
	if t := cfg.Timeouts; t.TCP > 0 || t.TCPFin > 0 || t.UDP > 0 {
		if err := ipvs.ConfigureTimeouts(t); err != nil {
			logger.Error(err, "Failed to configure IPVS timeouts")
		}
	}
	return nil
}

// Device is the backend's boundary to kube-ipvs0, the dummy device Service addresses are
// bound on, and to the node's own addresses. The backend reaches them through this
// interface so that its whole Sync runs against a stateful fake in unit tests
// (ipvs/ipvstest); the kernel's is a dummy.Device, with the node's addresses read over
// netlink.
type Device interface {
	// Refresh re-creates the device when it is gone.
	Refresh() error
	// Name is the device's name, for messages.
	Name() string
	// Addresses lists the IPv4 addresses switchyard bound on the device.
	Addresses() (map[netip.Addr]bool, error)
	// AddressesIPv6 lists every global IPv6 address on the device: IPv6 addresses carry
	// no label, so the backend decides which of them are ours.
	AddressesIPv6() (map[netip.Addr]bool, error)
	// Bind binds a Service address; binding one that is bound is not an error.
	Bind(netip.Addr) error
	// Unbind removes a Service address; removing one that is not bound is not an error.
	Unbind(netip.Addr) error
	// NodeAddresses lists the node's own addresses of one family: those on every link
	// but the device, never loopback or link-local ones.
	NodeAddresses(ipv6 bool) ([]netip.Addr, error)
}

// kernelDevice is the real kube-ipvs0, with the node's addresses read over netlink.
type kernelDevice struct{ *dummy.Device }

// NodeAddresses lists the node's own addresses of one family: those on every link but
// kube-ipvs0, never loopback or link-local ones.
//
// Equivalent to: `ip -4 addr show` (or -6)
func (dev kernelDevice) NodeAddresses(ipv6 bool) ([]netip.Addr, error) {
	family := netlink.FAMILY_V4
	if ipv6 {
		family = netlink.FAMILY_V6
	}
	addrs, err := netlink.AddrList(nil, family)
	if err != nil {
		return nil, fmt.Errorf("listing the node's addresses: %w", err)
	}
	var out []netip.Addr
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok || a.LinkIndex == dev.Index() {
			continue
		}
		ip = ip.Unmap()
		if ip.IsLoopback() || ip.IsLinkLocalUnicast() || slices.Contains(out, ip) {
			continue
		}
		out = append(out, ip)
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out, nil
}

// inRanges keeps the addresses in ranges, or all of them when there are no ranges (the
// node-port addresses, from --nodeport-addresses).
func inRanges(addrs []netip.Addr, ranges []netip.Prefix) []netip.Addr {
	if len(ranges) == 0 {
		return addrs
	}
	var out []netip.Addr
	for _, a := range addrs {
		if slices.ContainsFunc(ranges, func(p netip.Prefix) bool { return p.Contains(a) }) {
			out = append(out, a)
		}
	}
	return out
}

func kernelBefore(major, minor int) bool {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return false
	}
	var ma, mi int
	if _, err := fmt.Sscanf(unix.ByteSliceToString(u.Release[:]), "%d.%d", &ma, &mi); err != nil {
		return false
	}
	return ma < major || (ma == major && mi < minor)
}
