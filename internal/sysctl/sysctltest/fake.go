// Package sysctltest is a stateful fake of the kernel's parameters (sysctl.Interface) for
// unit tests: it holds values, and refuses what the kernel refuses.
package sysctltest

import (
	"fmt"
	"io/fs"
	"maps"
	"sync"
)

// Fake holds kernel parameters by path, as under /proc/sys. A parameter it does not hold
// does not exist (its module is not loaded), and one marked read-only cannot be written,
// as in a network namespace (nf_conntrack_max) or a container whose /proc/sys is mounted
// read-only. It is safe for concurrent use.
type Fake struct {
	mu       sync.Mutex
	values   map[string]string
	readOnly map[string]bool
}

// NewFake returns a fake holding the given parameters.
func NewFake(values map[string]string) *Fake {
	return &Fake{values: maps.Clone(values), readOnly: map[string]bool{}}
}

// SetReadOnly makes writes of the parameters fail, as the kernel's EACCES.
func (f *Fake) SetReadOnly(paths ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, p := range paths {
		f.readOnly[p] = true
	}
}

// Values returns every parameter and its value.
func (f *Fake) Values() map[string]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return maps.Clone(f.values)
}

// Get is part of sysctl.Interface.
func (f *Fake) Get(path string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.values[path]
	if !ok {
		return "", fmt.Errorf("open /proc/sys/%s: %w", path, fs.ErrNotExist)
	}
	return v, nil
}

// Set is part of sysctl.Interface. Like the kernel, it creates no parameter.
func (f *Fake) Set(path, value string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch _, ok := f.values[path]; {
	case !ok:
		return fmt.Errorf("open /proc/sys/%s: %w", path, fs.ErrNotExist)
	case f.readOnly[path]:
		return fmt.Errorf("open /proc/sys/%s: %w", path, fs.ErrPermission)
	}
	f.values[path] = value
	return nil
}
