# syntax=docker/dockerfile:1.7
#
# auditnorm container image: built with cargo in the Rust image, run from distroless "cc" (glibc +
# libgcc, no shell, no package manager) as a non-root numeric user, on a read-only root file
# system. The mapping tables are in /etc/auditnorm/mappings (the same tables the binary has built
# in); mount a directory over it, or anywhere, and point `mappings:` in the config (or
# `--mappings`) at it to replace any of them.
#
#   docker build -t auditnorm:0.1.0 .
#   docker run --rm --read-only --user 65532:65532 -v "$PWD/auditnorm.yaml:/etc/auditnorm/config/auditnorm.yaml:ro" auditnorm:0.1.0
#   docker run --rm -i auditnorm:0.1.0 replay --mappings /etc/auditnorm/mappings - < records.ndjson
#
# The builder and the runtime must be the same Debian release (the binary links that glibc);
# change both ARGs together, e.g. rust:1-bookworm with gcr.io/distroless/cc-debian12:nonroot.
ARG RUST_IMAGE=rust:1-trixie
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian13:nonroot

# ---------------------------------------------------------------------------------------------
FROM ${RUST_IMAGE} AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# rdkafka builds librdkafka from source (its ./configure and make, with cc); libz-sys builds zlib.
# The Rust image has most of these; name them so a slimmer builder fails here, not mid-build.
# (Not version-pinned: the builder's Debian release pins them; nothing of them ships.)
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc g++ make perl python3 pkg-config \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
# zlib linked statically (distroless cc has no libz); no debug info in the shipped binary
# (symbols are kept, so panics still name functions).
ENV LIBZ_SYS_STATIC=1 \
    CARGO_PROFILE_RELEASE_DEBUG=0 \
    CARGO_PROFILE_RELEASE_STRIP=debuginfo \
    CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0

# Only what the build reads (.dockerignore keeps the rest out of the context): the manifest and
# lock file, the sources, and the files compiled in with include_str! (mapping tables, redaction
# rules, OCSF schemas). benches/ because Cargo.toml declares [[bench]] targets.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY mappings ./mappings
COPY rules ./rules
COPY schemas ./schemas

RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin auditnorm \
 && install -D -m 0755 target/release/auditnorm /out/usr/local/bin/auditnorm

# The runtime image has glibc, libgcc and libstdc++ (and OpenSSL 3, for a build with rdkafka's
# `ssl` feature): refuse a binary that needs anything else, rather than fail at container start.
RUN set -eu; \
    ldd /out/usr/local/bin/auditnorm; \
    extra=$(ldd /out/usr/local/bin/auditnorm | awk '{print $1}' \
      | grep -vE '^(linux-vdso\.so\.1|linux-gate\.so\.1|/lib64/ld-linux-x86-64\.so\.2|/lib/ld-linux-aarch64\.so\.1|libc\.so\.6|libm\.so\.6|libdl\.so\.2|libpthread\.so\.0|librt\.so\.1|libgcc_s\.so\.1|libstdc\+\+\.so\.6|libssl\.so\.3|libcrypto\.so\.3)$' || true); \
    if [ -n "$extra" ]; then echo "error: auditnorm links libraries the runtime image lacks: $extra" >&2; exit 1; fi

# The shipped tables parse, and the binary runs.
RUN /out/usr/local/bin/auditnorm validate --mappings mappings \
 && /out/usr/local/bin/auditnorm --version

RUN install -d -m 0755 /out/etc/auditnorm/mappings /out/etc/auditnorm/config \
 && install -m 0644 mappings/*.toml /out/etc/auditnorm/mappings/

# ---------------------------------------------------------------------------------------------
FROM ${RUNTIME_IMAGE}

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="auditnorm" \
      org.opencontainers.image.description="Cloud audit logs (CloudTrail, GCP, Azure, Kubernetes) to OCSF 1.8.0 events" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"

# Root-owned and read-only for the service user.
COPY --from=build /out/usr/local/bin/auditnorm /usr/local/bin/auditnorm
COPY --from=build /out/etc/auditnorm/ /etc/auditnorm/

# distroless "nonroot": uid/gid 65532, numeric so that runAsNonRoot can verify it.
USER 65532:65532
WORKDIR /tmp
# Metrics, /healthz, /readyz (the config's metrics.listen).
EXPOSE 9898

ENTRYPOINT ["/usr/local/bin/auditnorm"]
CMD ["run", "--config", "/etc/auditnorm/config/auditnorm.yaml"]
