package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestBounded: a run stopped by its limit is a not-run record, never an error; a run that
// fails on its own, or whose harness is interrupted, is an error.
func TestBounded(t *testing.T) {
	untilDone := func(ctx context.Context) error {
		<-ctx.Done()
		return fmt.Errorf("inside the kernel lab: %w", ctx.Err())
	}
	broken := errors.New("inside the kernel lab: exit status 1")
	tests := []struct {
		name       string
		run        func(context.Context) error
		interrupt  bool
		wantReason string
		wantErr    error
	}{
		{name: "finishes", run: func(context.Context) error { return nil }},
		{name: "outlasts its limit", run: untilDone, wantReason: notRunPrefix + " its run was stopped after"},
		{name: "fails", run: func(context.Context) error { return broken }, wantErr: broken},
		{name: "interrupted", run: untilDone, interrupt: true, wantErr: context.Canceled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if tt.interrupt {
				cancel()
			}
			reason, err := bounded(ctx, 50*time.Millisecond, tt.run)
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil && err != nil) {
				t.Errorf("error = %v, want %v", err, tt.wantErr)
			}
			if !strings.HasPrefix(reason, tt.wantReason) || (tt.wantReason == "") != (reason == "") {
				t.Errorf("reason = %q, want one starting %q", reason, tt.wantReason)
			}
		})
	}
}
