package proxier

import (
	"context"
	"io"
)

// Backend programs the kernel from the desired state. The two implementations (iptables
// and IPVS) are interchangeable: the same State must give the same reachable behaviour.
//
// Sync is only ever called from one goroutine. It must be idempotent, touch only state the
// backend owns, and when it fails leave the node in a state that a following full Sync
// repairs (the caller retries with Changes.Full set).
type Backend interface {
	// Name is the proxy mode, as --proxy-mode spells it; it labels metrics and logs.
	Name() string
	Sync(ctx context.Context, state *State, changes Changes) error
}

// Explainer is a Backend that can show what the kernel holds for some ServicePorts next to
// what the desired state wants (switchyard explain).
type Explainer interface {
	// Explain writes a report for each named ServicePort to w, and tells whether the
	// kernel matches the desired state for all of them. It changes nothing.
	Explain(ctx context.Context, state *State, names []ServicePortName, w io.Writer) (bool, error)
}
