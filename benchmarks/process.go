package benchmarks

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// procStatusOf reads a size field (in kB) of /proc/<pid>/status, in bytes; 0 when the
// process or the field is gone.
func procStatusOf(pid, field string) int64 {
	data, err := os.ReadFile("/proc/" + pid + "/status")
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(data)) {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			kib, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kib << 10
		}
	}
	return 0
}

// RSS is the resident set of process pid, in bytes.
func RSS(pid int) (int64, error) {
	n := procStatusOf(strconv.Itoa(pid), "VmRSS")
	if n == 0 {
		return 0, fmt.Errorf("no VmRSS for process %d (has it exited?)", pid)
	}
	return n, nil
}

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat's CPU times: 100 on every Linux
// architecture Go runs on.
const clockTicks = 100

// CPUSeconds is the CPU time process pid has used, user and system: its own, that of the
// children it has waited for, and that of its descendants still running. The children
// count because a proxy in iptables mode does much of its work in the iptables-restore
// it runs on each sync. The running ones count too: a restore that takes 17 s (10,000
// Services in the kernel lab) would otherwise count in whichever window it ends in.
func CPUSeconds(pid int) (float64, error) {
	procs, err := readProcs()
	if err != nil {
		return 0, err
	}
	self, ok := procs[pid]
	if !ok {
		return 0, fmt.Errorf("no process %d (has it exited?)", pid)
	}
	ticks := self.ticks + self.childTicks
	children := map[int][]int{}
	for p, st := range procs {
		children[st.ppid] = append(children[st.ppid], p)
	}
	// The waited-for children of a running descendant are not in the parent's counts
	// yet, so each descendant adds its own and theirs.
	queue := children[pid]
	for len(queue) > 0 {
		p := queue[0]
		queue = append(queue[1:], children[p]...)
		ticks += procs[p].ticks + procs[p].childTicks
	}
	return float64(ticks) / clockTicks, nil
}

type procStat struct {
	ppid              int
	ticks, childTicks int64
}

// readProcs reads the parent and CPU times of every process.
func readProcs() (map[int]procStat, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	procs := map[int]procStat{}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		data, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue // exited meanwhile
		}
		st, err := parseStat(data)
		if err != nil {
			return nil, fmt.Errorf("/proc/%d/stat: %w", pid, err)
		}
		procs[pid] = st
	}
	return procs, nil
}

// parseStat reads the parent (field 4) and utime, stime, cutime and cstime (14-17) of
// a /proc/<pid>/stat line. The command name (field 2) is in parentheses and may hold
// spaces, so fields are counted from its closing parenthesis.
func parseStat(data []byte) (procStat, error) {
	i := strings.LastIndexByte(string(data), ')')
	if i < 0 {
		return procStat{}, fmt.Errorf("unexpected format %q", data)
	}
	fields := strings.Fields(string(data[i+1:])) // fields[0] is field 3, the state
	if len(fields) < 15 {
		return procStat{}, fmt.Errorf("unexpected format %q", data)
	}
	var v [5]int64
	for k, f := range []string{fields[1], fields[11], fields[12], fields[13], fields[14]} {
		n, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			return procStat{}, fmt.Errorf("unexpected format %q", data)
		}
		v[k] = n
	}
	return procStat{ppid: int(v[0]), ticks: v[1] + v[2], childTicks: v[3] + v[4]}, nil
}
