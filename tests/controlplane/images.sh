#!/usr/bin/env bash
# Container images for the real test nodes, without a registry: OCI image
# archives assembled from binaries on this machine, imported straight into
# each node's containerd.
#
#   images.sh build NAME:TAG [--bin PATH[:DEST]]... [--file SRC:DEST]...
#             [--entrypoint "ARGV"] [--cmd "ARGV"] [--user UID[:GID]]
#             [--env KEY=VALUE]... [--workdir DIR]
#        writes an archive (one uncompressed layer: the binaries, the shared
#        libraries they link as ldd lists them, the extra files, /etc/passwd,
#        /etc/group, /tmp) to the cache and prints its path. DEST defaults to
#        /usr/local/bin/<name>; ARGV is split on spaces. The same inputs give
#        the same archive, found in the cache without building again.
#   images.sh import DIR ARCHIVE...
#        imports the archives into every real node of the control plane in DIR
#        (`cp.sh up DIR --real-nodes N`); pods use them with
#        `imagePullPolicy: Never` (or IfNotPresent).
#
# Archives live in ${GAMEZONE_CACHE:-$HOME/.cache/gamezone}/images/<inputs-sha256>.tar;
# those not built or used for 3 days, and all but the newest 24, are removed (every build of
# a binary makes a new one).
set -euo pipefail

SELF="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
CACHE=${GAMEZONE_CACHE:-$HOME/.cache/gamezone}
IMAGES="$CACHE/images"
# Part of every cache key: a change to how archives are laid out makes new ones.
RECIPE=1

say() { printf '[images] %s\n' "$*" >&2; }
die() { printf '[images] error: %s\n' "$*" >&2; exit 1; }

usage() {
  sed -n '2,20p' "$SELF" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

# JSON string literal of $1 (the inputs are paths, words and KEY=VALUE pairs).
json_str() {
  local s=$1
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  s=${s//$'\t'/\\t}
  printf '"%s"' "$s"
}

# JSON array of the words of $1.
json_words() {
  local out="" w
  for w in $1; do out+="${out:+,}$(json_str "$w")"; done
  printf '[%s]' "$out"
}

sha() { sha256sum "$1" | cut -d' ' -f1; }

# Shared libraries PATH needs at run time, one absolute path a line (the
# dynamic loader included); nothing for a static binary.
libraries() {
  local out
  out=$(ldd "$1" 2>&1) || return 0 # "not a dynamic executable"
  if grep -q 'not found' <<<"$out"; then
    die "$1 links libraries that are not on this machine: $(grep 'not found' <<<"$out" | tr -s ' \t' ' ')"
  fi
  awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$out"
}

cmd_build() {
  [[ $# -ge 1 ]] || usage
  local name=$1; shift
  [[ "$name" =~ ^[a-z0-9][a-z0-9./_-]*:[A-Za-z0-9_.-]+$ ]] ||
    die "image name '$name' must look like host/path:tag (lower case), e.g. gamezone.local/app:1"
  local bins=() files=() envs=() entrypoint="" cmd="" user="" workdir="/"
  while [[ $# -gt 0 ]]; do
    case $1 in
      --bin) bins+=("${2:?--bin needs PATH[:DEST]}"); shift 2 ;;
      --file) files+=("${2:?--file needs SRC:DEST}"); shift 2 ;;
      --entrypoint) entrypoint=${2:?--entrypoint needs a command}; shift 2 ;;
      --cmd) cmd=${2:?--cmd needs arguments}; shift 2 ;;
      --user) user=${2:?--user needs UID[:GID]}; shift 2 ;;
      --env) envs+=("${2:?--env needs KEY=VALUE}"); shift 2 ;;
      --workdir) workdir=${2:?--workdir needs a directory}; shift 2 ;;
      *) die "unknown option for build: $1" ;;
    esac
  done
  ((${#bins[@]} + ${#files[@]})) || die "an image needs at least one --bin or --file"
  [[ -z "$user" || "$user" =~ ^[0-9]+(:[0-9]+)?$ ]] || die "--user must be numeric UID[:GID], got '$user'"

  # What goes where: "SRC DEST" lines, binaries then their libraries then files.
  local plan="" spec src dest lib
  for spec in "${bins[@]}"; do
    src=${spec%%:*}
    dest=/usr/local/bin/$(basename "$src")
    [[ "$spec" == *:* ]] && dest=${spec#*:}
    [[ -f "$src" && -x "$src" ]] || die "--bin $src is not an executable file"
    plan+="$src $dest"$'\n'
    while read -r lib; do
      [[ -n "$lib" ]] && plan+="$lib $lib"$'\n'
    done < <(libraries "$src")
  done
  for spec in "${files[@]}"; do
    [[ "$spec" == *:/* ]] || die "--file $spec must be SRC:/absolute/destination"
    src=${spec%%:*} dest=${spec#*:}
    [[ -f "$src" ]] || die "--file $src is not a file"
    plan+="$src $dest"$'\n'
  done
  plan=$(sort -u -k2,2 <<<"$plan" | sed '/^$/d')
  while read -r src dest; do
    [[ "$dest" == /* && "$dest" != */../* && "$dest" != */./* ]] || die "destination $dest must be a plain absolute path"
  done <<<"$plan"

  local config
  config="{\"architecture\":\"amd64\",\"os\":\"linux\",\"config\":{"
  config+="\"Env\":[\"PATH=/usr/local/bin:/usr/bin:/bin\"$(for e in "${envs[@]}"; do printf ',%s' "$(json_str "$e")"; done)]"
  [[ -n "$entrypoint" ]] && config+=",\"Entrypoint\":$(json_words "$entrypoint")"
  [[ -n "$cmd" ]] && config+=",\"Cmd\":$(json_words "$cmd")"
  [[ -n "$user" ]] && config+=",\"User\":$(json_str "$user")"
  config+=",\"WorkingDir\":$(json_str "$workdir")}"

  local key
  key=$(
    echo "recipe $RECIPE $name"
    echo "$config"
    while read -r src dest; do echo "$(sha "$src") $(stat -c %a "$src") $dest"; done <<<"$plan"
  ) 
  key=$(sha256sum <<<"$key" | cut -d' ' -f1)
  local archive="$IMAGES/$key.tar"
  if [[ -f "$archive" ]]; then
    touch "$archive" # in use: kept by the pruning below
    say "$name: cached"
    echo "$archive"
    return 0
  fi

  mkdir -p "$IMAGES"
  find "$IMAGES" -maxdepth 1 -name '*.tar' -mtime +3 -delete 2>/dev/null || true
  find "$IMAGES" -maxdepth 1 -name '*.tar' -printf '%T@ %p\n' | sort -rn | tail -n +25 | cut -d' ' -f2- |
    xargs -r rm -f
  local work
  work=$(mktemp -d "$IMAGES/.build.XXXXXX")
  # shellcheck disable=SC2064 # expand now: the directory is fixed
  trap "rm -rf '$work'" EXIT
  local root="$work/rootfs" layout="$work/layout"
  mkdir -p "$root/etc" "$root/tmp" "$layout/blobs/sha256"
  chmod 1777 "$root/tmp"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
  while read -r src dest; do
    mkdir -p "$root$(dirname "$dest")"
    cp -L --preserve=mode "$src" "$root$dest"
  done <<<"$plan"

  # One uncompressed layer, byte for byte the same for the same inputs.
  local tar_opts=(--sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=gnu)
  tar "${tar_opts[@]}" -C "$root" -cf "$work/layer.tar" .
  local layer_digest layer_size
  layer_digest=$(sha "$work/layer.tar")
  layer_size=$(stat -c %s "$work/layer.tar")
  mv "$work/layer.tar" "$layout/blobs/sha256/$layer_digest"

  config+=",\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[\"sha256:$layer_digest\"]}}"
  printf '%s' "$config" >"$work/config.json"
  local config_digest config_size
  config_digest=$(sha "$work/config.json")
  config_size=$(stat -c %s "$work/config.json")
  mv "$work/config.json" "$layout/blobs/sha256/$config_digest"

  printf '%s' "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\
\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"sha256:$config_digest\",\"size\":$config_size},\
\"layers\":[{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar\",\"digest\":\"sha256:$layer_digest\",\"size\":$layer_size}]}" \
    >"$work/manifest.json"
  local manifest_digest manifest_size
  manifest_digest=$(sha "$work/manifest.json")
  manifest_size=$(stat -c %s "$work/manifest.json")
  mv "$work/manifest.json" "$layout/blobs/sha256/$manifest_digest"

  printf '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
  printf '%s' "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.index.v1+json\",\"manifests\":[{\
\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"sha256:$manifest_digest\",\"size\":$manifest_size,\
\"platform\":{\"architecture\":\"amd64\",\"os\":\"linux\"},\
\"annotations\":{\"io.containerd.image.name\":$(json_str "$name"),\"org.opencontainers.image.ref.name\":$(json_str "${name##*:}")}}]}" \
    >"$layout/index.json"

  tar "${tar_opts[@]}" -C "$layout" -cf "$work/image.tar" oci-layout index.json blobs
  mv "$work/image.tar" "$archive"
  rm -rf "$work"
  trap - EXIT
  say "$name: built ($(du -h "$archive" | cut -f1), $(wc -l <<<"$plan") files)"
  echo "$archive"
}

cmd_import() {
  [[ $# -ge 2 ]] || usage
  local dir=$1; shift
  local env="$dir/real-nodes.env"
  [[ -f "$env" ]] || die "$env not found: start the control plane with \`cp.sh up $dir --real-nodes N\`"
  local ctr="" nodes=() line
  while read -r line; do
    case $line in
      CTR=*) ctr=${line#CTR=} ;;
      NODE=*) nodes+=("${line#NODE=}") ;;
    esac
  done <"$env"
  [[ -x "$ctr" ]] || die "ctr not found at '$ctr' (named in $env): run \`cp.sh build --real-nodes\`"
  local archive node name socket
  for archive in "$@"; do
    [[ -f "$archive" ]] || die "$archive is not a file (make one with: $SELF build ...)"
    for node in "${nodes[@]}"; do
      # NODE=<name> <containerd socket> ...
      read -r name socket _ <<<"$node"
      # ctr warns on every call that this host's cgroup v1 is deprecated: a fact of the
      # machine, said once in the node's containerd log, not news at each import.
      local rc=0
      "$ctr" --address "$socket" -n k8s.io images import --platform linux/amd64 "$archive" 2>&1 >/dev/null |
        { grep -v 'DEPRECATION: The support for cgroup v1' >&2 || true; } || rc=$?
      ((rc == 0)) || die "importing $archive into $name's containerd ($socket) failed"
    done
  done
  say "imported $# image(s) into ${#nodes[@]} node(s)"
}

main() {
  [[ $# -ge 1 ]] || usage
  local sub=$1; shift
  case $sub in
    build) cmd_build "$@" ;;
    import) cmd_import "$@" ;;
    -h | --help | help) usage ;;
    *) die "unknown subcommand '$sub' (build, import)" ;;
  esac
}

main "$@"
