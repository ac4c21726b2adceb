# syntax=docker/dockerfile:1
# The L7 waypoint proxy, deployed by istiod-lite per Gateway of class istio-waypoint.
# Build from the repository root:
#   docker build -f docker/waypoint.Dockerfile -t ambient-mesh/waypoint:0.1.0 .
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p waypoint --bin waypoint \
    && mkdir -p /out \
    && cp target/release/waypoint /out/

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 1337 waypoint \
    && useradd --system --uid 1337 --gid 1337 --no-create-home --shell /usr/sbin/nologin waypoint
COPY --from=build /out/waypoint /usr/local/bin/
# No privilege: it terminates and originates HBONE on its own pod IP, with its own identity.
USER 1337:1337
# HBONE, metrics, readiness. (Admin 15000 is localhost only.)
EXPOSE 15008 15020 15021
ENTRYPOINT ["/usr/local/bin/waypoint"]
