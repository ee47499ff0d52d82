package conntrack

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/google/cadvisor/machine"
	"github.com/google/cadvisor/utils/sysfs"
	"k8s.io/klog/v2"

	"github.com/switchyard/switchyard/internal/sysctl"
)

// Settings are kube-proxy's conntrack settings (the conntrack section of its
// configuration, the --conntrack-* flags), which it applies to the kernel once, at
// startup, whatever the proxy mode.
type Settings struct {
	// MaxPerCore and Min size nf_conntrack_max: MaxPerCore for each of the node's CPUs,
	// and at least Min. A MaxPerCore of 0 leaves the limit alone, whatever Min is.
	MaxPerCore, Min int32
	// Each timeout above 0 sets its sysctl, in whole seconds; 0 leaves it alone.
	TCPEstablishedTimeout, TCPCloseWaitTimeout time.Duration
	// TCPBeLiberal sets nf_conntrack_tcp_be_liberal to 1; unset leaves it alone.
	TCPBeLiberal                 bool
	UDPTimeout, UDPStreamTimeout time.Duration
}

// Node is the conntrack settings' boundary to the node: the netfilter sysctls, the
// nf_conntrack module's hash size, which lives in /sys, and what sizes the table.
// NewNode's is the node's own; conntracktest.Node is a stateful fake.
type Node interface {
	// The kernel's parameters under /proc/sys ("net/netfilter/nf_conntrack_max").
	sysctl.Interface
	// HashSize is the number of buckets of the connection tracking table.
	//
	// Equivalent to: `cat /sys/module/nf_conntrack/parameters/hashsize`
	HashSize() (int, error)
	// SetHashSize resizes the table.
	//
	// Equivalent to: `echo SIZE > /sys/module/nf_conntrack/parameters/hashsize`
	SetHashSize(int) error
	// SysFSWritable reports whether /sys is mounted read-write: container runtimes have
	// been known to mount it read-only (https://issues.k8s.io/134108).
	SysFSWritable() (bool, error)
	// CPUs is the number of the node's CPUs.
	CPUs() int
}

// errReadOnlySysFS is a hash size that must grow while /sys is read-only.
var errReadOnlySysFS = errors.New("readOnlySysFS")

// Configure applies the settings as kube-proxy's setupConntrack does, before any proxy
// mode starts (iptables mode reads nf_conntrack_tcp_be_liberal when it starts): first
// nf_conntrack_max, then each timeout and liberal mode. A sysctl that already holds its
// value is not written, so a proxy whose /proc/sys is read-only starts once --init-only
// has set them. The first failure ends it and is returned: kube-proxy does not start
// then. The one exception is a hash size that cannot grow because /sys is read-only,
// which is logged.
func Configure(node Node, s Settings, logger klog.Logger) error {
	if limit := s.conntrackMax(node.CPUs()); limit > 0 {
		err := setMax(node, limit, logger)
		switch {
		case errors.Is(err, errReadOnlySysFS):
			// kube-proxy reports this with a Warning Event on its Node, which it records
			// before its event broadcaster starts sending, so none reaches the apiserver:
			// the log line is what an operator gets from either.
			logger.Error(err, "CRI error: /sys is read-only: cannot modify conntrack limits, problems may arise later (If running Docker, see docker issue #24000)")
		case err != nil:
			return err
		}
	}
	for _, p := range []struct {
		name  string
		set   bool
		value int
	}{
		{"nf_conntrack_tcp_timeout_established", s.TCPEstablishedTimeout > 0, seconds(s.TCPEstablishedTimeout)},
		{"nf_conntrack_tcp_timeout_close_wait", s.TCPCloseWaitTimeout > 0, seconds(s.TCPCloseWaitTimeout)},
		{"nf_conntrack_tcp_be_liberal", s.TCPBeLiberal, 1},
		{"nf_conntrack_udp_timeout", s.UDPTimeout > 0, seconds(s.UDPTimeout)},
		{"nf_conntrack_udp_timeout_stream", s.UDPStreamTimeout > 0, seconds(s.UDPStreamTimeout)},
	} {
		if p.set {
			if err := ensureNetfilter(node, p.name, p.value, logger); err != nil {
				return err
			}
		}
	}
	return nil
}

// seconds is a timeout in whole seconds, truncated as kube-proxy does: a timeout above 0
// but under a second sets its sysctl to 0.
func seconds(d time.Duration) int { return int(d / time.Second) }

// conntrackMax is kube-proxy's getConntrackMax: MaxPerCore for each CPU, and at least
// Min; 0 (leave the limit alone) when MaxPerCore is 0.
func (s Settings) conntrackMax(cpus int) int {
	if s.MaxPerCore <= 0 {
		return 0
	}
	return max(int(s.MaxPerCore)*cpus, int(s.Min))
}

// setMax is kube-proxy's SetMax: it sets nf_conntrack_max (up or down), then raises the
// hash size to a quarter of it when it is smaller, so that the table's chains stay short.
// The hash size never shrinks.
func setMax(node Node, limit int, logger klog.Logger) error {
	logger.Info("Setting nf_conntrack_max", "nfConntrackMax", limit)
	if err := ensureNetfilter(node, "nf_conntrack_max", limit, logger); err != nil {
		return err
	}
	hashSize, err := node.HashSize()
	if err != nil {
		return fmt.Errorf("reading the conntrack hash size: %w", err)
	}
	if hashSize >= limit/4 {
		return nil
	}
	writable, err := node.SysFSWritable()
	if err != nil {
		return fmt.Errorf("raising the conntrack hash size to %d: %w", limit/4, err)
	}
	if !writable {
		return errReadOnlySysFS
	}
	logger.Info("Setting conntrack hashsize", "conntrackHashsize", limit/4)
	if err := node.SetHashSize(limit / 4); err != nil {
		return fmt.Errorf("raising the conntrack hash size from %d to %d: %w", hashSize, limit/4, err)
	}
	return nil
}

func ensureNetfilter(node Node, name string, value int, logger klog.Logger) error {
	return sysctl.Ensure(node, "net/netfilter/"+name, strconv.Itoa(value), logger)
}

// NewNode returns the node's own kernel, as the current network namespace sees it: the
// timeouts and liberal mode are the namespace's own, while nf_conntrack_max and the hash
// size are the kernel's, which only the initial namespace may change.
func NewNode() Node { return kernelNode{sysctl.New()} }

type kernelNode struct{ sysctl.Interface }

const hashSizeFile = "/sys/module/nf_conntrack/parameters/hashsize"

// HashSize is part of Node.
func (kernelNode) HashSize() (int, error) {
	b, err := os.ReadFile(hashSizeFile)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// SetHashSize is part of Node.
func (kernelNode) SetHashSize(size int) error {
	return os.WriteFile(hashSizeFile, []byte(strconv.Itoa(size)), 0o640)
}

// SysFSWritable is part of Node. As kube-proxy's isSysFSWritable, the first sysfs mount
// of /proc/mounts decides, wherever it is mounted, and no sysfs at all is an error.
func (kernelNode) SysFSWritable() (bool, error) {
	mounts, err := os.ReadFile("/proc/mounts")
	if err != nil {
		return false, fmt.Errorf("listing mounts: %w", err)
	}
	for _, line := range strings.Split(string(mounts), "\n") {
		// device, mount point, type, options, dump, pass
		fields := strings.Fields(line)
		if len(fields) >= 4 && fields[2] == "sysfs" {
			options := strings.Split(fields[3], ",")
			return options[0] == "rw", nil
		}
	}
	return false, errors.New("no sysfs mounted")
}

// CPUs is part of Node. It counts the machine's CPUs as kube-proxy's detectNumCPU does,
// from sysfs through cadvisor, because runtime.NumCPU counts only those the process may
// run on: fewer than the node has in a container pinned to some
// (https://issues.k8s.io/99225).
func (kernelNode) CPUs() int {
	if _, n, err := machine.GetTopology(sysfs.NewRealSysFs()); err == nil && n >= 1 {
		return n
	}
	return runtime.NumCPU()
}
