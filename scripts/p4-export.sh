#!/usr/bin/env bash
# Exports a Perforce depot folder at one changelist in the format gamezone-init's p4Export layers read:
#   OUT            tarball (.tar, .tar.gz or .tar.zst) of the files, paths relative to DEPOT_PATH
#   OUT.manifest.json  {"changelist":N,"archiveSha256":"...","files":[{"depotPath","rev","path","size","sha256"}]}
#
# Usage: scripts/p4-export.sh [-m print|sync] [-c CHANGELIST] //depot/game/... OUT.tar.gz
#   -m print  (default) `p4 print -q -o` each file revision; needs no client workspace.
#   -m sync   `p4 sync -p` into the current client's root (faster for many files; -p leaves the
#             have list untouched); needs P4CLIENT whose view maps DEPOT_PATH.
#   -c N      changelist to export; default: the latest submitted change under DEPOT_PATH.
# Needs: p4 (logged in: P4PORT/P4USER/P4TICKETS as usual), tar, sha256sum, stat, and gzip or zstd.
# Files deleted at the changelist are left out; `+x` file types keep the exec bit; symlink types
# become symlinks. Upload OUT and OUT.manifest.json side by side (HTTP server or S3 bucket).
set -euo pipefail

mode=print
change=""
while getopts "m:c:" opt; do
  case "$opt" in
    m) mode="$OPTARG" ;;
    c) change="$OPTARG" ;;
    *) sed -n '2,15p' "$0"; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[[ $# -eq 2 ]] || { sed -n '2,15p' "$0"; exit 2; }
depot_path="$1"
out="$2"
[[ "$depot_path" == //*/... ]] || { echo "DEPOT_PATH must look like //depot/folder/..." >&2; exit 2; }
prefix="${depot_path%...}" # //depot/game/

if [[ -z "$change" ]]; then
  change="$(p4 -ztag -F %change% changes -m1 -s submitted "${depot_path}")"
  [[ -n "$change" ]] || { echo "no submitted change under $depot_path" >&2; exit 1; }
fi

stage="$(mktemp -d)"
chmod 0755 "$stage"
list="$(mktemp)"
trap 'rm -rf "$stage" "$list"' EXIT

# depotFile<TAB>rev<TAB>type for every file that exists at the change.
p4 -ztag -F '%depotFile%	%rev%	%type%' files -e "${depot_path}@${change}" > "$list"
[[ -s "$list" ]] || { echo "no files under ${depot_path}@${change}" >&2; exit 1; }

if [[ "$mode" == sync ]]; then
  root="$(p4 -ztag -F %clientRoot% info)"
  p4 -q sync -p "${depot_path}@${change}"
fi

while IFS=$'\t' read -r depot_file rev type; do
  rel="${depot_file#"$prefix"}"
  case "$rel" in /*|*../*|..) echo "refusing path $rel" >&2; exit 1 ;; esac
  dest="$stage/$rel"
  mkdir -p "$(dirname "$dest")"
  if [[ "$mode" == sync ]]; then
    local_path="$(p4 -ztag -F %path% where "$depot_file")"
    cp -P "$local_path" "$dest"
  else
    p4 -q print -o "$dest" "${depot_file}#${rev}"
  fi
  case "$type" in
    symlink*) if [[ ! -L "$dest" ]]; then target="$(cat "$dest")"; rm -f "$dest"; ln -s "$target" "$dest"; fi ;;
    x*|kx*|*+*x*) chmod 0755 "$dest" ;;
    *) chmod 0644 "$dest" ;;
  esac
done < "$list"

# Reproducible tarball: sorted names, no owners, fixed mtime.
tarflags=(--sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$stage")
case "$out" in
  *.tar.gz|*.tgz) tar "${tarflags[@]}" -cf - . | gzip -n > "$out" ;;
  *.tar.zst) tar "${tarflags[@]}" -cf - . | zstd -q -T0 -o "$out" ;;
  *.tar) tar "${tarflags[@]}" -cf "$out" . ;;
  *) echo "OUT must end in .tar, .tar.gz or .tar.zst" >&2; exit 2 ;;
esac

json_escape() { local s="${1//\\/\\\\}"; s="${s//\"/\\\"}"; printf '%s' "$s"; }
archive_sha="$(sha256sum "$out" | cut -d' ' -f1)"
{
  printf '{"changelist":%s,"archiveSha256":"%s","files":[' "$change" "$archive_sha"
  first=1
  while IFS=$'\t' read -r depot_file rev type; do
    rel="${depot_file#"$prefix"}"
    [[ -L "$stage/$rel" ]] && continue # symlinks are not files of the manifest
    size="$(stat -c %s "$stage/$rel")"
    sha="$(sha256sum "$stage/$rel" | cut -d' ' -f1)"
    [[ $first -eq 1 ]] || printf ','
    first=0
    printf '{"depotPath":"%s","rev":%s,"path":"%s","size":%s,"sha256":"%s"}' \
      "$(json_escape "$depot_file")" "$rev" "$(json_escape "$rel")" "$size" "$sha"
  done < "$list"
  printf ']}\n'
} > "$out.manifest.json"

echo "exported ${depot_path}@${change}: $(wc -l < "$list") files -> $out (sha256 $archive_sha)"
