// Package iptables is the iptables backend: nat-table chains that DNAT Service traffic to
// endpoints, and filter-table rules that reject traffic to Services without endpoints. It
// also holds the iptables helpers other modes need.
package iptables

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Flavor is the iptables implementation the node uses. Both program the same tables with
// the same syntax, but rules written with one are invisible to the other, so a proxy must
// use whichever the rest of the node (kubelet, CNI plugins) uses.
type Flavor string

// The two flavors shipped by iptables 1.8.
const (
	Nft    Flavor = "nft"
	Legacy Flavor = "legacy"
)

// Table is an iptables table.
type Table string

// The tables this backend writes.
const (
	TableNAT    Table = "nat"
	TableFilter Table = "filter"
	// TableMangle only ever holds the canary chain (canary.go).
	TableMangle Table = "mangle"
)

// Interface is the backend's whole boundary to the kernel's iptables.
type Interface interface {
	// Restore applies an iptables-restore input without flushing the tables it names, so
	// only the chains it declares are rewritten.
	//
	// Equivalent to: `iptables-restore --noflush`
	Restore(ctx context.Context, data []byte) error
	// Save dumps a table in iptables-restore format.
	//
	// Equivalent to: `iptables-save -t TABLE`
	Save(ctx context.Context, table Table) ([]byte, error)
	// Flavor tells which iptables implementation this is.
	Flavor() Flavor
}

// lockWait is how long a command waits for the xtables lock held by another program
// before failing (the sync is then retried).
const lockWait = 5 * time.Second

type runner struct {
	flavor  Flavor
	ipv6    bool
	restore string
	save    string
}

// New returns the Interface for one flavor and IP family.
func New(flavor Flavor, ipv6 bool) (Interface, error) {
	base := "iptables"
	if ipv6 {
		base = "ip6tables"
	}
	r := &runner{flavor: flavor, ipv6: ipv6}
	var err error
	if r.restore, err = exec.LookPath(fmt.Sprintf("%s-%s-restore", base, flavor)); err != nil {
		return nil, fmt.Errorf("iptables %s flavor: %w (install the iptables package)", flavor, err)
	}
	if r.save, err = exec.LookPath(fmt.Sprintf("%s-%s-save", base, flavor)); err != nil {
		return nil, fmt.Errorf("iptables %s flavor: %w (install the iptables package)", flavor, err)
	}
	return r, nil
}

func (r *runner) Flavor() Flavor { return r.flavor }

func (r *runner) Restore(ctx context.Context, data []byte) error {
	// --wait makes a legacy restore queue behind other writers instead of failing at once;
	// the nft flavor accepts and ignores it.
	cmd := exec.CommandContext(ctx, r.restore, "--noflush", "--wait", fmt.Sprint(int(lockWait.Seconds())))
	cmd.Stdin = bytes.NewReader(data)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return &RestoreError{Err: err, Stderr: strings.TrimSpace(stderr.String()), Input: data}
	}
	return nil
}

func (r *runner) Save(ctx context.Context, table Table) ([]byte, error) {
	out, err := exec.CommandContext(ctx, r.save, "-t", string(table)).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			stderr := bytes.TrimSpace(ee.Stderr)
			if bytes.Contains(stderr, []byte("Table does not exist")) {
				err = fmt.Errorf("%w: %w", ErrNoTable, err)
			}
			return nil, fmt.Errorf("%s -t %s: %w: %s", r.save, table, err, stderr)
		}
		return nil, fmt.Errorf("%s -t %s: %w", r.save, table, err)
	}
	return out, nil
}

// ErrNoTable is what Save returns, wrapped, for a table the kernel does not have (some
// kernels build no IPv6 mangle table, for one).
var ErrNoTable = errors.New("the kernel has no such table")

// RestoreError is a failed iptables-restore, with the lines around the one it rejected.
type RestoreError struct {
	Err    error
	Stderr string
	Input  []byte
}

func (e *RestoreError) Error() string {
	msg := fmt.Sprintf("iptables-restore: %v: %s", e.Err, e.Stderr)
	// Show the failing line's neighbours, so the log says what was wrong without dumping
	// the whole input.
	if n := e.lineNumber(); n > 0 {
		lines := strings.Split(string(e.Input), "\n")
		from, to := max(n-3, 0), min(n+2, len(lines))
		msg += "\ninput lines around the failure:\n" + strings.Join(lines[from:to], "\n")
	}
	return msg
}

func (e *RestoreError) Unwrap() error { return e.Err }

// Message is what iptables-restore said, on one line and without its usage hint.
func (e *RestoreError) Message() string {
	var parts []string
	for _, l := range strings.Split(e.Stderr, "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "Try `") {
			parts = append(parts, l)
		}
	}
	return strings.Join(parts, " ")
}

// failedLine matches how iptables-restore names the line it failed at: "line 12 failed"
// (both flavors), "Error occurred at line: 12" (both, for a rule they cannot parse) and
// "line 12: RULE_APPEND failed (...)" (nft, for a rule the kernel refused).
var failedLine = regexp.MustCompile(`line:? (\d+)`)

// missingChain is iptables-nft-restore's complaint about a jump to a chain that does not
// exist, which it makes at the COMMIT of the table rather than at the rule.
var missingChain = regexp.MustCompile(`Chain '([^']+)' does not exist`)

// lineNumber is the line iptables-restore says it failed at, from 1; 0 when it names none.
func (e *RestoreError) lineNumber() int {
	m := failedLine.FindStringSubmatch(e.Stderr)
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// RefusedLine is the line of a restore input that iptables-restore failed at.
type RefusedLine struct {
	Text string
	// Table is the table whose section holds the line. Committed are the tables of the
	// sections before it: iptables-restore commits each section at its COMMIT, so those
	// took effect although the restore failed.
	Table     Table
	Committed []Table
}

// RefusedLine finds the line iptables-restore failed at, or reports false when its output
// names none. iptables-nft-restore blames a jump to a missing chain on the COMMIT of its
// table; the line is then the first rule of that section that jumps there. The legacy
// flavor blames every rule the kernel refuses (a target in the wrong table, say) on the
// COMMIT, and names no rule.
func (e *RestoreError) RefusedLine() (RefusedLine, bool) {
	n := e.lineNumber()
	lines := strings.Split(string(e.Input), "\n")
	if n < 1 || n > len(lines) {
		return RefusedLine{}, false
	}
	var r RefusedLine
	start := 0 // of the failing line's section
	for i, l := range lines[:n] {
		switch {
		case strings.HasPrefix(l, "*"):
			r.Table, start = Table(l[1:]), i
		case l == "COMMIT" && i < n-1:
			r.Committed = append(r.Committed, r.Table)
		}
	}
	r.Text = lines[n-1]
	if m := missingChain.FindStringSubmatch(e.Stderr); m != nil && r.Text == "COMMIT" {
		for _, l := range lines[start:n] {
			if strings.HasPrefix(l, "-") && SavedRule(l).Target() == m[1] {
				r.Text = l
				break
			}
		}
	}
	return r, true
}

// DetectFlavor decides which iptables flavor the node uses, the way kube-proxy's image
// does: the flavor holding kubelet's KUBE-IPTABLES-HINT (or KUBE-KUBELET-CANARY) chain
// wins; otherwise the one with more rules; nft when both are empty and it is installed.
func DetectFlavor(ctx context.Context) (Flavor, error) {
	type seen struct {
		ok    bool
		hint  bool
		rules int
	}
	probe := func(f Flavor) seen {
		save, err := exec.LookPath(fmt.Sprintf("iptables-%s-save", f))
		if err != nil {
			return seen{}
		}
		out, err := exec.CommandContext(ctx, save).Output()
		if err != nil {
			return seen{}
		}
		s := seen{ok: true}
		for _, line := range strings.Split(string(out), "\n") {
			switch {
			case strings.HasPrefix(line, ":KUBE-IPTABLES-HINT"), strings.HasPrefix(line, ":KUBE-KUBELET-CANARY"):
				s.hint = true
			case strings.HasPrefix(line, "-A "):
				s.rules++
			}
		}
		return s
	}
	nft, legacy := probe(Nft), probe(Legacy)
	switch {
	case !nft.ok && !legacy.ok:
		return "", errors.New("neither iptables-nft-save nor iptables-legacy-save works (install the iptables package)")
	case nft.hint != legacy.hint:
		if nft.hint {
			return Nft, nil
		}
		return Legacy, nil
	case legacy.ok && (!nft.ok || legacy.rules > nft.rules):
		return Legacy, nil
	default:
		return Nft, nil
	}
}
