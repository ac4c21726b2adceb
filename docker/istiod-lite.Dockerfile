# syntax=docker/dockerfile:1
# istiod-lite (control plane and CA) and meshctl. Build from the repository root:
#   docker build -f docker/istiod-lite.Dockerfile -t ambient-mesh/istiod-lite:0.1.0 .
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p istiod-lite --bin istiod-lite --bin meshctl \
    && mkdir -p /out \
    && cp target/release/istiod-lite target/release/meshctl /out/

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 1337 istiod \
    && useradd --system --uid 1337 --gid 1337 --no-create-home --shell /usr/sbin/nologin istiod
COPY --from=build /out/istiod-lite /out/meshctl /usr/local/bin/
# Needs no privilege: every port is above 1024 and the CA root comes from a mounted Secret.
USER 1337:1337
# xDS and CA over TLS; metrics and debug. (Plaintext 15010 is off unless asked for.)
EXPOSE 15012 15014
ENTRYPOINT ["/usr/local/bin/istiod-lite"]
