# etcdguard image: `docker build --build-arg REVISION=$(git rev-parse HEAD) -t etcdguard .`
# (.git is not sent to the build, so `etcdguard --version` says "commit: unknown"; the label has
# it). scripts/image builds the same image without a container engine, as an OCI archive.
# Runs as the non-root user etcdguard (uid/gid 65532); the
# agent needs read access to the node's PKI, so the Helm chart and deploy/ manifests set the
# pod's user (kubeadm's etcd keys are root-only 0600: run as uid 0 there, see the chart's values).
#
# Stage 1 builds etcd and etcdutl of a pinned release from their Go modules (the drill boots etcd);
# stage 2 builds etcdguard (protoc compiles etcd's gRPC protos); stage 3 is the slim runtime.

ARG ETCD_VERSION=v3.6.17

FROM golang:1-bookworm AS etcd
ARG ETCD_VERSION
ENV CGO_ENABLED=0 GOFLAGS=-buildvcs=false
WORKDIR /build
RUN go mod init etcdguard.invalid/peers \
 && go get go.etcd.io/etcd/server/v3@${ETCD_VERSION} go.etcd.io/etcd/etcdutl/v3@${ETCD_VERSION} \
 && go build -trimpath -o /out/etcd go.etcd.io/etcd/server/v3 \
 && go build -trimpath -o /out/etcdutl go.etcd.io/etcd/etcdutl/v3 \
 && /out/etcd --version | grep -qx "etcd Version: ${ETCD_VERSION#v}"

FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p etcdguard \
 && install -D -m 0755 target/release/etcdguard /out/etcdguard

FROM debian:bookworm-slim
ARG ETCD_VERSION
ARG REVISION=unknown
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 65532 etcdguard \
 && useradd --uid 65532 --gid 65532 --home-dir /home/etcdguard --create-home --shell /usr/sbin/nologin etcdguard \
 && install -d -m 1777 /scratch
COPY --from=etcd /out/etcd /out/etcdutl /usr/local/bin/
COPY --from=build /out/etcdguard /usr/local/bin/etcdguard
LABEL org.opencontainers.image.title="etcdguard" \
      org.opencontainers.image.description="etcd backup, verification and restore for Kubernetes control planes" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.revision="${REVISION}" \
      io.etcdguard.etcd-version="${ETCD_VERSION}"
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/etcdguard"]
CMD ["--help"]
