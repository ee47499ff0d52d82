package proxier

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
)

// Backend programs the kernel from the desired state. The two implementations (iptables
// and IPVS) are interchangeable: the same State must give the same reachable behaviour.
//
// Sync is only ever called from one goroutine. It must be idempotent, touch only state the
// backend owns, and when it fails leave the node in a state that a following full Sync
// repairs (the caller retries with Changes.Full set).
//
// When the kernel refuses the rules of some ServicePorts only, Sync programs everything
// else and returns a PortErrors naming them, so that one Service never stops the others.
// The caller then counts the sync as done for every other port and retries those, with
// backoff, in the Changes.ServicePorts of the syncs that follow (full or partial) until
// they go in. A failure that no port can be blamed for (the backend's own static rules,
// a listing of the kernel's state) fails the whole Sync.
type Backend interface {
	// Name is the proxy mode, as --proxy-mode spells it; it labels metrics and logs.
	Name() string
	Sync(ctx context.Context, state *State, changes Changes) error
}

// PortErrors is what Backend.Sync returns when everything was applied but the rules of
// these ServicePorts, each with the kernel's reason. A backend returns it alone or
// wrapped with fmt.Errorf's %w; joined with other errors (errors.Join) it is a failed
// sync like any other, since something besides these ports failed.
type PortErrors map[ServicePortName]error

// Add records err for each of the named ports, after what is already recorded for it: a
// kernel object shared by several ports (an address, a set member) fails each of them.
func (e PortErrors) Add(err error, names ...ServicePortName) {
	if err == nil {
		return
	}
	for _, n := range names {
		e[n] = errors.Join(e[n], err)
	}
}

// ErrorOrNil returns e as an error, or nil when no port failed (an empty PortErrors in
// an error would not be nil).
func (e PortErrors) ErrorOrNil() error {
	if len(e) == 0 {
		return nil
	}
	return e
}

func (e PortErrors) Error() string {
	var b strings.Builder
	b.WriteString("service ports not programmed")
	sep := ": "
	for _, n := range slices.SortedFunc(maps.Keys(e), ServicePortName.Compare) {
		fmt.Fprintf(&b, "%s%s: %v", sep, n, e[n])
		sep = "; "
	}
	return b.String()
}

// portErrors finds the PortErrors that err is, or wraps with context. It does not look
// into joined errors: those mean that more than some ports failed.
func portErrors(err error) (PortErrors, bool) {
	for ; err != nil; err = errors.Unwrap(err) {
		if pe, ok := err.(PortErrors); ok {
			return pe, true
		}
	}
	return nil, false
}

// Explainer is a Backend that can show what the kernel holds for some ServicePorts next to
// what the desired state wants (switchyard explain).
type Explainer interface {
	// Explain writes a report for each named ServicePort to w, and tells whether the
	// kernel matches the desired state for all of them. It changes nothing.
	Explain(ctx context.Context, state *State, names []ServicePortName, w io.Writer) (bool, error)
}
