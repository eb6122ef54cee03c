#!/usr/bin/env bash
# Fetch onnxruntime's C/C++ headers (Debian trixie libonnxruntime-dev 1.21) into a cache dir.
# The archive address is taken from this machine's own apt sources; apt's config is left untouched.
set -euo pipefail

DEST="${1:-${QCOMPILER_ORT_HEADERS:-$HOME/.cache/qcompiler/onnxruntime-headers-1.21}}"
if [ -f "$DEST/include/onnxruntime_c_api.h" ]; then
    echo "$DEST"
    exit 0
fi

KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
SUITE=trixie
PKG=libonnxruntime-dev

# Archive URI: the first "URIs:" of a non-security deb822 entry, or the first "deb" line of a
# one-line sources list.
uri=""
for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    uri=$(awk 'BEGIN{RS=""; FS="\n"} {u=""; s=""; for(i=1;i<=NF;i++){ if($i ~ /^URIs:/){u=$i}; if($i ~ /^Suites:/){s=$i} }
          if(u!="" && s !~ /security/){ sub(/^URIs:[ \t]*/,"",u); split(u,a," "); print a[1]; exit } }' "$f")
    [ -n "$uri" ] && break
done
if [ -z "$uri" ]; then
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        uri=$(awk '$1=="deb" && $0 !~ /security/ { for(i=2;i<=NF;i++) if($i ~ /:\/\//){print $i; exit} }' "$f")
        [ -n "$uri" ] && break
    done
fi
if [ -z "$uri" ]; then
    echo "fetch_ort_headers: no Debian archive URI found in /etc/apt sources" >&2
    exit 1
fi

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$TMP/lists/partial" "$TMP/cache/archives/partial" "$TMP/etc/sources.list.d" "$TMP/etc/preferences.d" "$TMP/dl"
echo "deb [signed-by=$KEYRING] $uri $SUITE main" > "$TMP/etc/sources.list"
: > "$TMP/status"
APT_OPTS=(
    -o "Dir::Etc::sourcelist=$TMP/etc/sources.list"
    -o "Dir::Etc::sourceparts=$TMP/etc/sources.list.d"
    -o "Dir::Etc::preferencesparts=$TMP/etc/preferences.d"
    -o "Dir::State::Lists=$TMP/lists"
    -o "Dir::State::status=$TMP/status"
    -o "Dir::Cache=$TMP/cache"
    -o "Debug::NoLocking=1"
    -o "APT::Get::List-Cleanup=0"
    -o "APT::Sandbox::User=root"
)
apt-get "${APT_OPTS[@]}" -qq update >&2
(cd "$TMP/dl" && apt-get "${APT_OPTS[@]}" -qq download "$PKG" >&2)
deb=$(ls "$TMP"/dl/*.deb | head -1)
dpkg -x "$deb" "$TMP/x"
hdr=$(dirname "$(find "$TMP/x" -name onnxruntime_c_api.h | head -1)")
if [ ! -f "$hdr/onnxruntime_c_api.h" ]; then
    echo "fetch_ort_headers: onnxruntime_c_api.h not in $deb" >&2
    exit 1
fi
mkdir -p "$(dirname "$DEST")"
rm -rf "$DEST.tmp"
mkdir -p "$DEST.tmp/include"
cp -r "$hdr"/. "$DEST.tmp/include/"
basename "$deb" > "$DEST.tmp/SOURCE_PACKAGE"
rm -rf "$DEST"
mv "$DEST.tmp" "$DEST"
echo "$DEST"
