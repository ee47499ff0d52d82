// Package conntracktest is a stateful fake of the conntrack table for unit tests.
package conntracktest

import (
	"slices"
	"sync"

	"github.com/switchyard/switchyard/conntrack"
)

// Fake is a conntrack table: Clear deletes the entries the filters select, as the kernel
// does, so a test sets up flows and checks which survive.
type Fake struct {
	mu      sync.Mutex
	entries map[bool][]conntrack.Entry
}

// NewFake returns an empty table.
func NewFake() *Fake { return &Fake{entries: map[bool][]conntrack.Entry{}} }

// Add puts entries in the table of one family.
func (f *Fake) Add(ipv6 bool, entries ...conntrack.Entry) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.entries[ipv6] = append(f.entries[ipv6], entries...)
}

// Entries lists the table of one family.
func (f *Fake) Entries(ipv6 bool) []conntrack.Entry {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.entries[ipv6])
}

// Clear is part of conntrack.Interface.
func (f *Fake) Clear(ipv6 bool, filters ...conntrack.Filter) (uint, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	before := len(f.entries[ipv6])
	f.entries[ipv6] = slices.DeleteFunc(f.entries[ipv6], func(e conntrack.Entry) bool {
		return slices.ContainsFunc(filters, func(flt conntrack.Filter) bool { return flt.Matches(e) })
	})
	return uint(before - len(f.entries[ipv6])), nil
}
