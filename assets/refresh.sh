#!/usr/bin/env bash
# refresh.sh: MAINTAINER SCRIPT. Users and CI never run it. The crate builds from the files
# in assets/ as committed. Run it only to re-derive those files from npm, for example when
# moving to a new @electric-sql/pglite version.
#
# It re-derives everything in assets/ from the official npm package:
#   pglite.wasm, pglite.data, LICENSE-pglite, extensions/*.tar.gz   byte-for-byte copies from npm
#   pglite-data-manifest.json    pglite.data file manifest, taken from dist/pglite.js
#   pgdata-template.tar.gz       cleanly shut down PGDATA made by PGlite itself under Node
#   SHA256SUMS                   sha256 of all of the above
#   README.md                    only the block between the "refresh.sh:begin/end" markers
#
# Usage:  assets/refresh.sh [VERSION]     (VERSION defaults to 0.5.16; $PGLITE_VERSION also works)
# Needs:  bash, node (>= 18) with npm, GNU tar, gzip, sha256sum, network access to npm.
# Note:   pgdata-template.tar.gz is NOT byte-reproducible. initdb picks a random
#         system_identifier and writes timestamps into pg_control and WAL. So every run
#         changes its sha256 (and SHA256SUMS / README). The packing itself is deterministic.

set -euo pipefail

VERSION="${1:-${PGLITE_VERSION:-0.5.16}}"
PKG="@electric-sql/pglite"
ASSETS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export LC_ALL=C

log() { printf 'refresh: %s\n' "$*" >&2; }
die() { printf 'refresh: ERROR: %s\n' "$*" >&2; exit 1; }

for tool in node npm tar gzip sha256sum; do
  command -v "$tool" >/dev/null || die "$tool not found"
done
tar --version | head -n1 | grep -q 'GNU tar' || die "GNU tar required"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/pglite-refresh.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
log "version $VERSION, work dir $tmp, node $(node --version), npm $(npm --version)"

# ---- 1. npm pack + unpack -------------------------------------------------------------------
mkdir -p "$tmp/pack"
npm pack "$PKG@$VERSION" --pack-destination "$tmp/pack" --json >"$tmp/pack.json"
tgz="$(node -e 'const j=require(process.argv[1]);process.stdout.write(j[0].filename)' "$tmp/pack.json")"
integrity="$(node -e 'const j=require(process.argv[1]);process.stdout.write(j[0].integrity)' "$tmp/pack.json")"
tar -xzf "$tmp/pack/$tgz" -C "$tmp/pack"
pkgdir="$tmp/pack/package"
dist="$pkgdir/dist"
[ -f "$dist/pglite.wasm" ] || die "no dist/pglite.wasm in $tgz"
got_version="$(node -e 'process.stdout.write(require(process.argv[1]).version)' "$pkgdir/package.json")"
[ "$got_version" = "$VERSION" ] || die "packed version is $got_version, wanted $VERSION"
license_field="$(node -e 'process.stdout.write(String(require(process.argv[1]).license))' "$pkgdir/package.json")"
log "packed $tgz ($integrity), package.json license: $license_field"

# ---- 2. npm install (make-template.mjs needs a runnable package) ----------------------------
npm install --no-save --no-audit --no-fund --prefix "$tmp/install" "$PKG@$VERSION" >&2
instdir="$tmp/install/node_modules/$PKG"
diff -r "$dist" "$instdir/dist" >/dev/null || die "npm install and npm pack dist/ differ"

# ---- 3. byte-for-byte copies ----------------------------------------------------------------
cp "$dist/pglite.wasm" "$ASSETS/pglite.wasm"
cp "$dist/pglite.data" "$ASSETS/pglite.data"
cp "$pkgdir/LICENSE" "$ASSETS/LICENSE-pglite"
mkdir -p "$ASSETS/extensions"
rm -f "$ASSETS/extensions/"*.tar.gz
bundles=()
for f in "$dist"/*.tar.gz; do
  cp "$f" "$ASSETS/extensions/"
  bundles+=("$(basename "$f")")
done
log "copied pglite.wasm, pglite.data, LICENSE-pglite and ${#bundles[@]} extension bundles"
# Extension bundles are untarred under /pglite by the runtime: every entry must be relative.
for b in "${bundles[@]}"; do
  bad="$(tar -tzf "$ASSETS/extensions/$b" | grep -Ev '^(share|lib|include)/' || true)"
  [ -z "$bad" ] || die "$b has entries outside share/ lib/ include/: $bad"
done

# ---- 4. pglite.data manifest ------------------------------------------------------------------
node "$ASSETS/tools/extract-manifest.mjs" "$dist" "$ASSETS/pglite-data-manifest.json"

# ---- 5. template PGDATA -------------------------------------------------------------------------
grep -q -- '"--allow-group-access","--encoding","UTF8","--locale=C.UTF-8","--locale-provider=libc","--auth=trust"' \
  "$dist"/chunk-*.js || log "WARNING: PGlite's initdb arguments changed; update README.md"
pgdata="$tmp/template/pgdata"
node "$ASSETS/tools/make-template.mjs" "$instdir" "$pgdata"
[ ! -e "$pgdata/postmaster.pid" ] || die "postmaster.pid left in template"

# ustar + gzip; entries relative to PGDATA (no "/" or "./"), directories included, full-path
# byte-order sort, mtime 0, uid/gid 0, no user/group names. Modes are normalised to 0700 for
# directories and 0600 for files; see README.md ("Template PGDATA") for why.
(cd "$pgdata" && find . -mindepth 1 -printf '%P\n' | sort) >"$tmp/template.list"
tar --create --format=ustar --file="$tmp/pgdata-template.tar" --directory="$pgdata" \
  --mtime=@0 --owner=0 --group=0 --numeric-owner --mode='u=rwX,go=' \
  --no-recursion --verbatim-files-from --files-from="$tmp/template.list"
gzip -9 -n -c "$tmp/pgdata-template.tar" >"$ASSETS/pgdata-template.tar.gz"

tar -tzf "$ASSETS/pgdata-template.tar.gz" >"$tmp/template.names"
tpl_entries="$(wc -l <"$tmp/template.names")"
tpl_dirs="$(grep -c '/$' "$tmp/template.names")"
tpl_files=$((tpl_entries - tpl_dirs))
tpl_empty_files="$(find "$pgdata" -type f -empty | wc -l)"
tpl_empty_dirs="$(find "$pgdata" -mindepth 1 -type d -empty | wc -l)"
tpl_data_bytes="$(find "$pgdata" -type f -printf '%s\n' | awk '{s+=$1} END {print s+0}')"
tpl_tar_bytes="$(stat -c %s "$tmp/pgdata-template.tar")"
[ "$tpl_entries" -eq "$(wc -l <"$tmp/template.list")" ] || die "template tar entry count mismatch"
! grep -Eq '^(/|\./)' "$tmp/template.names" || die "template has absolute or ./ names"
! grep -qx 'postmaster.pid' "$tmp/template.names" || die "template has postmaster.pid"
grep -qx 'PG_VERSION' "$tmp/template.names" || die "template has no PG_VERSION"
log "template: $tpl_entries entries ($tpl_dirs dirs, $tpl_files files), $tpl_data_bytes bytes of file data, $tpl_tar_bytes bytes as .tar"

# ---- 6. SHA256SUMS ------------------------------------------------------------------------------
(
  cd "$ASSETS"
  sha256sum pglite.wasm pglite.data pglite-data-manifest.json pgdata-template.tar.gz LICENSE-pglite
  for b in "${bundles[@]}"; do sha256sum "extensions/$b"; done
) >"$ASSETS/SHA256SUMS"
(cd "$ASSETS" && sha256sum --check --quiet SHA256SUMS) || die "SHA256SUMS does not verify"
want="$(sha256sum "$dist/pglite.wasm" | cut -d' ' -f1)"
have="$(grep '  pglite.wasm$' "$ASSETS/SHA256SUMS" | cut -d' ' -f1)"
[ "$want" = "$have" ] || die "pglite.wasm sha256 $have in SHA256SUMS, npm has $want"
log "SHA256SUMS written; pglite.wasm sha256 $have matches npm"

# ---- 7. README.md generated block ----------------------------------------------------------------
pg_version="$(cat "$pgdata/PG_VERSION")"
sizeof() { stat -c %s "$ASSETS/$1"; }
join_list() { paste -sd, - | sed 's/,/, /g'; }
{
  echo "<!-- refresh.sh:begin (generated by assets/refresh.sh, do not edit by hand) -->"
  echo
  echo "Generated from \`$PKG@$VERSION\` (npm tarball \`$tgz\`, integrity \`$integrity\`)."
  echo
  echo "| File | Bytes | sha256 |"
  echo "|---|---:|---|"
  while read -r hash path; do
    echo "| \`$path\` | $(sizeof "$path") | \`$hash\` |"
  done <"$ASSETS/SHA256SUMS"
  echo
  echo "Template PGDATA (\`pgdata-template.tar.gz\`): PG_VERSION $pg_version, $tpl_entries entries"
  echo "($tpl_dirs directories, $tpl_files regular files, of which $tpl_empty_dirs empty directories and"
  echo "$tpl_empty_files empty files), $tpl_data_bytes bytes of file data, $tpl_tar_bytes bytes as an"
  echo "uncompressed tar, $(sizeof pgdata-template.tar.gz) bytes gzipped."
  echo
  echo "Extension bundles (\`extensions/\`): ${#bundles[@]}. \"Extensions\" are the \`.control\` files inside"
  echo "(what \`CREATE EXTENSION\` accepts); \"Libraries\" are the side modules under \`lib/postgresql/\`."
  echo
  echo "| Bundle | Extensions (\`.control\`) | Libraries (\`lib/postgresql/*.so\`) | Other directories |"
  echo "|---|---|---|---|"
  for b in "${bundles[@]}"; do
    tar -tzf "$ASSETS/extensions/$b" | sort >"$tmp/bundle.list"
    exts="$(sed -nE 's|^share/postgresql/extension/([^/]+)\.control$|\1|p' "$tmp/bundle.list" | join_list)"
    libs="$(sed -nE 's|^lib/postgresql/([^/]+\.so)$|\1|p' "$tmp/bundle.list" | join_list)"
    other="$(grep -Ev '^(share/postgresql/extension|lib/postgresql)/[^/]+$' "$tmp/bundle.list" \
      | sed -E 's|[^/]+$||' | sort -u | sed -E 's|^(.+)$|`\1`|' | join_list || true)"
    echo "| \`$b\` | ${exts:-(none: module only, no CREATE EXTENSION)} | ${libs:--} | ${other:--} |"
  done
  echo
  echo "<!-- refresh.sh:end -->"
} >"$tmp/generated.md"

readme="$ASSETS/README.md"
if [ -f "$readme" ] && grep -q '^<!-- refresh.sh:begin' "$readme" && grep -q '^<!-- refresh.sh:end' "$readme"; then
  awk -v gen="$tmp/generated.md" '
    /^<!-- refresh.sh:begin/ { while ((getline line < gen) > 0) print line; skip = 1; next }
    /^<!-- refresh.sh:end/   { skip = 0; next }
    !skip { print }
  ' "$readme" >"$tmp/README.md"
  cp "$tmp/README.md" "$readme"
  log "README.md generated block updated"
else
  cp "$tmp/generated.md" "$ASSETS/README.generated.md"
  log "WARNING: README.md has no refresh.sh markers; wrote README.generated.md instead"
fi

log "done. Review: git diff --stat -- assets/  (the template's sha256 always changes)"
