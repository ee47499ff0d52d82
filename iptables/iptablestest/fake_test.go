package iptablestest

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/switchyard/switchyard/iptables"
)

// TestRestore checks the fake against what iptables-restore --noflush does with each
// input (each case but the last was run against both flavors in a scratch network
// namespace).
func TestRestore(t *testing.T) {
	const start = `*filter
:SWYD-A - [0:0]
:SWYD-B - [0:0]
-A SWYD-A -m comment --comment "first rule" -j ACCEPT
-A INPUT -j SWYD-A
COMMIT
`
	// unchanged is the filter table after start alone.
	const unchanged = `*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:SWYD-A - [0:0]
:SWYD-B - [0:0]
-A INPUT -j SWYD-A
-A SWYD-A -m comment --comment "first rule" -j ACCEPT
COMMIT
`
	tests := []struct {
		name    string
		input   string
		wantErr string
		// want is the filter table afterwards, as Save prints it.
		want string
	}{
		{name: "append, insert at a position, delete", input: "*filter\n-A SWYD-B -j DROP\n-I SWYD-B 2 -j REJECT\n-I SWYD-B -j RETURN\n-D SWYD-B -j DROP\nCOMMIT\n",
			want: strings.Replace(unchanged, "COMMIT", "-A SWYD-B -j RETURN\n-A SWYD-B -j REJECT\nCOMMIT", 1)},
		{name: "declaring a chain of ours flushes it", input: "*filter\n:SWYD-A - [0:0]\nCOMMIT\n",
			want: strings.Replace(unchanged, "-A SWYD-A -m comment --comment \"first rule\" -j ACCEPT\n", "", 1)},
		{name: "declaring a built-in chain sets its policy and keeps its rules", input: "*filter\n:INPUT DROP [0:0]\nCOMMIT\n",
			want: strings.Replace(unchanged, ":INPUT ACCEPT", ":INPUT DROP", 1)},
		{name: "flush and delete", input: "*filter\n-D INPUT -j SWYD-A\n-F SWYD-A\n-X SWYD-A\nCOMMIT\n",
			want: "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:SWYD-B - [0:0]\nCOMMIT\n"},
		{name: "deleting a missing rule fails", input: "*filter\n-D SWYD-A -j DROP\nCOMMIT\n", wantErr: "line 2 failed", want: unchanged},
		{name: "jumping to a missing chain fails", input: "*filter\n-A SWYD-B -j SWYD-C\n:SWYD-C - [0:0]\nCOMMIT\n", wantErr: "no chain/target SWYD-C", want: unchanged},
		{name: "a section that fails changes nothing", input: "*filter\n-A SWYD-B -j DROP\n:SWYD-A - [0:0]\n-A SWYD-B -j SWYD-C\nCOMMIT\n", wantErr: "SWYD-C", want: unchanged},
		{name: "a failing section leaves the committed ones", input: "*filter\n-A SWYD-B -j DROP\nCOMMIT\n*nat\n-A SWYD-C -j ACCEPT\nCOMMIT\n", wantErr: "line 5 failed",
			want: strings.Replace(unchanged, "COMMIT", "-A SWYD-B -j DROP\nCOMMIT", 1)},
		{name: "deleting a chain in use fails", input: "*filter\n:SWYD-A - [0:0]\n-X SWYD-A\nCOMMIT\n", wantErr: "in use", want: unchanged},
		{name: "deleting a chain with rules fails", input: "*filter\n-D INPUT -j SWYD-A\n-X SWYD-A\nCOMMIT\n", wantErr: "not empty", want: unchanged},
		{name: "inserting past the end fails", input: "*filter\n-I SWYD-B 2 -j DROP\nCOMMIT\n", wantErr: "too big", want: unchanged},
		{name: "a section without COMMIT fails", input: "*filter\n-A SWYD-B -j DROP\n", wantErr: "COMMIT expected", want: unchanged},
		{name: "DNAT outside nat fails", input: "*filter\n-A SWYD-B -j DNAT --to-destination 10.0.0.1\nCOMMIT\n", wantErr: "only valid in the nat table", want: unchanged},
		{name: "DNAT reachable from a hook it is invalid in fails", input: "*nat\n:SWYD-N - [0:0]\n-A SWYD-N -j DNAT --to-destination 10.0.0.1\n-A POSTROUTING -j SWYD-N\nCOMMIT\n", wantErr: "DNAT in SWYD-N is invalid", want: unchanged},
		{name: "a loop fails", input: "*filter\n-A SWYD-B -j SWYD-A\n-A SWYD-A -j SWYD-B\nCOMMIT\n", wantErr: "loops", want: unchanged},
		// The kernel has LOG; the tracer does not know it, so the fake refuses it.
		{name: "a target the fake does not know fails", input: "*filter\n-A SWYD-B -j LOG\nCOMMIT\n", wantErr: "no chain/target LOG", want: unchanged},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := NewFake()
			mustRestore(t, f, start)
			err := f.Restore(context.Background(), []byte(tc.input))
			var restoreErr *iptables.RestoreError
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (!errors.As(err, &restoreErr) || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Errorf("Restore: %v, want an *iptables.RestoreError containing %q", err, tc.wantErr)
			}
			if diff := cmp.Diff(tc.want, save(t, f, iptables.TableFilter)); diff != "" {
				t.Errorf("filter table (-want +got):\n%s", diff)
			}
		})
	}
}

// TestApplyAgainstFake: iptables.Apply finds stale chains and hooks in the fake's Save
// output, so that a cleanup leaves nothing of ours and nothing of others is touched.
func TestApplyAgainstFake(t *testing.T) {
	f := NewFake()
	mustRestore(t, f, "*nat\n:KUBE-SERVICES - [0:0]\n-A OUTPUT -j KUBE-SERVICES\nCOMMIT\n")
	before := save(t, f, iptables.TableNAT)
	rs := iptables.Ruleset{
		Chains: map[iptables.Table][]iptables.Chain{iptables.TableNAT: {{Name: "SWYD-X", Rules: []string{`-m comment --comment "to x" -j DNAT --to-destination 10.0.0.1:80`}}}},
		Hooks:  []iptables.Hook{{Table: iptables.TableNAT, Chain: "PREROUTING", Rule: []string{"-m", "comment", "--comment", "switchyard x", "-j", "SWYD-X"}}},
	}
	for range 2 { // the second time, the hook is found in place
		if _, _, err := iptables.Apply(context.Background(), f, rs); err != nil {
			t.Fatal(err)
		}
	}
	if got := strings.Count(save(t, f, iptables.TableNAT), "-j SWYD-X"); got != 1 {
		t.Errorf("%d hooks after applying twice, want 1:\n%s", got, save(t, f, iptables.TableNAT))
	}
	if err := iptables.Cleanup(context.Background(), f); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(before, save(t, f, iptables.TableNAT)); diff != "" {
		t.Errorf("after cleanup (-want +got):\n%s", diff)
	}
	// What Save prints, a restore takes back unchanged.
	g := NewFake()
	mustRestore(t, g, save(t, f, iptables.TableNAT))
	if diff := cmp.Diff(before, save(t, g, iptables.TableNAT)); diff != "" {
		t.Errorf("restored from Save (-want +got):\n%s", diff)
	}
}

func mustRestore(t *testing.T, f *Fake, input string) {
	t.Helper()
	if err := f.Restore(context.Background(), []byte(input)); err != nil {
		t.Fatal(err)
	}
}

func save(t *testing.T, f *Fake, table iptables.Table) string {
	t.Helper()
	out, err := f.Save(context.Background(), table)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}
