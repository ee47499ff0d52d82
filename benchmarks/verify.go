package benchmarks

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchyard/switchyard/dummy"
	"github.com/switchyard/switchyard/iptables"
	"github.com/switchyard/switchyard/ipvs"
	"github.com/switchyard/switchyard/proxier"
)

// dispatchChains are the chains a partial sync edits rule by rule (-I/-D), so their
// order depends on history; each of their rules matches its own destination, so order
// does not change what they do, and they are compared as sets.
var dispatchChains = map[string]bool{"SWYD-SERVICES": true, "SWYD-NODEPORTS": true}

// verifyIPTables compares every switchyard chain in the kernel with what a full sync of
// the desired state renders, rule by rule, on what decides a packet's fate: addresses,
// protocol, port, DNAT destination and jump target.
func verifyIPTables(ctx context.Context, ipt iptables.Interface, d *Desired) error {
	rec := &recordingIPTables{flavor: ipt.Flavor()}
	reference := iptables.NewBackend(rec, renderConfig(), prometheus.NewRegistry(), logr.Discard())
	if err := reference.Sync(ctx, d.State, proxier.Changes{Full: true}); err != nil {
		return fmt.Errorf("rendering the reference: %w", err)
	}
	want := parseRules(rec.input.String())
	got := map[string][]string{}
	for _, table := range []iptables.Table{iptables.TableFilter, iptables.TableNAT} {
		dump, err := ipt.Save(ctx, table)
		if err != nil {
			return err
		}
		maps.Copy(got, parseRules(string(dump)))
	}
	return compareChains(want, got)
}

func compareChains(want, got map[string][]string) error {
	var errs []error
	for _, chain := range slices.Sorted(maps.Keys(want)) {
		rules, ok := got[chain]
		if !ok {
			errs = append(errs, fmt.Errorf("chain %s is missing", chain))
			continue
		}
		if !slices.Equal(rules, want[chain]) {
			errs = append(errs, fmt.Errorf("chain %s holds %d rules %q, want %d rules %q", chain, len(rules), first(rules, 3), len(want[chain]), first(want[chain], 3)))
		}
	}
	for chain := range got {
		if _, ok := want[chain]; !ok {
			errs = append(errs, fmt.Errorf("chain %s is not in the desired state", chain))
		}
	}
	if len(errs) > 5 {
		errs = append(errs[:5], fmt.Errorf("and %d more differences", len(errs)-5))
	}
	return errors.Join(errs...)
}

func first(s []string, n int) []string { return s[:min(n, len(s))] }

// parseRules reads iptables-save output or iptables-restore input and returns, for each
// switchyard chain ("table chain"), the essential form of its rules.
func parseRules(text string) map[string][]string {
	chains := map[string][]string{}
	for key, rules := range iptables.ParseSaved(text) {
		essential := make([]string, len(rules))
		for i, r := range rules {
			essential[i] = r.Essential()
		}
		if _, chain, _ := strings.Cut(key, " "); dispatchChains[chain] {
			slices.Sort(essential)
		}
		chains[key] = essential
	}
	return chains
}

// recordingIPTables is an empty kernel that keeps what it is asked to restore: the
// reference rendering of a full sync.
type recordingIPTables struct {
	flavor iptables.Flavor
	input  strings.Builder
}

func (r *recordingIPTables) Restore(_ context.Context, data []byte) error {
	r.input.Write(data)
	return nil
}

func (r *recordingIPTables) Save(context.Context, iptables.Table) ([]byte, error) { return nil, nil }

func (r *recordingIPTables) Flavor() iptables.Flavor { return r.flavor }

// virtualServers is the IPVS table the desired state implies: for each cluster IP:port,
// its real servers. Every generated endpoint is ready, so every one is a real server.
func (d *Desired) virtualServers() map[string][]string {
	table := make(map[string][]string, len(d.Specs))
	for _, s := range d.Specs {
		var reals []string
		for _, ep := range s.Endpoints {
			reals = append(reals, netip.AddrPortFrom(ep, EndpointPort).String())
		}
		slices.Sort(reals)
		table[netip.AddrPortFrom(s.ClusterIP(), ServicePort).String()] = reals
	}
	return table
}

// verifyIPVS compares the kernel's virtual servers, their real servers and weights, and
// the addresses bound on kube-ipvs0 with the desired state.
func verifyIPVS(handle ipvs.Interface, dev *dummy.Device, d *Desired) error {
	want := d.virtualServers()
	servers, err := handle.VirtualServers()
	if err != nil {
		return err
	}
	got := make(map[string][]string, len(servers))
	for _, vs := range servers {
		reals, err := handle.RealServers(vs)
		if err != nil {
			return err
		}
		var eps []string
		for _, r := range reals {
			if r.Weight != 1 {
				return fmt.Errorf("real server %s of %s has weight %d, want 1", r.Endpoint(), vs.Key(), r.Weight)
			}
			eps = append(eps, r.Endpoint().String())
		}
		slices.Sort(eps)
		got[netip.AddrPortFrom(vs.Address, vs.Port).String()] = eps
	}
	if err := compareChains(want, got); err != nil {
		return fmt.Errorf("virtual servers: %w", err)
	}
	bound, err := dev.Addresses()
	if err != nil {
		return err
	}
	if len(bound) != len(d.Specs) {
		return fmt.Errorf("%d addresses bound on %s, want %d", len(bound), dev.Name(), len(d.Specs))
	}
	for _, s := range d.Specs {
		if !bound[s.ClusterIP()] {
			return fmt.Errorf("cluster IP %s is not bound on %s", s.ClusterIP(), dev.Name())
		}
	}
	return nil
}

// ipvsadmScript is the ipvsadm --restore input that turns the virtual servers of before
// into those of after: what a person would hand the kernel's own tool.
func ipvsadmScript(before, after *Desired) string {
	old, cur := before.virtualServers(), after.virtualServers()
	var b strings.Builder
	for _, vs := range slices.Sorted(maps.Keys(old)) {
		if _, ok := cur[vs]; !ok {
			fmt.Fprintf(&b, "-D -t %s\n", vs)
		}
	}
	for _, vs := range slices.Sorted(maps.Keys(cur)) {
		reals, existed := old[vs]
		if !existed {
			fmt.Fprintf(&b, "-A -t %s -s rr\n", vs)
		}
		for _, r := range reals {
			if !slices.Contains(cur[vs], r) {
				fmt.Fprintf(&b, "-d -t %s -r %s\n", vs, r)
			}
		}
		for _, r := range cur[vs] {
			if !slices.Contains(reals, r) {
				fmt.Fprintf(&b, "-a -t %s -r %s -m -w 1\n", vs, r)
			}
		}
	}
	return b.String()
}
