package conntracktest

import (
	"errors"
	"fmt"
	"io/fs"
	"sync"
	"syscall"

	"github.com/switchyard/switchyard/internal/sysctl/sysctltest"
)

// Node is a stateful fake of what conntrack.Configure sets on a node: the netfilter
// sysctls (a sysctltest.Fake, which tests can make read-only), the hash size, how /sys is
// mounted, and the CPU count. Like the kernel, it refuses to resize the table while /sys
// is read-only or not mounted.
type Node struct {
	*sysctltest.Fake
	cpus int

	mu       sync.Mutex
	hashSize int
	sysfs    SysFS
}

// SysFS is how /sys is mounted.
type SysFS int

const (
	// SysFSReadWrite is a node's usual /sys.
	SysFSReadWrite SysFS = iota
	// SysFSReadOnly is the /sys of a container runtime that mounts it read-only.
	SysFSReadOnly
	// NoSysFS is a mount namespace without sysfs.
	NoSysFS
)

// NewNode returns a node with the given CPUs, /sys read-write, and the values Linux 6.1
// starts with on a small machine: a table of 65536 entries and as many buckets, and the
// kernel's default timeouts.
func NewNode(cpus int) *Node {
	return &Node{
		Fake:     sysctltest.NewFake(DefaultSysctls()),
		cpus:     cpus,
		hashSize: 65536,
	}
}

// DefaultSysctls are the netfilter sysctls NewNode starts with (under /proc/sys).
func DefaultSysctls() map[string]string {
	return map[string]string{
		"net/netfilter/nf_conntrack_max":                     "65536",
		"net/netfilter/nf_conntrack_tcp_timeout_established": "432000",
		"net/netfilter/nf_conntrack_tcp_timeout_close_wait":  "60",
		"net/netfilter/nf_conntrack_tcp_be_liberal":          "0",
		"net/netfilter/nf_conntrack_udp_timeout":             "30",
		"net/netfilter/nf_conntrack_udp_timeout_stream":      "120",
	}
}

// MountSysFS changes how /sys is mounted.
func (n *Node) MountSysFS(m SysFS) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.sysfs = m
}

// HashSize is part of conntrack.Node.
func (n *Node) HashSize() (int, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.sysfs == NoSysFS {
		return 0, fmt.Errorf("open /sys/module/nf_conntrack/parameters/hashsize: %w", fs.ErrNotExist)
	}
	return n.hashSize, nil
}

// SetHashSize is part of conntrack.Node.
func (n *Node) SetHashSize(size int) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	switch n.sysfs {
	case SysFSReadOnly:
		return fmt.Errorf("open /sys/module/nf_conntrack/parameters/hashsize: %w", syscall.EROFS)
	case NoSysFS:
		return fmt.Errorf("open /sys/module/nf_conntrack/parameters/hashsize: %w", fs.ErrNotExist)
	}
	n.hashSize = size
	return nil
}

// SysFSWritable is part of conntrack.Node.
func (n *Node) SysFSWritable() (bool, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.sysfs == NoSysFS {
		return false, errors.New("no sysfs mounted")
	}
	return n.sysfs == SysFSReadWrite, nil
}

// CPUs is part of conntrack.Node.
func (n *Node) CPUs() int { return n.cpus }
