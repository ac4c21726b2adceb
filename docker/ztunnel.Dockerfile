# syntax=docker/dockerfile:1
# ztunnel, its node agent and its CNI plugin (with the script that installs the plugin on the
# node). Build from the repository root:
#   docker build -f docker/ztunnel.Dockerfile -t ambient-mesh/ztunnel:0.1.0 .
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the registry and compiled dependencies between builds; the binaries are
# copied out because the target cache is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p ztunnel --bin ztunnel --bin ztunnel-agent \
    && mkdir -p /out \
    && cp target/release/ztunnel target/release/ztunnel-agent /out/
# The CNI plugin runs on the host, not in this image: link it statically so it does not
# depend on the host's C library version. (--target keeps the flag off build scripts.)
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    host=$(rustc -vV | sed -n 's/^host: //p') \
    && RUSTFLAGS="-C target-feature=+crt-static" \
       cargo build --release --locked --target "$host" -p ztunnel --bin ztunnel-cni \
    && cp "target/$host/release/ztunnel-cni" /out/

FROM debian:bookworm-slim
# nftables and iptables (nft backend) for pods' redirection, iproute2 for their policy routes,
# jq for install-cni's edit of the host's CNI configuration list.
RUN apt-get update \
    && apt-get install -y --no-install-recommends nftables iptables iproute2 jq ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ztunnel /out/ztunnel-agent /out/ztunnel-cni /usr/local/bin/
COPY --chmod=0755 docker/install-cni.sh /usr/local/bin/install-cni
# Root on purpose: ztunnel enters pods' network namespaces (CAP_SYS_ADMIN) and marks its
# sockets (CAP_NET_ADMIN); the DaemonSet grants exactly those capabilities, not privileged.
USER 0:0
# Metrics and readiness. 15001/15006/15008/15053 are bound inside each pod's network
# namespace, not this container's; the admin port 15000 is localhost only.
EXPOSE 15020 15021
ENTRYPOINT ["/usr/local/bin/ztunnel"]
