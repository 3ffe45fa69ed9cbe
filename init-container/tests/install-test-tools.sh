#!/usr/bin/env bash
# Installs the real servers the gamezone-init tests run against (s3s-fs, rudolfs, sshd, smbd, docker-registry). Idempotent: s3s-fs and rudolfs are cached by version
# under $GAMEZONE_TOOLS (default $GAMEZONE_CACHE/tools, $GAMEZONE_CACHE defaulting to ~/.cache/gamezone) and only built when missing.
set -euo pipefail

CACHE="${GAMEZONE_CACHE:-$HOME/.cache/gamezone}"
TOOLS="${GAMEZONE_TOOLS:-$CACHE/tools}"
TOOLS_TARGET="${GAMEZONE_TOOLS_TARGET:-$CACHE/tools-target}"
S3S_FS_VERSION="${S3S_FS_VERSION:-0.14.1}"
RUDOLFS_VERSION="${RUDOLFS_VERSION:-0.3.8}"

# A crates.io tool, built once per version into $TOOLS/NAME-VERSION (cargo install ARGS...). A test
# server, not a product: opt-level 1 without LTO builds much faster and still serves far faster
# than the tests and benchmarks ask (both sides of a benchmark talk to the same server).
cargo_tool() {
  local name=$1 version=$2 bin=$3
  shift 3
  local root="$TOOLS/$name-$version"
  if [[ -x "$root/bin/$bin" ]]; then
    echo "$name $version: cached at $root/bin/$bin"
    return
  fi
  echo "$name $version: building (a few minutes on 2 cores)"
  mkdir -p "$TOOLS" "$TOOLS_TARGET"
  CARGO_PROFILE_RELEASE_OPT_LEVEL=1 CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
    CARGO_PROFILE_RELEASE_DEBUG=false CARGO_TARGET_DIR="$TOOLS_TARGET" \
    cargo install "$name" --version "$version" --locked --root "$root" "$@"
}
s3s_root="$TOOLS/s3s-fs-$S3S_FS_VERSION"
cargo_tool s3s-fs "$S3S_FS_VERSION" s3s-fs --features binary
# rudolfs, a Git LFS server, for the LFS tests (its local storage backend).
rudolfs_root="$TOOLS/rudolfs-$RUDOLFS_VERSION"
cargo_tool rudolfs "$RUDOLFS_VERSION" rudolfs

# sshd for the git-over-ssh tests (the tests run their own sshd on a loopback port; the system's
# ssh service is not started or changed).
if [[ ! -x "${GAMEZONE_SSHD:-/usr/sbin/sshd}" ]] || ! command -v ssh-keygen >/dev/null; then
  echo "openssh-server: installing from Debian"
  SUDO=; [[ "$(id -u)" = 0 ]] || SUDO=sudo
  $SUDO apt-get update -qq >/dev/null
  # policy-rc.d keeps the package's service from starting where there is no init system.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq openssh-server openssh-client >/dev/null
fi

# Samba for the edits tests (they run their own smbd on a loopback port with a generated smb.conf;
# the system's smbd/nmbd services are not started or changed).
if [[ ! -x "${GAMEZONE_SMBD:-/usr/sbin/smbd}" ]] || ! command -v smbclient >/dev/null || ! command -v smbpasswd >/dev/null; then
  echo "samba, smbclient: installing from Debian"
  SUDO=; [[ "$(id -u)" = 0 ]] || SUDO=sudo
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq samba smbclient >/dev/null
fi

# CNCF Distribution and skopeo for the packed layers' tests (tests/registry.rs runs its own
# registry on a loopback port; the package's service is not started).
# git-lfs pushes the LFS tests' objects.
if ! command -v docker-registry >/dev/null || ! command -v skopeo >/dev/null || ! command -v git-lfs >/dev/null; then
  echo "docker-registry, skopeo, git-lfs: installing from Debian"
  SUDO=; [[ "$(id -u)" = 0 ]] || SUDO=sudo
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq docker-registry skopeo git-lfs >/dev/null
fi

for tool in git ssh-keygen smbclient smbpasswd docker-registry skopeo git-lfs; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y $tool" >&2; exit 1; }
done
git_exec="$(git --exec-path)"
[[ -x "$git_exec/git-http-backend" ]] || { echo "missing $git_exec/git-http-backend" >&2; exit 1; }

echo "test tools ready; tests find s3s-fs via GAMEZONE_S3S_FS or $s3s_root/bin/s3s-fs, sshd via GAMEZONE_SSHD or /usr/sbin/sshd, smbd via GAMEZONE_SMBD or /usr/sbin/smbd, docker-registry via GAMEZONE_DOCKER_REGISTRY or /usr/bin/docker-registry, rudolfs via GAMEZONE_RUDOLFS or $rudolfs_root/bin/rudolfs"
