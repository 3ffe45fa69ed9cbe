# syntax=docker/dockerfile:1.7
# The GameZone image: `gamezone` (the operator, ENTRYPOINT), and what zone pods run from this
# same image: `gamezone-init` (the artifact init container) and `gamezone-sdk` (the SDK sidecar,
# built small by the `sidecar` profile: every game pod maps it).
#
#   docker buildx build -t ghcr.io/gamezone-dev/gamezone:0.1.0 .
#
# Runtime base: distroless cc-debian12 (glibc, libgcc_s, libssl3/libcrypto3, CA certificates),
# matching the bookworm builder. libgit2 and libssh2 are built vendored by their -sys crates and
# use the image's OpenSSL 3; zlib is linked statically (LIBZ_SYS_STATIC) so nothing else is needed.
# The build stage checks that with ldd before anything is copied.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src
ENV CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0 \
    LIBZ_SYS_STATIC=1
COPY . .
# The target dir is a cache mount, so the binaries are copied out in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin gamezone --bin gamezone-init \
    && cargo build --profile sidecar --locked -p gamezone-sdk --bin gamezone-sdk \
    && install -D -m 0755 -t /out target/release/gamezone target/sidecar/gamezone-sdk target/release/gamezone-init
# Fail here, not at run time, if a binary needs a shared library the runtime image lacks.
RUN for bin in /out/gamezone /out/gamezone-sdk /out/gamezone-init; do \
      ldd "$bin"; \
      if ldd "$bin" | grep -vE 'linux-vdso|ld-linux|lib(c|m|dl|rt|pthread|gcc_s|ssl|crypto)\.so'; then \
        echo "$bin links a library missing from distroless/cc-debian12" >&2; exit 1; \
      fi; \
    done \
    && /out/gamezone --version \
    && /out/gamezone-sdk --version \
    && /out/gamezone-init --help > /dev/null

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="gamezone" \
      org.opencontainers.image.description="Kubernetes operator that turns one GameZone object into a running game zone" \
      org.opencontainers.image.source="https://github.com/gamezone-dev/gamezone" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/gamezone /out/gamezone-sdk /out/gamezone-init /usr/local/bin/
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/gamezone"]
CMD ["run"]
