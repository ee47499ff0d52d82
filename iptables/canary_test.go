package iptables

import (
	"context"
	"errors"
	"strings"
	"testing"
)

// savedMangle answers Save for the mangle table with a fixed dump or error, and records
// restores.
type savedMangle struct {
	dump     string
	err      error
	restored []string
}

func (s *savedMangle) Save(context.Context, Table) ([]byte, error) { return []byte(s.dump), s.err }
func (s *savedMangle) Restore(_ context.Context, data []byte) error {
	s.restored = append(s.restored, string(data))
	return nil
}
func (s *savedMangle) Flavor() Flavor { return Legacy }

func TestRemoveCanary(t *testing.T) {
	lockHeld := errors.New("another app is currently holding the xtables lock")
	tests := []struct {
		name       string
		ipt        *savedMangle
		wantErr    error
		wantDelete bool
	}{
		{name: "present", ipt: &savedMangle{dump: "*mangle\n:SWYD-CANARY - [0:0]\nCOMMIT\n"}, wantDelete: true},
		{name: "absent", ipt: &savedMangle{dump: "*mangle\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n"}},
		{name: "no mangle table in the kernel", ipt: &savedMangle{err: ErrNoTable}},
		{name: "the table cannot be read", ipt: &savedMangle{err: lockHeld}, wantErr: lockHeld},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := removeCanary(context.Background(), tt.ipt)
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil) != (err == nil) {
				t.Fatalf("removeCanary: %v, want %v", err, tt.wantErr)
			}
			deleted := len(tt.ipt.restored) == 1 && strings.Contains(tt.ipt.restored[0], "-X "+CanaryChain)
			if deleted != tt.wantDelete || len(tt.ipt.restored) > 1 {
				t.Errorf("restores %q, want the chain deleted: %v", tt.ipt.restored, tt.wantDelete)
			}
		})
	}
}
