package proxier

import "context"

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
