# switchyard's image: a static binary on a small Debian base that carries the kernel tools
# it runs (iptables in both flavors, ipset) and the ones an operator reaches for on a
# node (ipvsadm, conntrack). Build it with `make image`.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=v0.1.0-dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/switchyard ./cmd/switchyard

FROM debian:bookworm-slim
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        iptables ipset ipvsadm conntrack kmod \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/switchyard /usr/local/bin/switchyard
ENTRYPOINT ["/usr/local/bin/switchyard"]
