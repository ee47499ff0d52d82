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

// CPUSeconds is the CPU time process pid has used, user and system, its own and that of
// the children it has waited for. The children count because a proxy in iptables mode
// does much of its work in the iptables-restore it runs on each sync.
func CPUSeconds(pid int) (float64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name is in parentheses and may hold spaces; the fields after it start
	// with the state (field 3), so utime, stime, cutime and cstime (14-17) are 11-14.
	i := strings.LastIndexByte(string(data), ')')
	fields := strings.Fields(string(data[i+1:]))
	if i < 0 || len(fields) < 15 {
		return 0, fmt.Errorf("unexpected /proc/%d/stat: %q", pid, data)
	}
	var ticks int64
	for _, f := range fields[11:15] {
		v, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("unexpected /proc/%d/stat: %q", pid, data)
		}
		ticks += v
	}
	return float64(ticks) / clockTicks, nil
}
