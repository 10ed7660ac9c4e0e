# syntax=docker/dockerfile:1
# Builds smscoord, smsnode, smsmon and the test SMSC into one small runtime image that runs
# as a non-root user. The build needs no protoc (protos compile with protox).
#
#   docker build -t smsmesh:latest .
#   docker run --rm smsmesh:latest smscoord --help

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the registry and build artefacts between builds; the
# binaries are copied out of the cached target directory.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin smscoord --bin smsnode --bin smsmon --bin smsmesh-smsc \
 && mkdir -p /out \
 && cp target/release/smscoord target/release/smsnode target/release/smsmon target/release/smsmesh-smsc /out/

FROM debian:bookworm-slim
# CA certificates: for an https:// OTLP collector (system roots).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/smsmesh --create-home smsmesh \
 && mkdir -p /var/lib/smsmesh/data \
 && chown -R smsmesh:smsmesh /var/lib/smsmesh
COPY --from=build /out/ /usr/local/bin/
USER 10001:10001
WORKDIR /var/lib/smsmesh
ENV SMSMESH_LISTEN=0.0.0.0:50051 \
    SMSMESH_DATA_DIR=/var/lib/smsmesh/data
VOLUME ["/var/lib/smsmesh/data"]
# 50051: gRPC (clients and nodes); 9100: coordinator metrics; 9101: node metrics.
EXPOSE 50051 9100 9101
CMD ["smscoord"]
