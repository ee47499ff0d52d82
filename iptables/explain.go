package iptables

import (
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"

	"github.com/switchyard/switchyard/proxier"
)

// perPortChainPrefixes start the names of the chains that belong to one ServicePort.
var perPortChainPrefixes = []string{ChainPrefix + "SVC-", ChainPrefix + "SVL-", ChainPrefix + "EXT-", ChainPrefix + "FW-", ChainPrefix + "SEP-"}

func isPerPortChain(chain string) bool {
	return slices.ContainsFunc(perPortChainPrefixes, func(p string) bool { return strings.HasPrefix(chain, p) })
}

// Explain is part of proxier.Explainer. For each ServicePort it finds what the kernel
// holds: its rules in the shared chains (by their comment) and the per-port chains they
// lead to; and compares them, on what decides a packet's fate, with what the desired
// state renders.
func (b *Backend) Explain(ctx context.Context, state *proxier.State, names []proxier.ServicePortName, w io.Writer) (bool, error) {
	saved := map[string][]SavedRule{}
	for _, table := range []Table{TableFilter, TableNAT} {
		dump, err := b.ipt.Save(ctx, table)
		if err != nil {
			return false, fmt.Errorf("reading the %s table: %w", table, err)
		}
		maps.Copy(saved, ParseSaved(string(dump)))
	}
	matches := true
	for _, name := range names {
		want := map[string][]SavedRule{}
		if sp, ok := state.Services[name]; ok {
			r := b.render(state, sp)
			for ref, rules := range r.dispatch {
				key := string(ref.table) + " " + ref.chain
				for _, rule := range rules {
					want[key] = append(want[key], SavedRule(rule))
				}
			}
			for _, c := range r.chains {
				want[string(TableNAT)+" "+c.Name] = savedRules(c.Rules)
			}
		}
		got := programmedFor(saved, name)
		fmt.Fprintf(w, "  %s (%s):\n", name, b.ipt.Flavor())
		if len(want) == 0 && len(got) == 0 {
			fmt.Fprintf(w, "    nothing programmed, nothing wanted\n")
		}
		for _, key := range slices.Sorted(maps.Keys(mergeKeys(want, got))) {
			_, chain, _ := strings.Cut(key, " ")
			verdict := compareRules(want[key], got[key], !isPerPortChain(chain))
			if verdict != "ok" {
				matches = false
			}
			fmt.Fprintf(w, "    %s: %s\n", key, verdict)
			for _, r := range got[key] {
				fmt.Fprintf(w, "      -A %s %s\n", chain, r)
			}
			if verdict != "ok" && len(want[key]) > 0 {
				fmt.Fprintf(w, "      want:\n")
				for _, r := range want[key] {
					fmt.Fprintf(w, "      -A %s %s\n", chain, r)
				}
			}
		}
	}
	return matches, nil
}

// programmedFor picks what the kernel holds for one ServicePort out of every switchyard
// chain: its rules in the shared chains, which carry its name first in their comment,
// and the per-port chains reachable from them.
func programmedFor(saved map[string][]SavedRule, name proxier.ServicePortName) map[string][]SavedRule {
	got := map[string][]SavedRule{}
	var next []string
	for key, rules := range saved {
		if _, chain, _ := strings.Cut(key, " "); isPerPortChain(chain) {
			continue
		}
		for _, r := range rules {
			if strings.HasPrefix(r.Comment(), name.String()+" ") {
				got[key] = append(got[key], r)
				next = append(next, r.Target())
			}
		}
	}
	for len(next) > 0 {
		chain := next[0]
		next = next[1:]
		key := string(TableNAT) + " " + chain
		if _, seen := got[key]; seen || !isPerPortChain(chain) {
			continue
		}
		rules, ok := saved[key]
		if !ok {
			continue // a jump to a chain that is not there: compareRules reports it missing
		}
		got[key] = rules
		for _, r := range rules {
			next = append(next, r.Target())
		}
	}
	return got
}

// compareRules says whether got does what want does: in order for a per-port chain, as
// a set for a shared chain, where a partial sync's inserts decide the order.
func compareRules(want, got []SavedRule, asSet bool) string {
	switch {
	case want == nil && got == nil:
		return "ok"
	case want == nil:
		return "STALE: programmed, but not in the desired state"
	case got == nil:
		return "MISSING: wanted, but not programmed"
	}
	w, g := essentials(want), essentials(got)
	if asSet {
		slices.Sort(w)
		slices.Sort(g)
	}
	if !slices.Equal(w, g) {
		return fmt.Sprintf("DIFFERS: %d rules programmed, %d wanted", len(got), len(want))
	}
	return "ok"
}

func essentials(rules []SavedRule) []string {
	out := make([]string, len(rules))
	for i, r := range rules {
		out[i] = r.Essential()
	}
	return out
}

func savedRules(rules []string) []SavedRule {
	out := make([]SavedRule, len(rules))
	for i, r := range rules {
		out[i] = SavedRule(r)
	}
	return out
}

func mergeKeys(a, b map[string][]SavedRule) map[string]struct{} {
	keys := map[string]struct{}{}
	for k := range a {
		keys[k] = struct{}{}
	}
	for k := range b {
		keys[k] = struct{}{}
	}
	return keys
}
