#!/usr/bin/env bash
# The project's container images, built from this workspace without a registry or a container
# engine: the workspace's binaries and the shared libraries they link, as OCI archives
# (tests/controlplane/images.sh), cached by content, optionally imported into a local control
# plane's real nodes.
#
#   scripts/images.sh build [IMAGE...]        build the images (all, or those named: operator,
#                                             game-server, migrater, git, samba); prints "NAME ARCHIVE"
#   scripts/images.sh import DIR [IMAGE...]   build, then import into the real nodes of `cp.sh up DIR --real-nodes N`
#   scripts/images.sh binaries                only the workspace's binaries the images hold
#   scripts/images.sh names                   print the image names only
#
# Images (what deploy/, the tests and the demo use):
#   ghcr.io/gamezone-dev/gamezone:0.1.0         gamezone (entrypoint, `run`), gamezone-sdk (the SDK sidecar),
#                                               gamezone-init, CA certificates
#   gamezone.dev/example/game-server:0.1.0      examples/game-server
#   gamezone.dev/example/migrater:0.1.0         examples/migrater: /gamezone-migrate (entrypoint) + /migrate
#   gamezone.dev/example/git:0.1.0              git (clone over git://, http://) for the init-container benchmark
#   ghcr.io/gamezone-dev/gamezone-samba:0.1.0   a zone's edits share: Debian's smbd + smbpasswd, gamezone
#                                               (`gamezone edits serve`, the entrypoint), user 0 (smbd needs it)
#
# The Dockerfile stays how the published operator image is built; this makes an image with the same
# binaries, paths, entrypoint and user from what the workspace builds here.
#   CARGO_TARGET_DIR         where cargo builds (default ~/.cache/gamezone/cargo-target)
#   GAMEZONE_CACHE           cache root (default ~/.cache/gamezone)
#   GAMEZONE_IMAGE_PROFILE   cargo profile of the binaries: release (default; the benchmarks) or
#                            dev (the demo and the end-to-end tests: fastest from a cold cache,
#                            and the binaries `cargo test` has built already, so a test run
#                            compiles the workspace once)
#   GAMEZONE_SDK_PROFILE     with release: the SDK sidecar's profile, sidecar (default: what
#                            published images hold) or release (no second build)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
images="$root/tests/controlplane/images.sh"
cache="${GAMEZONE_CACHE:-$HOME/.cache/gamezone}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/cargo-target}"

OPERATOR=ghcr.io/gamezone-dev/gamezone:0.1.0
GAME_SERVER=gamezone.dev/example/game-server:0.1.0
MIGRATER=gamezone.dev/example/migrater:0.1.0
GIT=gamezone.dev/example/git:0.1.0
SAMBA=ghcr.io/gamezone-dev/gamezone-samba:0.1.0

say() { printf '[images] %s\n' "$*" >&2; }
die() { printf '[images] error: %s\n' "$*" >&2; exit 1; }

usage() {
  sed -n '2,31p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

# Release images hold the SDK sidecar from the `sidecar` profile (Cargo.toml): every game pod
# maps it. That profile (fat LTO, one codegen unit) is the slow part of a cold build, so
# GAMEZONE_SDK_PROFILE=release (the demo's) builds the sidecar with the rest instead.
PROFILE="${GAMEZONE_IMAGE_PROFILE:-release}"
case $PROFILE in
  release) BIN_DIR="$CARGO_TARGET_DIR/release" SDK_PROFILE=${GAMEZONE_SDK_PROFILE:-sidecar} ;;
  dev) BIN_DIR="$CARGO_TARGET_DIR/debug" SDK_PROFILE=dev ;;
  *) die "GAMEZONE_IMAGE_PROFILE is '$PROFILE'; use release or dev" ;;
esac
case $SDK_PROFILE in
  sidecar) SDK_BIN="$CARGO_TARGET_DIR/sidecar/gamezone-sdk" ;;
  "$PROFILE") SDK_BIN="$BIN_DIR/gamezone-sdk" ;;
  *) die "GAMEZONE_SDK_PROFILE is '$SDK_PROFILE'; use sidecar or $PROFILE" ;;
esac

# The workspace's binaries the images named (operator, game-server, samba) need, in $PROFILE
# (cargo is a no-op when they are fresh; after `cargo test --workspace` the dev ones are). Only
# those: the network benchmark needs the game server alone, not a cold release build of the rest.
build_binaries() {
  local want=" $* " pkgs=() sdk=0
  [[ $want == *" operator "* || $want == *" samba "* ]] && pkgs+=(-p gamezone --bin gamezone)
  [[ $want == *" operator "* ]] && pkgs+=(-p gamezone-init --bin gamezone-init) && sdk=1
  [[ $want == *" game-server "* ]] && pkgs+=(-p game-server --bin game-server)
  ((sdk)) && [ "$SDK_PROFILE" = "$PROFILE" ] && pkgs+=(-p gamezone-sdk --bin gamezone-sdk)
  if ((${#pkgs[@]})); then
    say "cargo build --profile $PROFILE ${pkgs[*]} into $CARGO_TARGET_DIR"
    (cd "$root" && cargo build --profile "$PROFILE" --locked -q "${pkgs[@]}") >&2
  fi
  if ((sdk)) && [ "$SDK_PROFILE" != "$PROFILE" ]; then
    say "cargo build --profile $SDK_PROFILE -p gamezone-sdk into $CARGO_TARGET_DIR"
    (cd "$root" && cargo build --profile "$SDK_PROFILE" --locked -q -p gamezone-sdk --bin gamezone-sdk) >&2
  fi
}

# "NAME ARCHIVE" for every image asked for by its short name (operator, game-server, migrater,
# git, samba), or for all of them.
build_images() {
  local want=("$@") short
  [[ ${#want[@]} -gt 0 ]] || want=(operator game-server migrater git samba)
  for short in "${want[@]}"; do
    case $short in operator | game-server | migrater | git | samba) ;; *) die "no image '$short' (operator, game-server, migrater, git, samba)" ;; esac
  done
  wanted() { [[ " ${want[*]} " == *" $1 "* ]]; }
  build_binaries "${want[@]}"
  local rel="$BIN_DIR" migrate entry git_bin archive

  if wanted operator; then
    archive=$("$images" build "$OPERATOR" \
      --bin "$rel/gamezone" --bin "$SDK_BIN" --bin "$rel/gamezone-init" \
      --file /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt \
      --entrypoint /usr/local/bin/gamezone --cmd run --user 65532:65532)
    echo "$OPERATOR $archive"
  fi

  if wanted game-server; then
    archive=$("$images" build "$GAME_SERVER" --bin "$rel/game-server" \
      --entrypoint /usr/local/bin/game-server --user 65532:65532)
    echo "$GAME_SERVER $archive"
  fi

  if wanted migrater; then
    migrate="$("$root/examples/migrater/build.sh" migrate | tail -n 1)"
    entry="$("$root/examples/migrater/build.sh" entrypoint | tail -n 1)"
    archive=$("$images" build "$MIGRATER" --bin "$entry:/gamezone-migrate" --bin "$migrate:/migrate" \
      --entrypoint /gamezone-migrate --user 65532:65532)
    echo "$MIGRATER $archive"
  fi
  wanted git && git_image
  wanted samba && samba_image
  return 0
}

git_image() {
  local git_bin archive

  # git clone needs git-remote-http (libcurl) and the pack helpers beside git itself.
  git_bin="$(command -v git)" || die "git is not installed (apt-get install git)"
  local exec_path helpers=()
  exec_path="$(git --exec-path)"
  for h in git-remote-http git-upload-pack git-index-pack; do
    [[ -x "$exec_path/$h" ]] && helpers+=(--bin "$exec_path/$h:$exec_path/$h")
  done
  archive=$("$images" build "$GIT" --bin "$git_bin:/usr/bin/git" "${helpers[@]}" \
    --file /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt \
    --entrypoint /usr/bin/git --env HOME=/tmp --user 65532:65532)
  echo "$GIT $archive"
}

samba_image() {
  local archive rel="$BIN_DIR"
  # smbd runs as root and writes the edits as `nonroot` (65532, in the image's /etc/passwd).
  # Its libraries come from ldd like every binary's; it loads no module for the one share.
  local smbd smbpasswd
  smbd="$(command -v smbd || echo /usr/sbin/smbd)"
  smbpasswd="$(command -v smbpasswd || echo /usr/bin/smbpasswd)"
  [[ -x "$smbd" && -x "$smbpasswd" ]] || die "smbd/smbpasswd are not installed (apt-get install samba)"
  archive=$("$images" build "$SAMBA" --bin "$rel/gamezone" --bin "$smbd:/usr/sbin/smbd" \
    --bin "$smbpasswd:/usr/bin/smbpasswd" \
    --entrypoint /usr/local/bin/gamezone --cmd "edits serve" --user 0:0)
  echo "$SAMBA $archive"
}

main() {
  [[ $# -ge 1 ]] || usage
  local sub=$1; shift
  case $sub in
    build) build_images "$@" ;;
    binaries) build_binaries operator game-server ;;
    import)
      [[ $# -ge 1 ]] || die "import needs the control plane's directory: scripts/images.sh import DIR [IMAGE...]"
      local built dir=$1
      shift
      built="$(build_images "$@")"
      # shellcheck disable=SC2046 # one archive path per word
      "$images" import "$dir" $(awk '{print $2}' <<<"$built")
      echo "$built" ;;
    names) printf '%s\n' "$OPERATOR" "$GAME_SERVER" "$MIGRATER" "$GIT" "$SAMBA" ;;
    -h | --help | help) usage ;;
    *) die "unknown subcommand '$sub' (build, binaries, import, names)" ;;
  esac
}

main "$@"
