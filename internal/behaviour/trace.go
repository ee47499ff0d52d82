package behaviour

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/switchyard/switchyard/iptables/iptablestest"
)

// CheckTraces traces the first packet of every flow with trace, on a node whose own
// addresses are local, and reports each flow whose outcome is not what it wants in mode.
// trace is an iptablestest.Fake's Trace over the rules a backend wrote, with what else
// of the node's kernel the mode uses.
func CheckTraces(t *testing.T, mode string, local []netip.Addr, trace func(iptablestest.Packet) ([]iptablestest.Result, error)) {
	t.Helper()
	for _, fl := range Flows() {
		pkt := iptablestest.Packet{Protocol: strings.ToLower(string(fl.Protocol)), Src: fl.Src, Dst: fl.Dst, FromNode: fl.FromNode, Local: local}
		if fl.FromNode && !fl.Src.IsValid() {
			pkt.Src = NodeIP
			if fl.Dst.Addr().IsLoopback() || slices.Contains(local, fl.Dst.Addr()) {
				pkt.Src = fl.Dst.Addr()
			}
		}
		if fl.InputDrops {
			pkt.InputPolicy = "DROP"
		}
		results, err := trace(pkt)
		if err != nil {
			t.Fatalf("%s: %v", fl.Name, err)
		}
		if diff := cmp.Diff(fl.WantFor(mode), outcome(results)); diff != "" {
			t.Errorf("%s (%s -> %s/%s): (-want +got)\n%s%s", fl.Name, pkt.Src, fl.Dst, fl.Protocol, diff, matchedRules(results))
		}
	}
}

// outcome says what the ways a connection can go come to, in the suite's terms: the
// endpoints it is DNATed to, or a verdict, UNTOUCHED when it is accepted without DNAT (no
// rule of ours decided anything). Ways that differ in more than their endpoint make a
// verdict no flow expects.
func outcome(results []iptablestest.Result) Outcome {
	var out Outcome
	for i, r := range results {
		o := Outcome{Verdict: r.Verdict, Masq: r.Masquerade}
		switch {
		case r.Verdict != "ACCEPT":
		case r.DNAT:
			o.Verdict, o.Endpoints = "", []string{r.Dst.String()}
		default:
			o.Verdict = Untouched
		}
		if i > 0 && (o.Verdict != out.Verdict || o.Masq != out.Masq) {
			return Outcome{Verdict: "the ways differ (see below)"}
		}
		out.Verdict, out.Masq = o.Verdict, o.Masq
		out.Endpoints = append(out.Endpoints, o.Endpoints...)
	}
	slices.Sort(out.Endpoints)
	out.Endpoints = slices.Compact(out.Endpoints)
	return out
}

// matchedRules lists the rules each way matched, for a failure message.
func matchedRules(results []iptablestest.Result) string {
	var b strings.Builder
	for _, r := range results {
		fmt.Fprintf(&b, "%s to %s (DNAT %v, masqueraded %v) through:\n\t%s\n", r.Verdict, r.Dst, r.DNAT, r.Masquerade, strings.Join(r.Rules, "\n\t"))
	}
	return b.String()
}
