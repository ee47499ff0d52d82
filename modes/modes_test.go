package modes

import (
	"context"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"k8s.io/klog/v2"

	"github.com/switchyard/switchyard/config"
	"github.com/switchyard/switchyard/proxier"
)

func TestAllListsTheModesInHelpOrder(t *testing.T) {
	if got, want := All.Names(), []string{"iptables", "ipvs"}; !slices.Equal(got, want) {
		t.Errorf("All.Names() = %q, want %q", got, want)
	}
}

func TestLookup(t *testing.T) {
	tests := []struct {
		name string
		// want is the mode found, or "" when Lookup must fail with wantErr.
		want    string
		wantErr string
	}{
		{name: "iptables", want: "iptables"},
		{name: "ipvs", want: "ipvs"},
		{name: "nftables", wantErr: `unknown proxy mode "nftables": valid proxy modes are iptables, ipvs`},
		{name: "IPVS", wantErr: `unknown proxy mode "IPVS": valid proxy modes are iptables, ipvs`},
		{name: "", wantErr: `unknown proxy mode "": valid proxy modes are iptables, ipvs`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, err := All.Lookup(tc.name)
			if tc.wantErr != "" {
				if err == nil || err.Error() != tc.wantErr {
					t.Errorf("Lookup(%q) = %q, %v; want error %q", tc.name, m.Name, err, tc.wantErr)
				}
				return
			}
			if err != nil || m.Name != tc.want {
				t.Errorf("Lookup(%q) = %q, %v; want %q", tc.name, m.Name, err, tc.want)
			}
		})
	}
}

// TestConfigurationTakesTheRegisteredModes checks what the command gets when it hands
// the registry's names to config.Parse: the default mode is a registered one, and an
// unknown one is refused with the message switchyard has always printed.
func TestConfigurationTakesTheRegisteredModes(t *testing.T) {
	if _, err := All.Lookup(config.Defaults().Mode); err != nil {
		t.Errorf("the default mode: %v", err)
	}
	tests := []struct {
		args []string
		// want is the mode parsed, or "" when Parse must fail with wantErr.
		want    string
		wantErr string
	}{
		{args: nil, want: "iptables"},
		{args: []string{"--proxy-mode=ipvs"}, want: "ipvs"},
		{args: []string{"--proxy-mode=bogus"}, wantErr: `invalid value "bogus" for --proxy-mode: valid proxy modes are iptables, ipvs`},
	}
	for _, tc := range tests {
		parsed, err := config.Parse(append(tc.args, "--hostname-override=node-a"), All.Names(), io.Discard)
		switch {
		case tc.wantErr != "":
			if err == nil || err.Error() != tc.wantErr {
				t.Errorf("Parse(%q) = %v, want error %q", tc.args, err, tc.wantErr)
			}
		case err != nil:
			t.Errorf("Parse(%q): %v", tc.args, err)
		case parsed.Config.Mode != tc.want:
			t.Errorf("Parse(%q) = mode %q, want %q", tc.args, parsed.Config.Mode, tc.want)
		}
	}
}

func TestFullSyncPeriod(t *testing.T) {
	const syncPeriod = 30 * time.Second
	tests := []struct {
		mode Mode
		want time.Duration
	}{
		// kube-proxy's IPVS mode reconciles the kernel on every periodic sync.
		{IPVS, syncPeriod},
		// kube-proxy's iptables mode rewrites everything hourly.
		{IPTables, time.Hour},
	}
	for _, tc := range tests {
		if got := tc.mode.FullSyncPeriod(syncPeriod); got != tc.want {
			t.Errorf("%s mode: full sync every %s with --sync-period=%s, want %s", tc.mode.Name, got, syncPeriod, tc.want)
		}
	}
}

// fakeBackend is a backend whose syncs fail with the errors it is given, in turn.
type fakeBackend struct{ errs []error }

func (b *fakeBackend) Name() string { return "current" }

func (b *fakeBackend) Sync(context.Context, *proxier.State, proxier.Changes) error {
	err := b.errs[0]
	b.errs = b.errs[1:]
	return err
}

// leftovers counts the calls of a mode's RemoveLeftovers, which fail with the errors it
// is given, in turn, and then succeed.
type leftovers struct {
	calls int
	errs  []error
}

func (l *leftovers) remove() error {
	l.calls++
	if len(l.errs) == 0 {
		return nil
	}
	err := l.errs[0]
	l.errs = l.errs[1:]
	return err
}

var errFailed = errors.New("failed")

func TestNewBackendRemovesTheOtherModesLeftovers(t *testing.T) {
	type sync struct {
		full bool
		err  error // what the backend's Sync returns
	}
	tests := []struct {
		name   string
		family proxier.Family
		use    Use
		syncs  []sync
		// removeErrs are what the other mode's RemoveLeftovers returns, in turn.
		removeErrs []error
		// wantCalls is how many times the other mode's leftovers were looked at.
		wantCalls int
	}{
		{name: "after the first full sync only", family: proxier.IPv4, use: ForProxy,
			syncs: []sync{{full: false}, {full: true}, {full: false}, {full: true}}, wantCalls: 1},
		{name: "not after a failed full sync", family: proxier.IPv4, use: ForProxy,
			syncs: []sync{{full: true, err: errFailed}, {full: true}}, wantCalls: 1},
		{name: "retried after each full sync until it succeeds", family: proxier.IPv4, use: ForProxy,
			syncs: []sync{{full: true}, {full: false}, {full: true}, {full: true}, {full: true}}, removeErrs: []error{errFailed, errFailed}, wantCalls: 3},
		{name: "the IPv4 backend is enough for both families", family: proxier.IPv6, use: ForProxy,
			syncs: []sync{{full: true}}, wantCalls: 0},
		{name: "explain changes nothing", family: proxier.IPv4, use: ForInspection,
			syncs: []sync{{full: true}}, wantCalls: 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var current fakeBackend
			for _, s := range tc.syncs {
				current.errs = append(current.errs, s.err)
			}
			own := &leftovers{}
			other := &leftovers{errs: tc.removeErrs}
			registry := Registry{
				{Name: "current", NewBackend: func(context.Context, config.Config, Env) (proxier.Backend, error) { return &current, nil }, RemoveLeftovers: own.remove},
				{Name: "other", RemoveLeftovers: other.remove},
				{Name: "tidy"}, // leaves nothing behind
			}
			backend, err := registry.NewBackend(context.Background(), config.Config{Mode: "current"}, Env{Family: tc.family, Use: tc.use, Logger: klog.Background()})
			if err != nil {
				t.Fatal(err)
			}
			for i, s := range tc.syncs {
				if err := backend.Sync(context.Background(), &proxier.State{}, proxier.Changes{Full: s.full}); !errors.Is(err, s.err) {
					t.Errorf("sync %d returned %v, want the backend's %v", i, err, s.err)
				}
			}
			if other.calls != tc.wantCalls {
				t.Errorf("the other mode's leftovers were removed %d times, want %d", other.calls, tc.wantCalls)
			}
			if own.calls != 0 {
				t.Errorf("the mode in use removed its own state %d times", own.calls)
			}
		})
	}
}

func TestRemoveLeftoversTriesEveryMode(t *testing.T) {
	first, second := &leftovers{errs: []error{errFailed}}, &leftovers{errs: []error{errFailed}}
	registry := Registry{{Name: "first", RemoveLeftovers: first.remove}, {Name: "tidy"}, {Name: "second", RemoveLeftovers: second.remove}}
	err := registry.RemoveLeftovers()
	if !errors.Is(err, errFailed) || first.calls != 1 || second.calls != 1 {
		t.Fatalf("RemoveLeftovers = %v after %d and %d calls, want both modes tried and their errors", err, first.calls, second.calls)
	}
	for _, want := range []string{"removing what first mode left on the node: failed", "removing what second mode left on the node: failed"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
}
