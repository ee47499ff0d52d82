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
// iptables-restore runs take, and how many restore lines it sends. It
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
//
// The thread goes back to its namespace afterwards and stays in the process. Letting it
// exit instead would kill every child started with Pdeathsig from that thread earlier
// (the proxies under test), since Linux ties Pdeathsig to the thread, not the process.
func inNetns(nsPath string, fn func() error) error {
	if nsPath == "" {
		return fn()
	}
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			done <- fmt.Errorf("reading the current network namespace: %w", err)
			return
		}
		defer orig.Close()
		ns, err := netns.GetFromPath(nsPath)
		if err != nil {
			runtime.UnlockOSThread()
			done <- fmt.Errorf("opening network namespace %s: %w", nsPath, err)
			return
		}
		defer ns.Close()
		if err := netns.Set(ns); err != nil {
			runtime.UnlockOSThread()
			done <- fmt.Errorf("entering network namespace %s: %w", nsPath, err)
			return
		}
		err = fn()
		// Only a thread back in its own namespace may run other goroutines; if the way
		// back fails, the thread stays locked and leaves the process with this goroutine.
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
		done <- err
	}()
	return <-done
}
