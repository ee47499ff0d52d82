#!/usr/bin/env bash
# Runs a command inside a real Linux kernel that has IPVS: Debian's User-Mode Linux kernel,
# booted as an ordinary process whose root filesystem is the host's own (read-write, so
# anything the guest writes lands on the host: use scratch directories).
#
#   hack/kernel-lab/run.sh COMMAND [ARGS...]
#
# The guest loads the IPVS, dummy, veth, netfilter and ipset modules, then runs COMMAND
# from the current directory with the current environment's PATH and SWYD_* / GO*
# variables, and the exit status of COMMAND becomes this script's. It suits
# `go test -exec hack/kernel-lab/run.sh`.
#
# With SWYD_LAB_TAP=NAME (a tap device the caller created and addressed on the host) and
# SWYD_LAB_GUEST_ADDR=ADDR/PREFIX, the guest's eth0 is the other end of that tap, with
# that address and only the route of its own subnet: a test inside can reach a
# kube-apiserver the host runs on its end, and nothing else on or beyond the host.
set -euo pipefail

[ $# -ge 1 ] || { echo "usage: $0 COMMAND [ARGS...]" >&2; exit 2; }
command -v linux.uml >/dev/null || { echo "$0: linux.uml not found: install the Debian package user-mode-linux (make deps)" >&2; exit 2; }
ver=$(ls /usr/lib/uml/modules | head -1)

scratch=$(mktemp -d /tmp/swyd-uml.XXXXXX)
cleanup() { rm -rf "$scratch"; }
trap cleanup EXIT

# What the guest needs to know, passed through a file because the kernel command line is
# short and unquoted.
{
	printf 'export PATH=%q\n' "/usr/local/sbin:/usr/sbin:/sbin:$PATH"
	printf 'export HOME=%q\n' "$HOME"
	env | { grep -E '^(SWYD_|GO[A-Z]*=)' || true; } | while IFS='=' read -r k v; do printf 'export %s=%q\n' "$k" "$v"; done
	printf 'cd %q\n' "$PWD"
	printf 'MODS=%q\n' "/usr/lib/uml/modules/$ver"
	printf 'VER=%q\n' "$ver"
	printf 'SCRATCH=%q\n' "$scratch"
	printf 'set --'; printf ' %q' "$@"; printf '\n'
} > "$scratch/env.sh"

cat > "$scratch/init.sh" <<'INIT'
#!/bin/sh
# PID 1 of the guest.
mount -t proc proc /proc
mount -t sysfs sys /sys
# A guest-local /run, so that `ip netns` and lock files write nothing on the host.
mount -t tmpfs tmpfs /run
. "$(dirname "$0")/env.sh"
mkdir -p /run/netns
# iptable_mangle for the canary chains (switchyard's and kube-proxy's) in the mangle table;
# nf_conntrack_netlink for the conntrack cleanup (without it netlink answers EINVAL).
# xt_physdev (and the bridge modules it needs) for upstream kube-proxy's IPVS mode, whose
# rules for external IPs match -m physdev: without it, its every iptables-restore fails.
for m in ip_vs ip_vs_rr ip_vs_wrr ip_vs_lc ip_vs_sh ip_vs_mh dummy veth nf_conntrack nf_nat iptable_nat iptable_filter \
	xt_comment xt_conntrack xt_mark xt_addrtype xt_statistic xt_MASQUERADE xt_recent xt_set xt_tcpudp xt_ipvs \
	ipt_REJECT ip6t_REJECT ip6table_nat ip6table_filter iptable_mangle ip6table_mangle nf_conntrack_netlink hmac sctp xt_sctp xt_nat ip_set ip_set_hash_ip ip_set_hash_ipport ip_set_hash_ipportip ip_set_hash_ipportnet \
	ip_set_hash_net ip_set_bitmap_port xt_physdev; do
	modprobe -d "$SCRATCH/modroot" "$m" 2>/dev/null || echo "kernel-lab: module $m not loaded" >&2
done
ip link set lo up
if [ -n "${SWYD_LAB_TAP:-}" ]; then
	ip addr add "$SWYD_LAB_GUEST_ADDR" dev eth0
	ip link set eth0 up
fi
"$@"
echo $? > "$SCRATCH/exit-status"
halt -f
INIT
chmod +x "$scratch/init.sh"
# modprobe -d looks for lib/modules/<version> under the given root.
mkdir -p "$scratch/modroot/lib/modules"
ln -s "/usr/lib/uml/modules/$ver" "$scratch/modroot/lib/modules/$ver"

net=()
if [ -n "${SWYD_LAB_TAP:-}" ]; then
	[ -n "${SWYD_LAB_GUEST_ADDR:-}" ] || { echo "$0: SWYD_LAB_TAP needs SWYD_LAB_GUEST_ADDR" >&2; exit 2; }
	net=("eth0=tuntap,$SWYD_LAB_TAP")
fi

# UML maps guest memory into host processes page range by page range, and a guest process
# with a large heap (iptables-legacy-restore of 10,000 Services) needs more mappings
# than the host's default limit of 65,530: UML then dies with "ran out of memory on the
# host side". Raise the limit (it only bounds mappings per process) if it is lower.
min_maps=262144
if [ "$(cat /proc/sys/vm/max_map_count)" -lt "$min_maps" ]; then
	echo "$min_maps" > /proc/sys/vm/max_map_count || { echo "$0: cannot raise vm.max_map_count to $min_maps (needs root)" >&2; exit 2; }
fi

linux.uml mem=2G root=/dev/root rootfstype=hostfs rootflags=/ rw quiet \
	init="$scratch/init.sh" con=null con0=fd:0,fd:1 "${net[@]}" </dev/null |
	sed -u -e '/^SELinux:/d' -e '/^mmapper_init/d' -e '/^Failed to initialize ubd/d' -e '/^Halting\.$/d' -e '/^reboot: System halted/d'
# linux.uml exits 0 whatever happened inside; the guest's verdict is in the file.
if [ ! -s "$scratch/exit-status" ]; then
	echo "$0: the guest did not report an exit status (did it crash or run out of memory?)" >&2
	exit 1
fi
exit "$(cat "$scratch/exit-status")"
