#!/usr/bin/env bash
# Builds the OCI runtime-tools validation suite (the public conformance tests for runc-style
# runtimes) for tests/conformance/run.sh, and prints the directory holding it on stdout's
# last line: `runtimetest` (static), `rootfs-amd64.tar.gz` (Debian's static busybox with a
# link per applet) and `validation/NAME`, one TAP program per test.
#
# The source is Debian trixie's golang-github-opencontainers-runtime-tools source package
# (bookworm's -dev package has no validation/), fetched with apt-get through a private
# sources list and state (the system's apt sources are left alone). It is built in GOPATH
# mode with bookworm's golang-go and golang-*-dev packages (scripts/setup.sh installs them),
# with patches/ applied and tap-go/ standing in for github.com/mndrix/tap-go.
#
# Cached under ${SANDBOX_VM_CACHE:-$HOME/.cache/sandbox-vm}/conformance/, keyed by this
# script, the patches, tap-go and busybox: a second run prints the directory at once.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
log() { echo "[conformance] $*" >&2; }

SRC_PKG=golang-github-opencontainers-runtime-tools
SRC_VERSION=0.9.0.109.ge931285-1
ORIG=${SRC_PKG}_${SRC_VERSION%-*}.orig.tar.xz
ORIG_SHA256=203989a1ea98cf2aaced79155bbda09270b20db19b03376dde91ab12e5e6a0fe
DEPS=(golang-go busybox-static util-linux golang-github-opencontainers-specs-dev
      golang-github-google-uuid-dev golang-github-mrunalp-fileutils-dev
      golang-github-urfave-cli-dev golang-github-opencontainers-selinux-dev
      golang-gocapability-dev golang-github-xeipuuv-gojsonschema-dev
      golang-github-blang-semver-dev golang-github-hashicorp-go-multierror-dev
      golang-golang-x-sys-dev golang-github-sirupsen-logrus-dev)

missing=()
for p in "${DEPS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "missing Debian packages: ${missing[*]} (scripts/setup.sh installs them)" >&2
  exit 1
fi

cache=${SANDBOX_VM_CACHE:-$HOME/.cache/sandbox-vm}/conformance
key=$( { cat "$0" "$here"/patches/*.patch "$here"/tap-go/*.go; sha256sum /bin/busybox; go version; } \
  | sha256sum | cut -c1-16)
out=$cache/$key
if [[ -f $out/.complete ]]; then
  echo "$out"
  exit 0
fi
mkdir -p "$cache"

# The source tarball, checked against the hash in trixie's Sources index.
fetch_source() {
  local apt=$cache/apt
  [[ -f $cache/$ORIG ]] && echo "$ORIG_SHA256  $cache/$ORIG" | sha256sum -c --status && return
  log "fetching $SRC_PKG $SRC_VERSION (Debian trixie source)"
  mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial"
  echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" \
    > "$apt/sources.list"
  local opts=(-o "Dir::Etc::SourceList=$apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
              -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache" -o APT::Sandbox::User=root)
  timeout 300 apt-get "${opts[@]}" -qq update >&2
  # --tar-only: the mirror here serves the tarball but not always the .dsc.
  (cd "$cache" && timeout 300 apt-get "${opts[@]}" -qq source --download-only --tar-only \
    "$SRC_PKG=$SRC_VERSION" >&2)
  echo "$ORIG_SHA256  $cache/$ORIG" | sha256sum -c --status \
    || { echo "$ORIG: sha256 is not $ORIG_SHA256" >&2; exit 1; }
}

# A rootfs of Debian's static busybox with a link per applet, as the suite untars it.
make_rootfs() {
  local r=$1/rootfs
  mkdir -p "$r"/{bin,dev,proc,sys,etc,tmp}
  cp /bin/busybox "$r/bin/busybox"
  for a in $(/bin/busybox --list); do
    [[ $a == busybox ]] || ln -s busybox "$r/bin/$a"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > "$r/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' > "$r/etc/group"
  tar -C "$r" --sort=name --owner=0 --group=0 --mtime=@0 -czf "$1/out/rootfs-amd64.tar.gz" .
}

build() {
  local work=$1 src=$1/gopath/src/github.com/opencontainers/runtime-tools
  mkdir -p "$src" "$work/gopath/src/github.com/mndrix/tap-go" "$work/out/validation"
  tar -xJf "$cache/$ORIG" -C "$src" --strip-components=1
  for p in "$here"/patches/*.patch; do
    patch -s -p1 -d "$src" < "$p"
  done
  cp "$here"/tap-go/*.go "$work/gopath/src/github.com/mndrix/tap-go/"
  export GO111MODULE=off GOFLAGS= GOPATH=$work/gopath:/usr/share/gocode GOCACHE=$work/gocache
  log "building runtimetest and the validation programs (GOPATH mode, a few minutes)"
  (cd "$src" \
    && timeout 900 go build -tags "netgo osusergo" -ldflags "-s -w -extldflags -static" \
         -o "$work/out/runtimetest" ./cmd/runtimetest \
    && timeout 1800 go build -ldflags "-s -w" -o "$work/out/validation/" ./validation/...)
  make_rootfs "$work"
  echo "$SRC_VERSION" > "$work/out/VERSION"
}

fetch_source
work=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
build "$work"
rm -rf "$out"
mv "$work/out" "$out"
touch "$out/.complete"
# Builds of older keys go.
find "$cache" -mindepth 1 -maxdepth 1 -type d ! -path "$out" ! -name apt ! -name 'build.*' -exec rm -rf {} +
log "$(find "$out/validation" -type f | wc -l) validation programs in $out"
echo "$out"
