package benchmarks

import (
	"os"
	"os/exec"
	"testing"
	"time"
)

func TestParseStat(t *testing.T) {
	tests := []struct {
		line    string
		want    procStat
		wantErr bool
	}{
		{line: "4242 (iptables-restore) R 4200 4242 1 0 -1 4194560 500 0 0 0 120 30 7 3 20 0 1 0 99 1000 200",
			want: procStat{ppid: 4200, ticks: 150, childTicks: 10}},
		// A command name with spaces and parentheses.
		{line: "7 (a (b) c) S 1 7 7 0 -1 0 0 0 0 0 5 6 0 0 20 0 1 0 1 1 1", want: procStat{ppid: 1, ticks: 11}},
		{line: "7 (short) S 1 2", wantErr: true},
		{line: "no parenthesis", wantErr: true},
	}
	for _, tt := range tests {
		got, err := parseStat([]byte(tt.line))
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("parseStat(%q) = %+v, %v; want %+v (error %v)", tt.line, got, err, tt.want, tt.wantErr)
		}
	}
}

// TestCPUSecondsCountsRunningChildren: a child that is still running counts, so a long
// iptables-restore is not left out of the window it runs in.
func TestCPUSecondsCountsRunningChildren(t *testing.T) {
	before, err := CPUSeconds(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	busy := exec.Command("sh", "-c", "while :; do :; done")
	if err := busy.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = busy.Process.Kill(); _ = busy.Wait() }()
	time.Sleep(time.Second)
	after, err := CPUSeconds(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if after-before < 0.2 {
		t.Errorf("CPU went from %.2f s to %.2f s while a busy child ran for 1 s; want the child's time counted", before, after)
	}
}
