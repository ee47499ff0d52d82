package iptables

import (
	"bufio"
	"strings"
)

// SavedRule is one rule of a switchyard chain as iptables-save prints it (or as a restore
// input writes it), without the leading "-A CHAIN".
type SavedRule string

// Comment is the rule's comment, or "" when it has none.
func (r SavedRule) Comment() string {
	fields := SplitRule(string(r))
	for i, f := range fields {
		if f == "--comment" && i+1 < len(fields) {
			return fields[i+1]
		}
	}
	return ""
}

// Target is the chain or target the rule jumps (-j) or goes (-g) to, or "" when it has
// none.
func (r SavedRule) Target() string {
	fields := SplitRule(string(r))
	for i, f := range fields {
		if (f == "-j" || f == "-g") && i+1 < len(fields) {
			return fields[i+1]
		}
	}
	return ""
}

// essentialFlags are the options that decide where a packet goes; the rest (comments,
// match module names, how iptables-save spells marks and probabilities) differs between
// what we write and what iptables-save prints back.
var essentialFlags = map[string]bool{"-s": true, "-d": true, "-p": true, "--dport": true, "--to-destination": true, "-j": true}

// Essential is the rule reduced to what decides a packet's fate: addresses, protocol,
// port, DNAT destination and jump target. Two rules with the same essential form do the
// same thing, whichever tool printed them.
func (r SavedRule) Essential() string {
	fields := SplitRule(string(r))
	var out []string
	negate := false
	for i := 0; i < len(fields); i++ {
		switch f := fields[i]; {
		case f == "!":
			negate = true
			continue
		case essentialFlags[f] && i+1 < len(fields):
			if negate {
				f = "!" + f
			}
			// iptables-save prints a host address with its prefix length.
			out = append(out, f, strings.TrimSuffix(strings.TrimSuffix(fields[i+1], "/32"), "/128"))
			i++
		}
		negate = false
	}
	return strings.Join(out, " ")
}

// ParseSaved reads iptables-save output or iptables-restore input and returns the rules
// of every switchyard chain, keyed "table chain" (e.g. "nat SWYD-SERVICES"), in order. A
// declared chain without rules is present with none.
func ParseSaved(text string) map[string][]SavedRule {
	chains := map[string][]SavedRule{}
	table := ""
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "*"):
			table = line[1:]
		case strings.HasPrefix(line, ":"+ChainPrefix):
			name, _, _ := strings.Cut(line[1:], " ")
			if _, ok := chains[table+" "+name]; !ok {
				chains[table+" "+name] = []SavedRule{}
			}
		case strings.HasPrefix(line, "-A "+ChainPrefix):
			chain, rule, _ := strings.Cut(line[len("-A "):], " ")
			key := table + " " + chain
			chains[key] = append(chains[key], SavedRule(rule))
		}
	}
	return chains
}

// SplitRule splits a rule into fields as iptables-restore does, keeping double-quoted
// arguments (comments) whole.
func SplitRule(line string) []string {
	var fields []string
	var cur strings.Builder
	quoted := false
	for _, r := range line {
		switch {
		case r == '"':
			quoted = !quoted
		case r == ' ' && !quoted:
			if cur.Len() > 0 {
				fields = append(fields, cur.String())
				cur.Reset()
			}
		default:
			cur.WriteRune(r)
		}
	}
	if cur.Len() > 0 {
		fields = append(fields, cur.String())
	}
	return fields
}
