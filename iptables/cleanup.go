package iptables

import (
	"context"
	"fmt"
	"strings"
)

// Cleanup removes everything this backend owns: the hooks in the built-in chains and every
// chain whose name carries ChainPrefix. It is idempotent and touches nothing else.
//
// Equivalent to: `iptables -D <hook>` for each hook, then `iptables -F/-X SWYD-...`.
func Cleanup(ctx context.Context, ipt Interface) error {
	for _, h := range hooks {
		if err := ipt.DeleteRule(h.table, h.chain, h.rule...); err != nil {
			return err
		}
	}
	var out strings.Builder
	for _, table := range []Table{TableFilter, TableNAT} {
		chains, err := ipt.ListChains(ctx, table)
		if err != nil {
			return fmt.Errorf("listing %s chains: %w", table, err)
		}
		w := &restoreWriter{}
		for _, c := range chains {
			if strings.HasPrefix(c, ChainPrefix) {
				w.deleteChain(c)
			}
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
