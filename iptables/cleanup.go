package iptables

import (
	"context"
	"fmt"
	"slices"
	"strings"
)

// Cleanup removes everything this backend owns: the hooks in the built-in chains and every
// chain whose name carries ChainPrefix. It is idempotent and touches nothing else.
//
// Equivalent to: `iptables -D <hook>` for each hook, then `iptables -F/-X SWYD-...`.
func Cleanup(ctx context.Context, ipt Interface) error {
	ours := map[Table][]string{}
	for _, table := range []Table{TableFilter, TableNAT} {
		chains, err := ipt.ListChains(ctx, table)
		if err != nil {
			return fmt.Errorf("listing %s chains: %w", table, err)
		}
		for _, c := range chains {
			if strings.HasPrefix(c, ChainPrefix) {
				ours[table] = append(ours[table], c)
			}
		}
	}
	// A hook can only exist while the chain it jumps to does; asking iptables about a
	// hook to a missing chain is an error rather than "no such rule".
	for _, h := range hooks {
		if slices.Contains(ours[h.table], h.rule[len(h.rule)-1]) {
			if err := ipt.DeleteRule(h.table, h.chain, h.rule...); err != nil {
				return err
			}
		}
	}
	var out strings.Builder
	for _, table := range []Table{TableFilter, TableNAT} {
		w := &restoreWriter{}
		for _, c := range ours[table] {
			w.deleteChain(c)
		}
		w.writeTo(&out, table)
	}
	if out.Len() == 0 {
		return nil
	}
	if err := ipt.Restore(ctx, []byte(out.String())); err != nil {
		return fmt.Errorf("removing switchyard chains: %w", err)
	}
	return nil
}
