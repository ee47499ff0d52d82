package iptables_test

import (
	"bufio"
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"

	"github.com/switchyard/switchyard/internal/metricstest"
	"github.com/switchyard/switchyard/iptables"
	"github.com/switchyard/switchyard/iptables/iptablestest"
	"github.com/switchyard/switchyard/proxier"
)

// recordingFake is the stateful fake, keeping the last restore input it took.
type recordingFake struct {
	*iptablestest.Fake
	last string
}

func (r *recordingFake) Restore(ctx context.Context, data []byte) error {
	err := r.Fake.Restore(ctx, data)
	if err == nil {
		r.last = string(data)
	}
	return err
}

// TestSyncMetrics follows kube-proxy's iptables mode: every iptables-restore that fails
// counts in kubeproxy_sync_proxy_rules_iptables_restore_failures_total, a partial sync
// that fails as a whole in ..._partial_restore_failures_total;
// kubeproxy_sync_proxy_rules_iptables_total is what the kernel holds in our chains, per
// table, and ..._iptables_last the rules the last sync wrote.
func TestSyncMetrics(t *testing.T) {
	type want struct {
		restoreFailures, partialFailures float64
		// lastFromInput: iptables_last is the rules the last restore input adds (else
		// every rule, after a full sync).
		lastFromInput bool
	}
	steps := []struct {
		name    string
		mutate  func(refusedState)
		full    bool
		changed []int
		refuse  func(string, iptables.SavedRule) bool
		tamper  func(*iptablestest.Fake) error
		// wantErr: the sync fails as a whole.
		wantErr bool
		want    want
	}{
		{
			name:   "full sync",
			mutate: func(s refusedState) { s.set(1, "10.244.1.1", "10.244.1.2"); s.set(2) },
			full:   true,
		},
		{
			name:    "partial sync",
			mutate:  func(s refusedState) { s.set(1, "10.244.1.3") },
			changed: []int{1},
			want:    want{lastFromInput: true},
		},
		{
			name:    "partial sync, nothing to write",
			changed: []int{1},
			want:    want{lastFromInput: true},
		},
		{
			name:    "partial sync in which the kernel refuses one port: its restore failed",
			mutate:  func(s refusedState) { s.set(3, "10.244.3.1"); s.set(2, "10.244.2.1") },
			changed: []int{2, 3},
			refuse:  refuseRulesOf(3, "DNAT"),
			want:    want{restoreFailures: 1, lastFromInput: true},
		},
		{
			name:    "partial sync that fails as a whole",
			mutate:  func(s refusedState) { delete(s.Services, refusedName(1)) },
			changed: []int{1},
			tamper: func(ipt *iptablestest.Fake) error {
				return ipt.Restore(context.Background(), []byte("*nat\n:SWYD-SERVICES - [0:0]\nCOMMIT\n"))
			},
			wantErr: true,
			want:    want{restoreFailures: 2, partialFailures: 1, lastFromInput: true},
		},
		{
			name:    "the full sync that follows",
			full:    true,
			changed: []int{3},
			want:    want{restoreFailures: 3, partialFailures: 1},
			refuse:  refuseRulesOf(3, "DNAT"),
		},
	}
	ctx := context.Background()
	ipt := &recordingFake{Fake: iptablestest.NewFake()}
	reg := prometheus.NewRegistry()
	b := iptables.NewBackend(ipt, iptables.RenderConfig{MasqueradeMark: "0x4000", NodeName: "node-a"}, reg, klog.Background())
	state := newRefusedState()
	for _, step := range steps {
		t.Run(step.name, func(t *testing.T) {
			if step.mutate != nil {
				step.mutate(state)
			}
			if step.tamper != nil {
				if err := step.tamper(ipt.Fake); err != nil {
					t.Fatal(err)
				}
			}
			ipt.RejectRules(step.refuse)
			ipt.last = ""
			changes := proxier.Changes{Full: step.full, ServicePorts: map[proxier.ServicePortName]struct{}{}}
			for _, n := range step.changed {
				changes.ServicePorts[refusedName(n)] = struct{}{}
			}
			err := b.Sync(ctx, state.State, changes)
			var refused proxier.PortErrors
			if whole := err != nil && !errors.As(err, &refused); whole != step.wantErr {
				t.Fatalf("sync: %v, want it to fail as a whole: %v", err, step.wantErr)
			}

			held := map[string]float64{}
			for _, table := range []iptables.Table{iptables.TableFilter, iptables.TableNAT} {
				dump, err := ipt.Save(ctx, table)
				if err != nil {
					t.Fatal(err)
				}
				held["ip_family=IPv4,table="+string(table)] = float64(countRules(string(dump), "-A "+iptables.ChainPrefix))
			}
			last := held
			if step.want.lastFromInput {
				last = map[string]float64{}
				for _, table := range []iptables.Table{iptables.TableFilter, iptables.TableNAT} {
					last["ip_family=IPv4,table="+string(table)] = float64(countRules(section(ipt.last, table), "-A ", "-I "))
				}
			}
			got := map[string]map[string]float64{}
			wantMetrics := map[string]map[string]float64{
				"kubeproxy_sync_proxy_rules_iptables_restore_failures_total":         {"ip_family=IPv4": step.want.restoreFailures},
				"kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total": {"ip_family=IPv4": step.want.partialFailures},
			}
			// A sync that fails as a whole leaves the rule counts of the one before.
			if !step.wantErr {
				wantMetrics["kubeproxy_sync_proxy_rules_iptables_total"] = held
				wantMetrics["kubeproxy_sync_proxy_rules_iptables_last"] = last
			}
			for name := range wantMetrics {
				got[name] = metricstest.Values(t, reg, name)
			}
			if diff := cmp.Diff(wantMetrics, got); diff != "" {
				t.Errorf("metrics (-want +got):\n%s", diff)
			}
		})
	}
}

// section is one table's part of a restore input.
func section(input string, table iptables.Table) string {
	_, rest, ok := strings.Cut(input, "*"+string(table)+"\n")
	if !ok {
		return ""
	}
	body, _, _ := strings.Cut(rest, "COMMIT\n")
	return body
}

// countRules counts the lines that start with one of the prefixes.
func countRules(text string, prefixes ...string) int {
	n := 0
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		for _, p := range prefixes {
			if strings.HasPrefix(sc.Text(), p) {
				n++
				break
			}
		}
	}
	return n
}
