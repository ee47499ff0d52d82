// Package iptablestest is an in-memory iptables for tests of the backends that program it.
// Fake applies iptables-restore inputs the way the kernel does, refusing what it refuses,
// and answers iptables-save; Trace follows a new connection through its tables from the
// built-in hooks, as netfilter does (and through IPVS, where given one), so tests can
// assert what happens to packets rather than which rules were written.
package iptablestest

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/switchyard/switchyard/iptables"
)

// builtinChains are each table's built-in chains, in the order iptables-save prints them.
var builtinChains = map[iptables.Table][]string{
	iptables.TableNAT:    {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"},
	iptables.TableFilter: {"INPUT", "FORWARD", "OUTPUT"},
	iptables.TableMangle: {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"},
}

// targets are the built-in targets the fake accepts, which are those the tracer
// follows: any other -j must name a chain. Some the kernel accepts only in one table,
// and only in rules reachable from some hooks.
var targets = map[string]struct {
	table iptables.Table
	hooks []string
}{
	"ACCEPT": {}, "DROP": {}, "RETURN": {}, "MARK": {},
	"REJECT":     {iptables.TableFilter, []string{"INPUT", "FORWARD", "OUTPUT"}},
	"DNAT":       {iptables.TableNAT, []string{"PREROUTING", "OUTPUT"}},
	"MASQUERADE": {iptables.TableNAT, []string{"POSTROUTING"}},
}

// Fake is a stateful iptables implementing iptables.Interface. Rules are kept and printed
// as written, where iptables-save would canonicalise some options (a host address's /32,
// the order of -d and -m); -D therefore needs the rule spelt as it was added, which is
// what the backends do.
type Fake struct {
	mu     sync.Mutex
	tables map[iptables.Table]*table
	reject func(chain string, rule iptables.SavedRule) bool
}

type table struct {
	name iptables.Table
	// policy holds the policy of each built-in chain, and only of them.
	policy map[string]string
	chains map[string][]iptables.SavedRule
	// refs counts the rules that jump to each chain, which may then not be deleted.
	refs map[string]int
	// owned holds, while a section edits the table, the chains whose rules it has copied
	// and may change in place.
	owned map[string]bool
	// reject, while a section edits the table, is the Fake's (see RejectRules).
	reject func(chain string, rule iptables.SavedRule) bool
}

// NewFake returns an iptables with empty nat, filter and mangle tables whose built-in
// chains accept by policy.
func NewFake() *Fake {
	f := &Fake{tables: map[iptables.Table]*table{}}
	for name, builtins := range builtinChains {
		t := &table{name: name, policy: map[string]string{}, chains: map[string][]iptables.SavedRule{}, refs: map[string]int{}}
		for _, c := range builtins {
			t.policy[c], t.chains[c] = "ACCEPT", nil
		}
		f.tables[name] = t
	}
	return f
}

// RejectRules makes the fake refuse every rule added to a chain (-A, -I) for which reject
// returns true, as the kernel refuses a rule with a match or target it lacks: the restore
// fails at that line. nil refuses none.
func (f *Fake) RejectRules(reject func(chain string, rule iptables.SavedRule) bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reject = reject
}

// Flavor is part of iptables.Interface.
func (f *Fake) Flavor() iptables.Flavor { return iptables.Nft }

// Save is part of iptables.Interface: built-in chains first, then the others by name.
func (f *Fake) Save(_ context.Context, name iptables.Table) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	t, ok := f.tables[name]
	if !ok {
		return nil, fmt.Errorf("iptables-save -t %s: %w", name, iptables.ErrNoTable)
	}
	chains := slices.Clone(builtinChains[name])
	for _, c := range slices.Sorted(maps.Keys(t.chains)) {
		if _, builtin := t.policy[c]; !builtin {
			chains = append(chains, c)
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "*%s\n", name)
	for _, c := range chains {
		fmt.Fprintf(&b, ":%s %s [0:0]\n", c, cmp.Or(t.policy[c], "-"))
	}
	for _, c := range chains {
		for _, r := range t.chains[c] {
			fmt.Fprintf(&b, "-A %s %s\n", c, r)
		}
	}
	b.WriteString("COMMIT\n")
	return []byte(b.String()), nil
}

// Restore is part of iptables.Interface, with --noflush: declaring a chain of one's own
// creates or flushes it, declaring a built-in one only sets its policy. As with
// iptables-restore, each table's section takes effect at its COMMIT or not at all, so a
// failing section leaves the sections committed before it in place. The error is an
// *iptables.RestoreError naming the failing line.
func (f *Fake) Restore(_ context.Context, data []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	lines := strings.Split(string(data), "\n")
	// edit is a copy of the table being changed, installed at COMMIT.
	var edit *table
	for i, line := range lines {
		line = strings.TrimSpace(line)
		var err error
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "*"):
			t, ok := f.tables[iptables.Table(line[1:])]
			switch {
			case edit != nil:
				err = errors.New("COMMIT expected")
			case !ok:
				err = fmt.Errorf("no table %s", line[1:])
			default:
				edit = t.clone()
				edit.reject = f.reject
			}
		case edit == nil:
			err = errors.New("no table given")
		case line == "COMMIT":
			if err = edit.check(); err == nil {
				f.tables[edit.name], edit = edit, nil
			}
		default:
			err = edit.apply(iptables.SplitRule(line))
		}
		if err != nil {
			return &iptables.RestoreError{Err: fmt.Errorf("%q: %w", line, err), Stderr: fmt.Sprintf("line %d failed", i+1), Input: data}
		}
	}
	if edit != nil {
		return &iptables.RestoreError{Err: errors.New("COMMIT expected"), Stderr: fmt.Sprintf("line %d failed", len(lines)), Input: data}
	}
	return nil
}

// clone copies the table for a section to edit: its rules stay shared with t until own
// copies them, so a section that fails leaves t as it was.
func (t *table) clone() *table {
	return &table{name: t.name, policy: maps.Clone(t.policy), chains: maps.Clone(t.chains), refs: maps.Clone(t.refs), owned: map[string]bool{}}
}

// own returns a chain's rules for changing in place.
func (t *table) own(chain string) []iptables.SavedRule {
	if !t.owned[chain] {
		t.chains[chain], t.owned[chain] = slices.Clone(t.chains[chain]), true
	}
	return t.chains[chain]
}

// flush empties a chain, or creates it empty.
func (t *table) flush(chain string) {
	for _, r := range t.chains[chain] {
		t.refs[r.Target()]--
	}
	t.chains[chain], t.owned[chain] = nil, true
}

// apply applies one line of a section other than its header and COMMIT.
func (t *table) apply(fields []string) error {
	if strings.HasPrefix(fields[0], ":") {
		name := fields[0][1:]
		if len(fields) < 2 {
			return errors.New("no policy")
		}
		_, builtin := t.policy[name]
		switch policy := fields[1]; {
		case builtin && (policy == "ACCEPT" || policy == "DROP"):
			t.policy[name] = policy
		case !builtin && policy == "-":
			t.flush(name)
		default:
			return fmt.Errorf("bad policy %s for chain %s", policy, name)
		}
		return nil
	}
	if len(fields) < 2 {
		return errors.New("no chain given")
	}
	cmd, chain, args := fields[0], fields[1], fields[2:]
	rules, exists := t.chains[chain]
	_, builtin := t.policy[chain]
	if cmd == "-N" {
		if exists {
			return errors.New("chain already exists")
		}
		t.flush(chain)
		return nil
	}
	if !exists {
		return fmt.Errorf("no chain %s", chain)
	}
	switch cmd {
	case "-A", "-I":
		pos := len(rules) + 1
		if cmd == "-I" {
			pos = 1
			if len(args) > 0 {
				if n, err := strconv.Atoi(args[0]); err == nil {
					pos, args = n, args[1:]
				}
			}
		}
		if pos < 1 || pos > len(rules)+1 {
			return errors.New("index of insertion too big")
		}
		r := savedRule(args)
		if t.reject != nil && t.reject(chain, r) {
			return errors.New("the kernel refuses this rule")
		}
		if err := t.checkTarget(r.Target()); err != nil {
			return err
		}
		t.refs[r.Target()]++
		t.chains[chain] = slices.Insert(t.own(chain), pos-1, r)
	case "-D":
		i := slices.Index(rules, savedRule(args))
		if i < 0 {
			return errors.New("no such rule")
		}
		t.refs[rules[i].Target()]--
		t.chains[chain] = slices.Delete(t.own(chain), i, i+1)
	case "-F":
		t.flush(chain)
	case "-X":
		switch {
		case builtin:
			return errors.New("a built-in chain cannot be deleted")
		case len(rules) > 0:
			return errors.New("chain not empty")
		case t.refs[chain] > 0:
			return errors.New("chain in use")
		}
		delete(t.chains, chain)
	default:
		return fmt.Errorf("the fake does not support %s", cmd)
	}
	return nil
}

// savedRule spells a rule's fields as iptables-save prints them.
func savedRule(fields []string) iptables.SavedRule {
	quoted := make([]string, len(fields))
	for i, f := range fields {
		if strings.ContainsAny(f, " \t") {
			f = strconv.Quote(f)
		}
		quoted[i] = f
	}
	return iptables.SavedRule(strings.Join(quoted, " "))
}

// checkTarget refuses a jump to a chain that does not exist, or to a built-in target the
// table cannot hold.
func (t *table) checkTarget(target string) error {
	_, builtin := t.policy[target]
	_, chain := t.chains[target]
	spec, known := targets[target]
	switch {
	case target == "" || (chain && !builtin):
		return nil
	case !known:
		return fmt.Errorf("no chain/target %s", target)
	case spec.table != "" && spec.table != t.name:
		return fmt.Errorf("%s is only valid in the %s table", target, spec.table)
	}
	return nil
}

// check refuses a table the kernel would: one in which a chain reaches itself, or a
// target is reachable from a hook it is invalid in (DNAT from POSTROUTING).
func (t *table) check() error {
	for _, hook := range builtinChains[t.name] {
		if err := t.reach(hook, hook, map[string]bool{}); err != nil {
			return fmt.Errorf("from %s: %w", hook, err)
		}
	}
	return nil
}

// reach walks the chains reachable from chain. done records each chain once walked
// (false while it is being walked, so that a jump back to it is a loop).
func (t *table) reach(hook, chain string, done map[string]bool) error {
	done[chain] = false
	for _, r := range t.chains[chain] {
		target := r.Target()
		finished, seen := done[target]
		spec, builtin := targets[target]
		switch {
		case builtin && spec.hooks != nil && !slices.Contains(spec.hooks, hook):
			return fmt.Errorf("%s in %s is invalid there", target, chain)
		case builtin || target == "" || finished:
		case seen:
			return fmt.Errorf("%s loops back to %s", chain, target)
		default:
			if err := t.reach(hook, target, done); err != nil {
				return err
			}
		}
	}
	done[chain] = true
	return nil
}
