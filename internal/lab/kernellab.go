package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"

	"github.com/switchyard/switchyard/internal/testenv"
)

// The link between the host and a kernel lab's guest: a tap device on the host, the
// guest's eth0 on the other end, and nothing routed beyond that /30. Each slot is one
// such link, so that guests of different slots can run at once.
func tapLink(slot int) (name, host, guest string) {
	return fmt.Sprintf("swyd-tap%d", slot), fmt.Sprintf("10.249.0.%d", 4*slot+1), fmt.Sprintf("10.249.0.%d/30", 4*slot+2)
}

// GuestSlots is how many guest links can exist at once (slots 0 to GuestSlots-1).
const GuestSlots = 64

// GuestLink is a kube-apiserver on the host that a program inside the kernel lab's guest
// (hack/kernel-lab/run.sh: a UML kernel with IPVS) reaches over a tap link. The apiserver
// runs natively because inside the guest every syscall costs a host context switch.
type GuestLink struct {
	// Kubeconfig is the apiserver's kubeconfig, valid inside the guest (which sees the
	// host's filesystem).
	Kubeconfig     string
	runner         string
	tapName, guest string
	controlPlane   *testenv.ControlPlane
}

// StartGuestLink creates the tap link of slot (0 unless several guests run at once) and
// starts the apiserver on its host end. runner is the path of hack/kernel-lab/run.sh.
func StartGuestLink(ctx context.Context, dir, runner string, slot int) (_ *GuestLink, err error) {
	if _, err := exec.LookPath("linux.uml"); err != nil {
		return nil, errors.New("linux.uml not found: install the Debian package user-mode-linux (make deps)")
	}
	if slot < 0 || slot >= GuestSlots {
		return nil, fmt.Errorf("guest link slot %d: want 0 to %d", slot, GuestSlots-1)
	}
	tapName, tapHost, tapGuest := tapLink(slot)
	g := &GuestLink{runner: runner, tapName: tapName, guest: tapGuest}
	defer func() {
		if err != nil {
			_ = g.Close()
		}
	}()
	if err := testenv.DeleteLink(tapName, ""); err != nil {
		return nil, err
	}
	for _, args := range [][]string{
		{"tuntap", "add", "dev", tapName, "mode", "tap"},
		{"addr", "add", tapHost + "/30", "dev", tapName},
		{"link", "set", tapName, "up"},
	} {
		if err := testenv.RunIP("", args...); err != nil {
			return nil, err
		}
	}
	g.controlPlane, err = testenv.StartControlPlane(ctx, testenv.ControlPlaneOptions{BindAddress: tapHost, Dir: dir, ServiceCIDR: ServiceCIDR + "," + ServiceCIDR6})
	if err != nil {
		return nil, fmt.Errorf("starting the control plane: %w", err)
	}
	g.Kubeconfig = g.controlPlane.Kubeconfig
	return g, nil
}

// Run runs a command inside the guest with the extra environment variables and returns
// when the guest halts. The command's exit status is the guest's verdict.
func (g *GuestLink) Run(ctx context.Context, out io.Writer, env []string, command ...string) error {
	cmd := exec.CommandContext(ctx, g.runner, command...)
	cmd.Env = append(os.Environ(), append(env, "SWYD_LAB_TAP="+g.tapName, "SWYD_LAB_GUEST_ADDR="+g.guest)...)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("inside the kernel lab: %w", err)
	}
	return nil
}

// Close stops the apiserver and removes the tap device.
func (g *GuestLink) Close() error {
	if g.controlPlane != nil {
		g.controlPlane.Stop()
	}
	return testenv.DeleteLink(g.tapName, "")
}
