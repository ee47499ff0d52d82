package main

import "testing"

func TestExitStatus(t *testing.T) {
	tests := []struct {
		args []string
		want int
	}{
		{[]string{"--proxy-mode=bogus"}, 2},
		{[]string{"--no-such-flag"}, 2},
		{[]string{"--cluster-cidr=banana"}, 2},
		{[]string{"--version"}, 0},
		{[]string{"--help"}, 0},
	}
	for _, tc := range tests {
		if got := run(tc.args); got != tc.want {
			t.Errorf("switchyard %q exited %d, want %d", tc.args, got, tc.want)
		}
	}
}
