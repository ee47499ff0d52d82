package ipvs

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"slices"

	"github.com/switchyard/switchyard/proxier"
)

// Explain is part of proxier.Explainer. For each ServicePort it lists the virtual
// servers the desired state plans, what the kernel holds for each (scheduler,
// persistence, real servers and their weights), and whether its addresses are bound on
// the dummy device. Real servers at weight 0 are draining and do not count as a
// difference.
func (b *Backend) Explain(_ context.Context, state *proxier.State, names []proxier.ServicePortName, w io.Writer) (bool, error) {
	if b.dev == nil {
		fmt.Fprintf(w, "  the dummy device does not exist: no Service address is bound\n")
		return false, nil
	}
	if err := b.readNodeAddresses(); err != nil {
		return false, err
	}
	bound, err := b.boundAddresses(nil)
	if err != nil {
		return false, err
	}
	current, err := b.ipvs.VirtualServers()
	if err != nil {
		return false, err
	}
	byKey := make(map[Key]*VirtualServer, len(current))
	for _, vs := range current {
		byKey[vs.Key()] = vs
	}

	matches := true
	for _, name := range names {
		fmt.Fprintf(w, "  %s:\n", name)
		sp, ok := state.Services[name]
		if !ok {
			fmt.Fprintf(w, "    nothing wanted for this node\n")
			continue
		}
		p := b.plan(state, sp)
		for _, s := range p.servers {
			verdict, reals, err := b.explainServer(s, byKey[s.vs.Key()])
			if err != nil {
				return false, err
			}
			if verdict != "ok" {
				matches = false
			}
			fmt.Fprintf(w, "    virtual server %s %s: %s\n", s.vs.Key(), describe(s.vs), verdict)
			for _, r := range reals {
				fmt.Fprintf(w, "      -> %s weight %d (active %d, inactive %d)\n", r.Endpoint(), r.Weight, r.ActiveConnections, r.InactiveConnections)
			}
		}
		for _, a := range p.addrs {
			verdict := "ok"
			if !bound[a] {
				verdict, matches = "MISSING", false
			}
			fmt.Fprintf(w, "    address %s on %s: %s\n", a, b.dev.Name(), verdict)
		}
	}
	return matches, nil
}

// explainServer compares one planned virtual server with the kernel's and returns the
// verdict and the kernel's real servers.
func (b *Backend) explainServer(want vsPlan, got *VirtualServer) (string, []*RealServer, error) {
	if got == nil {
		return "MISSING: wanted, but not in the kernel", nil, nil
	}
	reals, err := b.ipvs.RealServers(got)
	if err != nil {
		return "", nil, err
	}
	if got.Scheduler != want.vs.Scheduler || got.AffinityTimeout != want.vs.AffinityTimeout {
		return fmt.Sprintf("DIFFERS: the kernel has %s", describe(got)), reals, nil
	}
	var serving []netip.AddrPort
	for _, r := range reals {
		if r.Weight > 0 {
			serving = append(serving, r.Endpoint())
		}
	}
	wanted := slices.Clone(want.reals)
	slices.SortFunc(serving, netip.AddrPort.Compare)
	slices.SortFunc(wanted, netip.AddrPort.Compare)
	if !slices.Equal(serving, wanted) {
		return fmt.Sprintf("DIFFERS: real servers %v serve, want %v", serving, wanted), reals, nil
	}
	return "ok", reals, nil
}

// describe is the scheduler and persistence of a virtual server, as ipvsadm prints them.
func describe(vs *VirtualServer) string {
	if vs.AffinityTimeout > 0 {
		return fmt.Sprintf("%s persistent %d", vs.Scheduler, vs.AffinityTimeout)
	}
	return vs.Scheduler
}
