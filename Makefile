# switchyard developer and CI entry points. Every target installs what it needs, so the
# two quick-start commands (make demo, make test) work on a fresh Debian/Ubuntu machine.
SHELL := /bin/bash
export PATH := /usr/local/go/bin:$(HOME)/go/bin:$(PATH)
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo v0.1.0-dev)
LDFLAGS := -X main.version=$(VERSION)
GO ?= go

# Debian packages the tests, the demo and the binary itself use at run time.
# user-mode-linux is the kernel lab: a Linux kernel with IPVS that runs as a process.
DEB_PACKAGES := iptables ipset ipvsadm conntrack iproute2 procps kmod curl iputils-ping ca-certificates user-mode-linux

.PHONY: all build deps controlplane lint test demo parity configdoc featuregates differential differential-ci bench bench-dataplane bench-ci image clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/switchyard ./cmd/switchyard
	$(GO) build -o bin/labagent ./hack/labagent
	$(GO) build -o bin/bench ./benchmarks/cmd/bench
	$(GO) build -o bin/differential ./differential/cmd/differential

# image builds the DaemonSet's container image (Dockerfile) with docker or podman; push it
# to a registry the nodes can pull from and set it in deploy/daemonset.yaml.
IMAGE ?= ghcr.io/switchyard/switchyard:$(VERSION)
CONTAINER_TOOL ?= $(shell command -v docker || command -v podman)
image:
	@if [ -z "$(CONTAINER_TOOL)" ]; then echo "image: install docker or podman"; exit 1; fi
	$(CONTAINER_TOOL) build --build-arg VERSION=$(VERSION) -t $(IMAGE) .

# deps installs the Debian packages (only when one is missing, so a warm machine pays
# nothing) and downloads the Go modules.
deps:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	$(GO) mod download

# controlplane builds kube-apiserver and etcd from Go modules into a per-version cache
# (about 6 minutes cold on 2 cores, nothing when cached).
controlplane:
	hack/controlplane/build.sh

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags kernellab ./ipvs/

# test runs every suite: unit tests, real-kernel tests (host network namespaces for
# iptables, the UML kernel lab for IPVS), and the end-to-end tests against a real
# kube-apiserver in both proxy modes. Needs root.
test: deps controlplane lint
	$(GO) test -race -count=1 -timeout 20m $$($(GO) list ./... | grep -v /test/e2e)
	# Not under -race: the e2e binary also runs inside the kernel lab, where the race
	# detector cannot map its shadow memory.
	$(GO) test -count=1 -timeout 50m -v ./test/e2e/ 2>&1 | grep -vE '^\s+I[0-9]{4} |Feature gate'; exit $${PIPESTATUS[0]}
	$(GO) test -tags kernellab -exec $(CURDIR)/hack/kernel-lab/run.sh -count=1 -timeout 10m ./ipvs/

# parity runs the end-to-end suite in every mode and regenerates docs/parity.md from the
# flows that passed.
parity: deps controlplane
	rm -rf $(CURDIR)/.cache/parity && mkdir -p $(CURDIR)/.cache/parity
	SWYD_PARITY_DIR=$(CURDIR)/.cache/parity $(GO) test -count=1 -timeout 30m ./test/e2e/
	$(GO) run ./hack/parity -in $(CURDIR)/.cache/parity/flows.jsonl -out docs/parity.md

# configdoc regenerates docs/configuration.md from the reference tables in
# config/reference.go; package config's tests fail when it is stale.
configdoc:
	$(GO) run ./hack/configdoc -out docs/configuration.md

# featuregates regenerates config/zz_generated.featuregates.go, kube-proxy's feature gates,
# from kube-proxy itself (the k8s.io/kubernetes hack/controlplane pins; about 8 minutes
# cold on 2 cores); package config's tests fail when it was read from another release.
featuregates:
	cd hack/controlplane && GOWORK=off $(GO) run ./featuregates -out ../../config/zz_generated.featuregates.go

# differential runs switchyard and upstream kube-proxy against the same generated Services
# on the same kernel (iptables-nft and iptables-legacy natively, IPVS in the kernel lab),
# probes every entry point under each, and writes where they differ to docs/differential/
# (report.md, report.json); it fails when they differ anywhere.
# SEED and COUNT choose the scenarios (the same seed generates the same ones), MODES the
# modes, OUT where the report goes.
SEED ?= 1
COUNT ?= 40
MODES ?= iptables-nft,iptables-legacy,ipvs
OUT ?= docs/differential
differential: deps controlplane build
	hack/controlplane/build.sh kube-proxy
	bin/differential -seed $(SEED) -count $(COUNT) -modes $(MODES) -out $(OUT)

# differential-ci is the same at a small size and a fixed seed: the hard corners and a
# few more in both iptables flavors (about 2 minutes), and the first hard corners in IPVS
# mode in the kernel lab, where kube-proxy's first sync alone takes minutes.
differential-ci: deps controlplane build
	hack/controlplane/build.sh kube-proxy
	bin/differential -seed 1 -count 16 -modes iptables-nft,iptables-legacy -out $(CURDIR)/.cache/differential-ci
	bin/differential -seed 1 -count 8 -modes ipvs -out $(CURDIR)/.cache/differential-ci-ipvs

# bench measures rule-refresh latency for every backend at N = 100 to 10,000 Services,
# next to the kernel's own tools and upstream kube-proxy, and writes benchmarks/results/
# (JSON, Markdown, plots). It takes hours on 2 cores, most of them in the kernel lab;
# results are written after each N. BENCH_FLAGS adds flags
# (e.g. BENCH_FLAGS='-services 100,1000,5000,10000,20000').
bench: deps controlplane build
	hack/controlplane/build.sh kube-proxy
	bin/bench run -out benchmarks/results $(BENCH_FLAGS)
	$(MAKE) bench-dataplane

# bench-dataplane measures what a packet and the node pay in each mode: requests/s and
# latency through a Service, and each proxy's CPU and memory at rest and under churn, with
# N = 0, 1,000 and 10,000 other Services (about 75 minutes). It writes
# benchmarks/results/dataplane.* next to the rule-refresh results, whose proxy startups
# tell it which runs cannot start in time. DATAPLANE_FLAGS adds flags.
bench-dataplane: deps controlplane build
	hack/controlplane/build.sh kube-proxy
	bin/bench dataplane -out benchmarks/results -startup-from benchmarks/results/results.json $(DATAPLANE_FLAGS)

# bench-ci runs the same harness at the smallest size that exercises every part of it, so
# that it keeps working (the sizes that say something are make bench's); it fails when the
# harness breaks or the kernel holds the wrong state, never on a timing. A proxy whose
# first sync took longer than 2 minutes in the committed results is recorded as not run,
# and so is any run that outlasts its budget.
bench-ci: deps controlplane build
	hack/controlplane/build.sh kube-proxy
	bin/bench run -out $(CURDIR)/.cache/bench-ci -services 100 -repeats 2 -changes 20 -startup-timeout 2m -change-budget 2m \
		-startup-from benchmarks/results/results.json
	bin/bench dataplane -out $(CURDIR)/.cache/bench-ci -services 0 -duration 2s -warmup 500ms -repeats 1 -rest 5s -churn 5s -startup-timeout 5m

demo: deps controlplane build
	$(GO) run ./hack/demo -switchyard bin/switchyard -agent bin/labagent

clean:
	rm -rf bin
