#!/usr/bin/env bash
# Builds the real control plane binaries that switchyard's integration tests, benchmarks
# and demo run against: kube-apiserver and etcd, plus upstream kube-proxy when called as
# `build.sh kube-proxy` (only the benchmarks need it, and it costs another ~40 s cold).
#
# They are built from Go modules only (this directory is a test-only module whose `tool`
# directives and staging `replace`s make the packages resolvable), so a fresh machine needs
# nothing but Go and the module proxy. The binaries are cached per version under
#   ${SWITCHYARD_CACHE:-$HOME/.cache/switchyard}/controlplane/<version>/
# and a binary already there is not rebuilt. internal/testenv looks them up in the same
# place. The last line on stdout is that cache directory; progress goes to stderr.
set -euo pipefail

# The one place the version lives. It must match the k8s.io/kubernetes requirement in
# go.mod (checked below) and testenv.KubernetesVersion in internal/testenv.
K8S_VERSION=v1.35.4

usage() {
	echo "usage: $0 [kube-proxy]" >&2
	exit 2
}

with_kube_proxy=false
for arg in "$@"; do
	case "$arg" in
	kube-proxy) with_kube_proxy=true ;;
	*) usage ;;
	esac
done

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${SWITCHYARD_CACHE:-$HOME/.cache/switchyard}/controlplane/${K8S_VERSION}"

# Derive gitMajor/gitMinor from the version so it is only written once.
minor="${K8S_VERSION#v*.}"
minor="${minor%%.*}"
major="${K8S_VERSION#v}"
major="${major%%.*}"
ldflags="-X k8s.io/component-base/version.gitVersion=${K8S_VERSION}"
ldflags+=" -X k8s.io/component-base/version.gitMajor=${major}"
ldflags+=" -X k8s.io/component-base/version.gitMinor=${minor}"

# Pure-Go static binaries: no C toolchain needed, and they run anywhere on the host
# (including inside the UML guest, whose root filesystem is the host's).
export CGO_ENABLED=0
# A go.work somewhere above must not pull this module into the project's workspace.
export GOWORK=off

cd "$here"

# Guard against bumping K8S_VERSION without bumping go.mod (or the other way round):
# the ldflags would then lie about the version the binary really is.
pinned="$(go list -m -f '{{.Version}}' k8s.io/kubernetes)"
if [[ "$pinned" != "$K8S_VERSION" ]]; then
	echo "build.sh: K8S_VERSION=${K8S_VERSION} but hack/controlplane/go.mod requires k8s.io/kubernetes ${pinned}" >&2
	exit 1
fi

mkdir -p "$cache"

tmp=""
cleanup() {
	if [[ -n "$tmp" ]]; then
		rm -f "$tmp"
	fi
}
trap cleanup EXIT

# build NAME PACKAGE [LDFLAGS]: builds PACKAGE into $cache/NAME unless it is already there.
build() {
	local name="$1" pkg="$2" flags="${3:-}"
	local out="$cache/$name"
	if [[ -x "$out" ]]; then
		echo "build.sh: $name: cached at $out" >&2
		return
	fi
	echo "build.sh: building $name ($pkg)..." >&2
	local start=$SECONDS
	# Build next to the target and rename: rename is atomic within a filesystem, so a
	# test never sees (and the skip check above never accepts) a half-written binary,
	# even if this script is interrupted or two runs race.
	tmp="$(mktemp "$cache/.${name}.XXXXXX")"
	go build -o "$tmp" -ldflags "$flags" "$pkg"
	chmod 0755 "$tmp"
	mv -f "$tmp" "$out"
	tmp=""
	echo "build.sh: $name: built in $((SECONDS - start)) s" >&2
}

build kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver "$ldflags"
build etcd go.etcd.io/etcd/server/v3
if $with_kube_proxy; then
	build kube-proxy k8s.io/kubernetes/cmd/kube-proxy "$ldflags"
fi

echo "$cache"
