package iptablestest

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/switchyard/switchyard/iptables"
)

// Packet is the first packet of a new connection.
type Packet struct {
	// Protocol is "tcp", "udp" or "sctp", as -p spells it.
	Protocol string
	Src      netip.Addr
	Dst      netip.AddrPort
	// FromNode marks a packet sent by a process on the node, which meets nat OUTPUT;
	// any other arrives on an interface (from off-node or from a local pod) and meets
	// nat PREROUTING. Its source must be one of the node's addresses.
	FromNode bool
	// Local are the node's own addresses (loopback ones always are), with those bound
	// on kube-ipvs0 in IPVS mode. They decide `-m addrtype LOCAL`, and whether the
	// routing decision delivers a packet to the node or forwards it.
	Local []netip.Addr
	// InputPolicy, when set (ACCEPT or DROP), is filter INPUT's policy on the node
	// instead of the table's: DROP is a host firewall that admits only what some rule
	// accepts.
	InputPolicy string
}

// Sets answers `-m set` matches (IPVS mode's ipsets).
type Sets interface {
	// Match reports whether the set holds the entry that flags (such as "dst,dst", the
	// destination address and port) select from p. An unknown set is an error.
	Match(set, flags string, p Packet) (bool, error)
}

// IPVS is the node's IP Virtual Server table (IPVS mode), which Trace consults where the
// kernel's IPVS hooks take new connections (WithIPVS).
type IPVS interface {
	// Lookup returns the real servers of the virtual server on dst for protocol ("tcp",
	// as Packet spells it) that take new connections (those of weight above 0), and
	// whether there is such a virtual server.
	Lookup(protocol string, dst netip.AddrPort) (reals []netip.AddrPort, ok bool)
}

// TraceOption adds to what Trace follows a packet through besides the tables.
type TraceOption func(*tracer)

// WithIPVS makes Trace pass new connections to IPVS where the kernel's IPVS hooks take
// them (see ipvsHook).
func WithIPVS(v IPVS) TraceOption { return func(tr *tracer) { tr.ipvs = v } }

// Result is one way a new connection goes. Trace returns one per way, several where
// `-m statistic --mode random` spreads connections over rules.
type Result struct {
	// Verdict is ACCEPT (delivered: to the node, forwarded, or sent on by IPVS), DROP
	// or REJECT.
	Verdict string
	// Dst is the destination the connection ends at, after DNAT if DNAT is set.
	Dst  netip.AddrPort
	DNAT bool
	// Masquerade is set when nat POSTROUTING took the MASQUERADE target.
	Masquerade bool
	// Rules are the rules it matched, in order, as "table -A CHAIN rule", for messages.
	Rules []string
}

// hook is a built-in chain of a table, or ipvsHook.
type hook struct {
	table iptables.Table
	chain string
}

// ipvsHook is where IPVS takes new connections, among the tables' hooks: ip_vs_ops4 in
// net/netfilter/ipvs/ip_vs_core.c registers its request hook at NF_INET_LOCAL_IN with
// priority NF_IP_PRI_NAT_SRC - 1 (99: after mangle INPUT at -150 and filter INPUT at 0,
// before nat INPUT at 100), and at NF_INET_LOCAL_OUT with NF_IP_PRI_NAT_DST + 2 (-98:
// after mangle OUTPUT at -150 and nat OUTPUT at -100, before filter OUTPUT at 0). So
// filter INPUT sees traffic entering the node before IPVS does, while the node's own
// connections reach IPVS before any filter rule. Traffic the node forwards never meets
// IPVS, whose FORWARD hooks handle replies only.
var ipvsHook = hook{chain: "IPVS"}

// ipvsSent are the hooks a connection IPVS took meets on its way to the real server:
// the masquerading forwarding method (ip_vs_nat_xmit, the one the IPVS backend uses)
// rewrites the destination and sends the packet through NF_INET_LOCAL_OUT and then
// POSTROUTING (ip_vs_nat_send_or_cont). nat OUTPUT is not consulted there: the
// connection's destination NAT was settled in nat PREROUTING or OUTPUT already, and the
// nat table only sees a connection's first packet in each direction. IPVS's own hook
// passes over a packet it sent (ipvs_property).
var ipvsSent = []hook{{iptables.TableMangle, "OUTPUT"}, {iptables.TableFilter, "OUTPUT"}, {iptables.TableMangle, "POSTROUTING"}, {iptables.TableNAT, "POSTROUTING"}}

// Trace follows p through the built-in chains the way netfilter does for a new
// connection: from an interface, mangle and nat PREROUTING, then the routing decision on
// the destination after DNAT: to the node, mangle and filter INPUT and nat INPUT;
// elsewhere, mangle and filter FORWARD, mangle and nat POSTROUTING. From the node, mangle
// and nat OUTPUT, filter OUTPUT, mangle and nat POSTROUTING, and back in through mangle
// and filter INPUT when addressed to the node. WithIPVS adds IPVS at its hooks
// (ipvsHook). A match or target the tracer does not know is an error, never skipped;
// sets may be nil where no rule uses -m set.
func (f *Fake) Trace(p Packet, sets Sets, opts ...TraceOption) ([]Result, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	tr := &tracer{tables: f.tables, pkt: p, sets: sets}
	for _, o := range opts {
		o(tr)
	}
	switch p.InputPolicy {
	case "":
	case "ACCEPT", "DROP":
		filter := *f.tables[iptables.TableFilter]
		filter.policy = maps.Clone(filter.policy)
		filter.policy["INPUT"] = p.InputPolicy
		tr.tables = maps.Clone(f.tables)
		tr.tables[iptables.TableFilter] = &filter
	default:
		return nil, fmt.Errorf("no policy %s for filter INPUT", p.InputPolicy)
	}
	first := []hook{{iptables.TableMangle, "PREROUTING"}, {iptables.TableNAT, "PREROUTING"}}
	if p.FromNode {
		if !tr.local(p.Src) {
			return nil, fmt.Errorf("a packet from the node comes from %s, which is not one of its addresses", p.Src)
		}
		first = []hook{{iptables.TableMangle, "OUTPUT"}, {iptables.TableNAT, "OUTPUT"}, ipvsHook}
	}
	routed, results, err := tr.through(first, path{dst: p.Dst})
	if err != nil {
		return nil, err
	}
	for _, pa := range routed {
		delivered, stopped, err := tr.through(tr.afterRouting(pa), pa)
		if err != nil {
			return nil, err
		}
		results = append(results, stopped...)
		for _, d := range delivered {
			results = append(results, d.result("ACCEPT"))
		}
	}
	return results, nil
}

// afterRouting lists the hooks a connection meets once routed.
func (tr *tracer) afterRouting(p path) []hook {
	toNode := tr.local(p.dst.Addr())
	mangle := func(chain string) hook { return hook{iptables.TableMangle, chain} }
	filter := func(chain string) hook { return hook{iptables.TableFilter, chain} }
	nat := func(chain string) hook { return hook{iptables.TableNAT, chain} }
	switch {
	case tr.pkt.FromNode && toNode:
		// Out through loopback and back in, where nat INPUT is not consulted: the
		// connection's NAT was settled on the way out.
		return []hook{filter("OUTPUT"), mangle("POSTROUTING"), nat("POSTROUTING"), mangle("INPUT"), filter("INPUT"), ipvsHook}
	case tr.pkt.FromNode:
		return []hook{filter("OUTPUT"), mangle("POSTROUTING"), nat("POSTROUTING")}
	case toNode:
		return []hook{mangle("INPUT"), filter("INPUT"), ipvsHook, nat("INPUT")}
	default:
		return []hook{mangle("FORWARD"), filter("FORWARD"), mangle("POSTROUTING"), nat("POSTROUTING")}
	}
}

type tracer struct {
	tables map[iptables.Table]*table
	pkt    Packet
	sets   Sets
	ipvs   IPVS
}

// path is the state of one way through the tables.
type path struct {
	dst  netip.AddrPort
	dnat bool
	// virtual is the virtual server IPVS sent the connection on from, when it did.
	virtual netip.AddrPort
	mark    uint64
	masq    bool
	rules   []string
}

func (p path) result(verdict string) Result {
	return Result{Verdict: verdict, Dst: p.dst, DNAT: p.dnat, Masquerade: p.masq, Rules: p.rules}
}

func (tr *tracer) local(a netip.Addr) bool {
	return a.IsLoopback() || slices.Contains(tr.pkt.Local, a)
}

// through runs p through hooks in turn: the paths that come out of the last one
// accepted, and the results of those that ended on the way: dropped, rejected, or sent
// to a real server by IPVS.
func (tr *tracer) through(hooks []hook, p path) (accepted []path, stopped []Result, err error) {
	accepted = []path{p}
	for _, h := range hooks {
		var next []path
		for _, p := range accepted {
			if h == ipvsHook {
				passed, ended, err := tr.throughIPVS(p)
				if err != nil {
					return nil, nil, err
				}
				next, stopped = append(next, passed...), append(stopped, ended...)
				continue
			}
			exits, err := tr.walk(h.table, h.chain, 0, p)
			if err != nil {
				return nil, nil, err
			}
			for _, e := range exits {
				// Falling off the end of a built-in chain, or returning from it, takes its
				// policy. ACCEPT ends this table's traversal, not the packet's.
				if verdict := cmp.Or(e.verdict, tr.tables[h.table].policy[h.chain]); verdict == "ACCEPT" {
					next = append(next, e.path)
				} else {
					stopped = append(stopped, e.result(verdict))
				}
			}
		}
		accepted = next
	}
	return accepted, stopped, nil
}

// throughIPVS is IPVS's hook: a connection to none of its virtual servers passes on
// untouched. One to a virtual server goes to each of its real servers in turn (every
// scheduler may pick any), DNATed and sent through ipvsSent, and ends there; there `-m
// ipvs` knows the virtual server it came from. Without a real server, IPVS answers ICMP
// port unreachable (ip_vs_leave), as REJECT does.
func (tr *tracer) throughIPVS(p path) (passed []path, ended []Result, err error) {
	if tr.ipvs == nil {
		return []path{p}, nil, nil
	}
	reals, ok := tr.ipvs.Lookup(tr.pkt.Protocol, p.dst)
	if !ok {
		return []path{p}, nil, nil
	}
	if len(reals) == 0 {
		p.rules = append(slices.Clip(p.rules), fmt.Sprintf("ipvs %s %s: no real server", tr.pkt.Protocol, p.dst))
		return nil, []Result{p.result("REJECT")}, nil
	}
	for _, r := range reals {
		if tr.local(r.Addr()) {
			// IPVS then hands the packet on up the local stack (nat INPUT next), a way
			// the tracer does not follow.
			return nil, nil, fmt.Errorf("ipvs %s %s: the tracer does not follow a real server on the node (%s)", tr.pkt.Protocol, p.dst, r)
		}
		to := p
		to.rules = append(slices.Clip(p.rules), fmt.Sprintf("ipvs %s %s -> %s", tr.pkt.Protocol, p.dst, r))
		to.dst, to.dnat, to.virtual = r, true, p.dst
		sent, stopped, err := tr.through(ipvsSent, to)
		if err != nil {
			return nil, nil, err
		}
		ended = append(ended, stopped...)
		for _, s := range sent {
			ended = append(ended, s.result("ACCEPT"))
		}
	}
	return nil, ended, nil
}

// exit is one way out of a chain: with a verdict, or "" when the packet returns.
type exit struct {
	path
	verdict string
}

// walk follows p through a table's chain from rule i on and returns every way out.
func (tr *tracer) walk(table iptables.Table, chain string, i int, p path) ([]exit, error) {
	var out []exit
	rules := tr.tables[table].chains[chain]
	for ; i < len(rules); i++ {
		r := rules[i]
		matched, random, target, opts, err := tr.match(r, p)
		if err != nil {
			return nil, fmt.Errorf("%s -A %s %s: %w", table, chain, r, err)
		}
		if !matched {
			continue
		}
		if random {
			// The connection may take this rule or go on to the next: follow both.
			rest, err := tr.walk(table, chain, i+1, p)
			if err != nil {
				return nil, err
			}
			out = append(out, rest...)
		}
		// Clipped so that forked paths never append into each other's rules.
		p.rules = append(slices.Clip(p.rules), fmt.Sprintf("%s -A %s %s", table, chain, r))
		if _, isChain := tr.tables[table].chains[target]; isChain {
			sub, err := tr.walk(table, target, 0, p)
			if err != nil {
				return nil, err
			}
			for _, e := range sub {
				if e.verdict != "" {
					out = append(out, e)
					continue
				}
				rest, err := tr.walk(table, chain, i+1, e.path)
				if err != nil {
					return nil, err
				}
				out = append(out, rest...)
			}
			return out, nil
		}
		switch verdict, err := applyTarget(target, opts, &p); {
		case err != nil:
			return nil, fmt.Errorf("%s -A %s %s: %w", table, chain, r, err)
		case verdict == "RETURN":
			return append(out, exit{path: p}), nil
		case verdict != "":
			return append(out, exit{p, verdict}), nil
		}
	}
	return append(out, exit{path: p}), nil
}

// match evaluates a rule's matches against p: whether they hold, whether they hold only
// for a random share of connections, and the rule's target with its options. Every
// match is evaluated, so that one the tracer does not know is never hidden by another
// that fails.
func (tr *tracer) match(r iptables.SavedRule, p path) (matched, random bool, target string, opts []string, err error) {
	fields := iptables.SplitRule(string(r))
	matched = true
	for i := 0; i < len(fields); i++ {
		negate := fields[i] == "!" && i+1 < len(fields)
		if negate {
			i++
		}
		opt := fields[i]
		arg := func() string {
			if i++; i < len(fields) {
				return fields[i]
			}
			return ""
		}
		var ok bool
		switch opt {
		case "-j":
			target := arg()
			return matched, random, target, fields[i+1:], nil
		case "-m":
			if ok = modules[arg()]; !ok {
				err = fmt.Errorf("the tracer does not know -m %s", fields[i])
			}
		case "-s", "-d":
			a := p.dst.Addr()
			if opt == "-s" {
				a = tr.pkt.Src
			}
			ok, err = contains(arg(), a)
		case "-p":
			ok = arg() == tr.pkt.Protocol
		case "--dport":
			var port uint64
			port, err = strconv.ParseUint(arg(), 10, 16)
			ok = uint16(port) == p.dst.Port()
		case "--src-type", "--dst-type":
			a := p.dst.Addr()
			if opt == "--src-type" {
				a = tr.pkt.Src
			}
			if t := arg(); t != "LOCAL" {
				err = fmt.Errorf("the tracer does not know address type %s", t)
			}
			ok = tr.local(a)
		case "--ctstate":
			ok = slices.Contains(strings.Split(arg(), ","), "NEW")
		case "--mark":
			value, mask, _ := strings.Cut(arg(), "/")
			var v, m uint64
			v, err = strconv.ParseUint(value, 0, 32)
			if m = 0xffffffff; mask != "" && err == nil {
				m, err = strconv.ParseUint(mask, 0, 32)
			}
			ok = p.mark&m == v
		case "--match-set":
			set, flags := arg(), arg()
			pkt := tr.pkt
			pkt.Dst = p.dst
			if err = fmt.Errorf("no Sets given to answer --match-set %s", set); tr.sets != nil {
				ok, err = tr.sets.Match(set, flags, pkt)
			}
		case "--vaddr", "--vproto", "--vport":
			ok, err = tr.matchIPVS(opt, arg(), p)
			if !p.virtual.IsValid() {
				// xt_ipvs matches no packet IPVS did not send, negated or not.
				ok = negate
			}
		case "--mode":
			if mode := arg(); mode != "random" {
				err = fmt.Errorf("the tracer does not know statistic mode %s", mode)
			}
			random, ok = true, true
		case "--rcheck":
			// A new connection from a client with no history: session affinity never
			// applies to it.
			ok = false
		case "--set", "--reap":
			ok = true
		case "--comment", "--probability", "--name", "--mask", "--seconds":
			arg()
			ok = true
		default:
			err = fmt.Errorf("the tracer does not know %s", opt)
		}
		if err != nil {
			return false, false, "", nil, err
		}
		if ok == negate {
			matched = false
		}
	}
	return matched, random, "", nil, nil
}

// matchIPVS evaluates one option of `-m ipvs` (xt_ipvs) on a connection IPVS sent on from
// a virtual server (path.virtual): its address (ADDR or ADDR/LEN), protocol (a name or a
// number) or port.
func (tr *tracer) matchIPVS(opt, value string, p path) (bool, error) {
	switch opt {
	case "--vaddr":
		return contains(value, p.virtual.Addr())
	case "--vproto":
		if n, err := strconv.ParseUint(value, 10, 8); err == nil {
			return ipProtocols[tr.pkt.Protocol] == n, nil
		}
		if _, known := ipProtocols[value]; !known {
			return false, fmt.Errorf("the tracer does not know the protocol %s", value)
		}
		return value == tr.pkt.Protocol, nil
	default: // --vport
		port, err := strconv.ParseUint(value, 10, 16)
		return uint16(port) == p.virtual.Port(), err
	}
}

// ipProtocols are the protocols of Packet, with their numbers.
var ipProtocols = map[string]uint64{"tcp": 6, "udp": 17, "sctp": 132}

// modules are the match extensions whose options match knows.
var modules = map[string]bool{"comment": true, "tcp": true, "udp": true, "sctp": true, "addrtype": true,
	"conntrack": true, "mark": true, "set": true, "statistic": true, "recent": true, "ipvs": true}

// contains reports whether an address or prefix, as -s and -d take it, holds a.
func contains(s string, a netip.Addr) (bool, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Contains(a), nil
	}
	b, err := netip.ParseAddr(s)
	return b == a, err
}

// applyTarget applies a built-in target to p and returns the verdict that ends the
// chain: ACCEPT (also for DNAT and MASQUERADE, which end the nat table's traversal),
// DROP, REJECT, RETURN, or "" to go on to the next rule (no target, MARK).
func applyTarget(target string, opts []string, p *path) (string, error) {
	switch {
	case target == "" && len(opts) == 0:
		return "", nil
	case slices.Contains([]string{"ACCEPT", "DROP", "RETURN"}, target) && len(opts) == 0,
		target == "REJECT" && (len(opts) == 0 || len(opts) == 2 && opts[0] == "--reject-with"):
		return target, nil
	case target == "MASQUERADE" && (len(opts) == 0 || slices.Equal(opts, []string{"--random-fully"})):
		p.masq = true
		return "ACCEPT", nil
	case target == "DNAT" && len(opts) == 2 && opts[0] == "--to-destination":
		// A destination without a port keeps the packet's.
		to, err := netip.ParseAddrPort(opts[1])
		if err != nil {
			var a netip.Addr
			a, err = netip.ParseAddr(opts[1])
			to = netip.AddrPortFrom(a, p.dst.Port())
		}
		p.dst, p.dnat = to, true
		return "ACCEPT", err
	case target == "MARK" && len(opts) == 2 && (opts[0] == "--or-mark" || opts[0] == "--xor-mark"):
		v, err := strconv.ParseUint(opts[1], 0, 32)
		if opts[0] == "--or-mark" {
			p.mark |= v
		} else {
			p.mark ^= v
		}
		return "", err
	}
	return "", fmt.Errorf("the tracer does not know -j %s", strings.Join(append([]string{target}, opts...), " "))
}
