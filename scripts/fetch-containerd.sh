#!/usr/bin/env bash
# Fetches the containerd versions the shim's e2e tests run against besides the system's
# (Debian 12's 1.6.20, never touched): 1.7.24 from Debian trixie and the newest 2.1.x in
# Debian sid. apt-get works on a private sources list, package lists and cache (the
# system's apt state is left as it is), `apt-get download` fetches the .deb and `dpkg -x`
# unpacks it into a private prefix:
#   $cache/containerd/<version>/usr/bin/{containerd,ctr,containerd-shim-runc-v2}
# A version already unpacked there is kept (the script is idempotent and quick then).
# Prints `export SANDBOX_VM_CONTAINERD_1_7=DIR` and `export SANDBOX_VM_CONTAINERD_2_1=DIR`
# (the directories holding the binaries) on stdout; progress goes to stderr.
# Environment: SANDBOX_VM_CACHE (cache root), SANDBOX_VM_DEBIAN_MIRROR (default: the
# system's Debian mirror, else deb.debian.org).
set -euo pipefail

V1_7=1.7.24
cache=${SANDBOX_VM_CACHE:-$HOME/.cache/sandbox-vm}/containerd
keyring=/usr/share/keyrings/debian-archive-keyring.gpg

log() { echo "[fetch-containerd] $*" >&2; }
die() { log "error: $*"; exit 1; }

# The system's Debian mirror (deb822 or one-line sources), so the host's proxy/mirror
# setup applies to these suites too.
mirror() {
  if [[ -n ${SANDBOX_VM_DEBIAN_MIRROR:-} ]]; then
    echo "$SANDBOX_VM_DEBIAN_MIRROR"
    return
  fi
  local uri
  uri=$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list \
        | grep -oE 'https?://[^ ]+/debian/?' | grep -v security | head -n 1 || true)
  echo "${uri:-http://deb.debian.org/debian}"
}

# apt-get on the private state under $apt (no system lists, sources or cache).
papt() {
  timeout 600 apt-get -q \
    -o Dir::Etc::SourceList="$apt/sources.list" -o Dir::Etc::SourceParts=/dev/null \
    -o Dir::State::Lists="$apt/lists" -o Dir::Cache="$apt/cache" \
    -o Dir::State::Status=/var/lib/dpkg/status -o APT::Get::List-Cleanup=0 \
    -o Debug::NoLocking=1 "$@"
}

apt=$cache/apt
# Reads trixie's and sid's package lists (only when a version is missing).
refresh() {
  [[ -r $keyring ]] || die "$keyring is missing (apt-get install debian-archive-keyring)"
  mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial"
  local uri
  uri=$(mirror)
  printf 'deb [signed-by=%s] %s %s main\n' "$keyring" "$uri" trixie "$keyring" "$uri" sid \
    > "$apt/sources.list"
  log "reading the trixie and sid package lists from $uri"
  papt -o Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false update >&2 \
    || die "apt-get update of trixie/sid from $uri failed"
}

# The candidate versions of package containerd in the private lists, newest first.
versions() {
  papt-cache madison containerd | awk -F'|' '{gsub(/ /, "", $2); print $2}' | sort -rV -u
}
papt-cache() {
  timeout 120 apt-cache \
    -o Dir::Etc::SourceList="$apt/sources.list" -o Dir::Etc::SourceParts=/dev/null \
    -o Dir::State::Lists="$apt/lists" -o Dir::Cache="$apt/cache" \
    -o Dir::State::Status=/var/lib/dpkg/status "$@"
}

have() { [[ -x $cache/$1/usr/bin/containerd && -x $cache/$1/usr/bin/ctr ]]; }

# Unpacks Debian's containerd package of upstream version $1 (the Debian version: the
# newest whose upstream part starts with $1) into $cache/DEBIAN_VERSION, with the
# symlink $cache/$1 to it; prints the bin directory.
fetch() {
  local want=$1 deb_version tmp
  if have "$want"; then
    echo "$cache/$want/usr/bin"
    return
  fi
  deb_version=$(versions | grep -E "^([0-9]+:)?${want//./\\.}([.~+-]|$)" | head -n 1 || true)
  [[ -n $deb_version ]] || die "no containerd $want in trixie or sid (have: $(versions | tr '\n' ' '))"
  log "containerd $deb_version"
  tmp=$(mktemp -d "$cache/.fetch-XXXXXX")
  (cd "$tmp" && papt download "containerd=$deb_version" >&2) \
    || { rm -rf "$tmp"; die "apt-get download containerd=$deb_version failed"; }
  timeout 120 dpkg -x "$tmp"/containerd_*.deb "$tmp/root" \
    || { rm -rf "$tmp"; die "dpkg -x of containerd $deb_version failed"; }
  "$tmp/root/usr/bin/containerd" --version >&2 \
    || { rm -rf "$tmp"; die "containerd $deb_version does not run on this host"; }
  rm -rf "${cache:?}/$deb_version"
  mv "$tmp/root" "$cache/$deb_version"
  rm -rf "$tmp"
  ln -sfn "$deb_version" "$cache/$want"
  echo "$cache/$want/usr/bin"
}

mkdir -p "$cache"
have "$V1_7" && have 2.1 || refresh
# The newest 2.1.x sid has (2.1.9 when this was written); 1.7 pinned to trixie's.
dir17=$(fetch "$V1_7")
dir21=$(fetch 2.1)
echo "export SANDBOX_VM_CONTAINERD_1_7=$dir17"
echo "export SANDBOX_VM_CONTAINERD_2_1=$dir21"
