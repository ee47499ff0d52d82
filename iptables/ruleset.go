package iptables

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
)

// Chain is a chain we own and its complete content, each rule without the "-A CHAIN"
// prefix.
type Chain struct {
	Name  string
	Rules []string
}

// Hook is a jump from a built-in chain into one of ours: the only kind of rule we put in
// chains we do not own.
type Hook struct {
	Table Table
	Chain string
	Rule  []string
}

// Ruleset is everything we want in the kernel's iptables, as far as we own it.
type Ruleset struct {
	Chains map[Table][]Chain
	Hooks  []Hook
}

// builtinChains are the chains our hooks may live in.
var builtinChains = map[string]bool{"PREROUTING": true, "INPUT": true, "FORWARD": true, "OUTPUT": true, "POSTROUTING": true}

// Apply makes the kernel hold exactly rs among the things we own, in one iptables-restore:
// every chain of rs is rewritten whole; every other chain with ChainPrefix is deleted,
// together with any hook in a built-in chain that still jumps to it (a leftover of the
// other proxy mode, or of an older version); then the hooks of rs are put in place.
// Nothing without ChainPrefix is touched. It returns the number of restore lines written
// and the number of rules in our chains per table.
//
// Equivalent to: `iptables-save`, then `iptables-restore --noflush` of our chains.
func Apply(ctx context.Context, ipt Interface, rs Ruleset) (lines int, rules map[Table]int, err error) {
	var out strings.Builder
	rules = map[Table]int{}
	for _, table := range []Table{TableFilter, TableNAT} {
		dump, err := ipt.Save(ctx, table)
		if err != nil {
			return 0, nil, fmt.Errorf("reading the %s table: %w", table, err)
		}
		want := map[string]bool{}
		w := &restoreWriter{}
		for _, c := range rs.Chains[table] {
			w.writeChain(c)
			want[c.Name] = true
			rules[table] += len(c.Rules)
		}
		// hooks holds our rules in built-in chains, by "chain target", as the dump prints them.
		hooks := map[string][]string{}
		sc := bufio.NewScanner(bytes.NewReader(dump))
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.HasPrefix(line, ":"+ChainPrefix):
				name, _, _ := strings.Cut(line[1:], " ")
				if !want[name] {
					w.deleteChain(name)
				}
			case strings.HasPrefix(line, "-A "):
				fields := strings.Fields(line)
				target := fields[len(fields)-1]
				if builtinChains[fields[1]] && strings.HasPrefix(target, ChainPrefix) {
					hooks[fields[1]+" "+target] = append(hooks[fields[1]+" "+target], line)
				}
			}
		}
		if err := sc.Err(); err != nil {
			return 0, nil, fmt.Errorf("reading the %s table: %w", table, err)
		}
		writeHooks(w, table, rs.Hooks, hooks)
		lines += w.writeTo(&out, table)
	}
	if lines > 0 {
		if err := ipt.Restore(ctx, []byte(out.String())); err != nil {
			return 0, nil, err
		}
	}
	return lines, rules, nil
}

// writeHooks puts the hooks into the same restore as the chains they jump to, so a full
// sync is one atomic write (and one process) whatever the state of the hooks. A wanted
// hook the dump shows is kept; a missing one is inserted at the top of its chain; any
// other rule of ours in a built-in chain (a duplicate, a hook into a chain we no longer
// have, or a hook printed in a form this version does not write) is deleted. Checking
// hooks one by one instead would cost a process each, and with the legacy flavor each
// reads the whole table: at 10,000 Services, more than the restore itself.
func writeHooks(w *restoreWriter, table Table, wanted []Hook, existing map[string][]string) {
	for _, h := range wanted {
		if h.Table != table {
			continue
		}
		key := h.Chain + " " + h.Rule[len(h.Rule)-1]
		line := h.saveLine()
		if i := slices.Index(existing[key], line); i >= 0 {
			existing[key] = slices.Delete(existing[key], i, i+1)
			continue
		}
		w.rules = append(w.rules, "-I "+h.Chain+" 1"+strings.TrimPrefix(line, "-A "+h.Chain))
	}
	for _, key := range slices.Sorted(maps.Keys(existing)) {
		for _, line := range existing[key] {
			w.rules = append(w.rules, "-D"+line[2:])
		}
	}
}

// saveLine is the hook as iptables-save prints it.
func (h Hook) saveLine() string {
	args := make([]string, len(h.Rule))
	for i, a := range h.Rule {
		if strings.ContainsAny(a, " \t") {
			a = strconv.Quote(a)
		}
		args[i] = a
	}
	return "-A " + h.Chain + " " + strings.Join(args, " ")
}

// Cleanup removes everything switchyard owns in iptables, in either proxy mode: every
// chain with ChainPrefix and every hook that jumps to one. It is idempotent.
func Cleanup(ctx context.Context, ipt Interface) error {
	if _, _, err := Apply(ctx, ipt, Ruleset{}); err != nil {
		return fmt.Errorf("removing switchyard's iptables rules: %w", err)
	}
	return removeCanary(ctx, ipt)
}

// restoreWriter accumulates one table's section of an iptables-restore input. Chain
// declarations must precede the rules that use them, and deletions must follow the rules
// that stopped referencing them, so the three parts are kept apart until written.
type restoreWriter struct {
	declare []string
	rules   []string
	remove  []string
}

func (w *restoreWriter) declareChain(name string) {
	w.declare = append(w.declare, ":"+name+" - [0:0]")
}

func (w *restoreWriter) writeChain(c Chain) {
	w.declareChain(c.Name)
	for _, r := range c.Rules {
		w.rules = append(w.rules, "-A "+c.Name+" "+r)
	}
}

// deleteChain flushes (by declaring) and then deletes a chain.
func (w *restoreWriter) deleteChain(name string) {
	w.declareChain(name)
	w.remove = append(w.remove, "-X "+name)
}

// additions counts the rules the section writes, appended or inserted.
func (w *restoreWriter) additions() int {
	n := 0
	for _, r := range w.rules {
		if strings.HasPrefix(r, "-A ") || strings.HasPrefix(r, "-I ") {
			n++
		}
	}
	return n
}

func (w *restoreWriter) empty() bool {
	return len(w.declare) == 0 && len(w.rules) == 0 && len(w.remove) == 0
}

func (w *restoreWriter) writeTo(b *strings.Builder, table Table) int {
	if w.empty() {
		return 0
	}
	b.WriteString("*" + string(table) + "\n")
	for _, part := range [][]string{w.declare, w.rules, w.remove} {
		for _, l := range part {
			b.WriteString(l)
			b.WriteByte('\n')
		}
	}
	b.WriteString("COMMIT\n")
	return len(w.declare) + len(w.rules) + len(w.remove) + 2
}
