package iptables

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"

	"github.com/switchyard/switchyard/internal/behaviour"
	"github.com/switchyard/switchyard/proxier"
)

// fakeTables is a stateful iptables: it applies restore inputs with --noflush semantics
// (a declared chain is flushed, -A/-I/-D edit rules, -X deletes an empty, unreferenced
// chain) and fails like the kernel when an input is inconsistent.
type fakeTables struct {
	chains map[Table]map[string][][]string
}

func newFakeTables() *fakeTables {
	return &fakeTables{chains: map[Table]map[string][][]string{
		TableNAT:    {"PREROUTING": nil, "OUTPUT": nil, "POSTROUTING": nil},
		TableFilter: {"INPUT": nil, "FORWARD": nil, "OUTPUT": nil},
	}}
}

func (f *fakeTables) Restore(_ context.Context, data []byte) error {
	var table Table
	for i, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		tokens := splitRule(line)
		switch {
		case strings.HasPrefix(line, "*"):
			table = Table(line[1:])
		case line == "COMMIT":
		case strings.HasPrefix(line, ":"):
			f.chains[table][tokens[0][1:]] = nil
		case len(tokens) >= 2:
			chain, rule := tokens[1], tokens[2:]
			rules, ok := f.chains[table][chain]
			if !ok {
				return fmt.Errorf("line %d: %q: no chain %s", i+1, line, chain)
			}
			switch tokens[0] {
			case "-A":
				f.chains[table][chain] = append(rules, rule)
			case "-I":
				pos, _ := strconv.Atoi(rule[0])
				f.chains[table][chain] = slices.Insert(rules, pos-1, rule[1:])
			case "-D":
				j := slices.IndexFunc(rules, func(r []string) bool { return slices.Equal(r, rule) })
				if j < 0 {
					return fmt.Errorf("line %d: %q: no such rule", i+1, line)
				}
				f.chains[table][chain] = slices.Delete(rules, j, j+1)
			case "-X":
				if len(rules) > 0 {
					return fmt.Errorf("line %d: %q: chain not empty", i+1, line)
				}
				delete(f.chains[table], chain)
			}
		}
	}
	// Like the kernel, refuse a table in which a rule jumps to a chain that does not exist
	// (the kernel rejects the whole restore then).
	for table, chains := range f.chains {
		for chain, rules := range chains {
			for _, rule := range rules {
				if i := slices.Index(rule, "-j"); i >= 0 && strings.HasPrefix(rule[i+1], ChainPrefix) {
					if _, ok := chains[rule[i+1]]; !ok {
						return fmt.Errorf("%s %s jumps to %s, which does not exist", table, chain, rule[i+1])
					}
				}
			}
		}
	}
	return nil
}

func (f *fakeTables) Save(context.Context, Table) ([]byte, error) { return nil, nil }
func (f *fakeTables) Flavor() Flavor                              { return Nft }
func (f *fakeTables) rules(table Table, chain string) ([][]string, bool) {
	r, ok := f.chains[table][chain]
	return r, ok
}

// packet is what the tracer follows.
type packet struct {
	src, dst netip.Addr
	proto    string
	dport    uint16
	fromNode bool
}

// result is one way a packet can leave a chain: DNATed, with a verdict, or returning.
type result struct {
	dnat    string
	verdict string
	masq    bool
}

// walk follows a packet through a chain. A rule with -m statistic is a fork: the packet
// may take it or not, so every way out is returned.
func (f *fakeTables) walk(t *testing.T, table Table, chain string, p packet, masq bool) []result {
	rules, ok := f.rules(table, chain)
	if !ok {
		t.Fatalf("jump to missing chain %s %s", table, chain)
	}
	var out []result
	for _, rule := range rules {
		m := match(t, rule, p)
		if !m.ok {
			continue
		}
		switch m.target {
		case MarkMasqChain:
			masq = true
			continue
		case "DNAT":
			out = append(out, result{dnat: m.toDestination, masq: masq})
		case "ACCEPT":
			out = append(out, result{verdict: "ACCEPT", masq: masq})
		case "REJECT":
			out = append(out, result{verdict: behaviour.Reject, masq: masq})
		case "DROP":
			out = append(out, result{verdict: behaviour.Drop, masq: masq})
		case "RETURN":
			return append(out, result{masq: masq})
		case "MARK", "MASQUERADE", "":
			continue
		default:
			var returned bool
			for _, r := range f.walk(t, table, m.target, p, masq) {
				if r.dnat == "" && r.verdict == "" {
					returned, masq = true, r.masq
				} else {
					out = append(out, r)
				}
			}
			if returned || m.random {
				continue
			}
		}
		if !m.random {
			return out
		}
	}
	return append(out, result{masq: masq})
}

type matched struct {
	ok            bool
	random        bool
	target        string
	toDestination string
}

// match evaluates the matches of one rule against a packet (for a client seen for the
// first time: a `recent --rcheck` never matches).
func match(t *testing.T, rule []string, p packet) matched {
	m := matched{ok: true}
	neg := false
	for i := 0; i < len(rule); i++ {
		tok := rule[i]
		next := func() string { i++; return rule[i] }
		cond := true
		switch tok {
		case "!":
			neg = true
			continue
		case "-d", "-s":
			pfx := netip.MustParsePrefix(next())
			addr := p.dst
			if tok == "-s" {
				addr = p.src
			}
			cond = pfx.Contains(addr)
		case "-p":
			cond = next() == p.proto
		case "--dport":
			cond = next() == strconv.Itoa(int(p.dport))
		case "--dst-type":
			next()
			cond = p.dst == behaviour.NodeIP || p.dst.IsLoopback()
		case "--src-type":
			next()
			cond = p.fromNode
		case "--rcheck":
			cond = false
		case "--mode":
			m.random = next() == "random"
		case "-j":
			m.target = next()
		case "--to-destination":
			m.toDestination = next()
		case "--comment", "--probability", "--name", "--mask", "--seconds", "--ctstate", "--or-mark", "--xor-mark", "--mark", "-m":
			next()
		case "--reap", "--set", "--random-fully":
		default:
			t.Fatalf("tracer does not know %q in rule %q", tok, rule)
		}
		if cond == neg {
			m.ok = false
		}
		neg = false
	}
	return m
}

// trace runs a flow through nat SWYD-SERVICES (where PREROUTING and OUTPUT send it), and,
// when nothing DNATs it, through filter SWYD-SERVICES.
func (f *fakeTables) trace(t *testing.T, fl behaviour.Flow) behaviour.Outcome {
	p := packet{src: fl.Src, dst: fl.Dst.Addr(), dport: fl.Dst.Port(), proto: strings.ToLower(string(fl.Protocol)), fromNode: fl.FromNode}
	var out behaviour.Outcome
	for _, r := range f.walk(t, TableNAT, ServicesChain, p, false) {
		if r.dnat == "" {
			continue
		}
		if !slices.Contains(out.Endpoints, r.dnat) {
			out.Endpoints = append(out.Endpoints, r.dnat)
		}
		out.Masq = r.masq
	}
	if len(out.Endpoints) > 0 {
		slices.Sort(out.Endpoints)
		return out
	}
	for _, r := range f.walk(t, TableFilter, ServicesChain, p, false) {
		if r.verdict != "" {
			return behaviour.Outcome{Verdict: r.verdict}
		}
	}
	return behaviour.Outcome{Verdict: behaviour.Untouched}
}

// TestBehaviourSuite runs the shared behaviour suite against the rules this backend
// renders: once after one full sync, and once after building the same state with partial
// syncs only, which must behave the same.
func TestBehaviourSuite(t *testing.T) {
	cfg := RenderConfig{ResolveConfig: proxier.ResolveConfig{ClusterCIDR: behaviour.ClusterCIDR}, MasqueradeMark: "0x4000", NodeName: behaviour.NodeName}
	want := behaviour.State()
	builds := map[string]func(b *Backend) error{
		"full sync": func(b *Backend) error { return b.Sync(context.Background(), want, proxier.Changes{Full: true}) },
		"partial syncs": func(b *Backend) error {
			growing := &proxier.State{NodeName: want.NodeName, NodeLabels: want.NodeLabels, Services: map[proxier.ServicePortName]*proxier.ServicePort{}, Endpoints: map[proxier.ServicePortName][]proxier.Endpoint{}}
			if err := b.Sync(context.Background(), growing, proxier.Changes{Full: true}); err != nil {
				return err
			}
			for name, sp := range want.Services {
				growing.Services[name] = sp
				growing.Endpoints[name] = want.Endpoints[name]
				if err := b.Sync(context.Background(), growing, proxier.Changes{ServicePorts: map[proxier.ServicePortName]struct{}{name: {}}}); err != nil {
					return err
				}
			}
			return nil
		},
	}
	for build, sync := range builds {
		t.Run(build, func(t *testing.T) {
			tables := newFakeTables()
			b := NewBackend(tables, cfg, prometheus.NewRegistry(), klog.Background())
			if err := sync(b); err != nil {
				t.Fatal(err)
			}
			for _, fl := range behaviour.Flows() {
				got := tables.trace(t, fl)
				if diff := cmp.Diff(fl.WantFor("iptables"), got); diff != "" {
					t.Errorf("%s (%s -> %s/%s): (-want +got)\n%s", fl.Name, fl.Src, fl.Dst, fl.Protocol, diff)
				}
			}
		})
	}
}
