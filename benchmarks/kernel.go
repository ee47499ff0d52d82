package benchmarks

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"runtime"
	"time"

	"github.com/vishvananda/netns"

	"github.com/switchyard/switchyard/iptables"
	"github.com/switchyard/switchyard/ipvs"
)

// timedIPTables measures the kernel writes of an iptables backend: how long its
// iptables-restore and rule insertions take, and how many restore lines it sends. It
// keeps each restore input, so that the floor can replay exactly the same change.
type timedIPTables struct {
	iptables.Interface
	writing time.Duration
	lines   int
	inputs  [][]byte
}

func (t *timedIPTables) Restore(ctx context.Context, data []byte) error {
	start := time.Now()
	err := t.Interface.Restore(ctx, data)
	t.writing += time.Since(start)
	t.lines += bytes.Count(data, []byte("\n"))
	t.inputs = append(t.inputs, bytes.Clone(data))
	return err
}

func (t *timedIPTables) EnsureRule(table iptables.Table, chain string, rule ...string) error {
	start := time.Now()
	err := t.Interface.EnsureRule(table, chain, rule...)
	t.writing += time.Since(start)
	return err
}

// timedIPVS measures the netlink writes of the IPVS backend on virtual and real servers.
type timedIPVS struct {
	ipvs.Interface
	writing time.Duration
}

func (t *timedIPVS) timed(fn func() error) error {
	start := time.Now()
	err := fn()
	t.writing += time.Since(start)
	return err
}

func (t *timedIPVS) AddVirtualServer(v *ipvs.VirtualServer) error {
	return t.timed(func() error { return t.Interface.AddVirtualServer(v) })
}

func (t *timedIPVS) UpdateVirtualServer(v *ipvs.VirtualServer) error {
	return t.timed(func() error { return t.Interface.UpdateVirtualServer(v) })
}

func (t *timedIPVS) DeleteVirtualServer(v *ipvs.VirtualServer) error {
	return t.timed(func() error { return t.Interface.DeleteVirtualServer(v) })
}

func (t *timedIPVS) AddRealServer(v *ipvs.VirtualServer, r *ipvs.RealServer) error {
	return t.timed(func() error { return t.Interface.AddRealServer(v, r) })
}

func (t *timedIPVS) UpdateRealServer(v *ipvs.VirtualServer, r *ipvs.RealServer) error {
	return t.timed(func() error { return t.Interface.UpdateRealServer(v, r) })
}

func (t *timedIPVS) DeleteRealServer(v *ipvs.VirtualServer, r *ipvs.RealServer) error {
	return t.timed(func() error { return t.Interface.DeleteRealServer(v, r) })
}

// runInNetns runs a command inside the network namespace at nsPath and returns how long
// it took. The command is started from a thread that joined the namespace, so it starts
// there without an `ip netns exec` wrapper whose cost would pollute the figure.
func runInNetns(nsPath string, stdin []byte, name string, args ...string) (time.Duration, error) {
	var took time.Duration
	err := inNetns(nsPath, func() error {
		cmd := exec.Command(name, args...)
		cmd.Stdin = bytes.NewReader(stdin)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		start := time.Now()
		err := cmd.Run()
		took = time.Since(start)
		if err != nil {
			return fmt.Errorf("%s in %s: %w: %s", name, nsPath, err, bytes.TrimSpace(stderr.Bytes()))
		}
		return nil
	})
	return took, err
}

// inNetns runs fn on a thread inside the network namespace at nsPath ("" is the
// current one): sockets it opens and processes it starts live there.
func inNetns(nsPath string, fn func() error) error {
	if nsPath == "" {
		return fn()
	}
	done := make(chan error, 1)
	go func() {
		// The thread is never unlocked: it leaves the process with this goroutine, so no
		// other goroutine ever runs in the namespace.
		runtime.LockOSThread()
		ns, err := netns.GetFromPath(nsPath)
		if err != nil {
			done <- fmt.Errorf("opening network namespace %s: %w", nsPath, err)
			return
		}
		defer ns.Close()
		if err := netns.Set(ns); err != nil {
			done <- fmt.Errorf("entering network namespace %s: %w", nsPath, err)
			return
		}
		done <- fn()
	}()
	return <-done
}
