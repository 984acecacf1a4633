#!/usr/bin/env bash
# Build (or fetch from the cache) the sandbox-vm guest kernel.
#
#   K=$(guest-kernel-config/build.sh | tail -1)    # absolute path of vmlinux
#
# The kernel is Debian's linux-source-6.12 + patches/*.patch, configured as
# `make tinyconfig` + fragments/*.config. The result is cached under
#   ${SANDBOX_VM_CACHE:-$HOME/.cache/sandbox-vm}/kernel/<key>/
#     vmlinux  config  System.map  release
# where <key> = sha256(fragments, patches, this script, linux-source version);
# kernel/current is a symlink to the newest key. A cache hit returns in well
# under a second. A miss builds in kernel/build/ (about 7 minutes on 2 cores;
# a later change to one patch or option rebuilds only what it affects, since
# the tree is kept and patches are swapped in place) and installs the result
# with a rename, so an interrupted build never leaves a half-cached kernel.
#
# Progress goes to stderr; stdout carries only the vmlinux path.
# Environment: SANDBOX_VM_CACHE (cache root), SANDBOX_VM_KERNEL_JOBS (make -j).
set -euo pipefail

SRC_PKG=linux-source-6.12
SRC_TARBALL=/usr/src/linux-source-6.12.tar.xz
BUILD_DEPS=(build-essential flex bison bc libelf-dev libssl-dev xz-utils)

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${SANDBOX_VM_CACHE:-$HOME/.cache/sandbox-vm}/kernel
jobs=${SANDBOX_VM_KERNEL_JOBS:-$(nproc)}

say() { echo "[kernel] $*" >&2; }
die() { echo "[kernel] error: $*" >&2; exit 1; }

shopt -s nullglob
fragments=("$here"/fragments/*.config)
patches=("$here"/patches/*.patch)
shopt -u nullglob
((${#fragments[@]})) || die "no fragments in $here/fragments"

# --- 1. source package and build dependencies --------------------------------
install_pkgs() {
    local sudo=()
    if ((EUID != 0)); then
        command -v sudo >/dev/null || die "need root or sudo to apt-get install: $*"
        sudo=(sudo)
    fi
    say "installing $* with apt-get"
    "${sudo[@]}" apt-get install -y --no-install-recommends "$@" >&2 ||
        die "apt-get install $* failed (try: apt-get update)"
}

missing=()
[[ -f $SRC_TARBALL ]] || missing+=("$SRC_PKG")
for p in "${BUILD_DEPS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
((${#missing[@]} == 0)) || install_pkgs "${missing[@]}"
[[ -f $SRC_TARBALL ]] || die "$SRC_PKG is installed but $SRC_TARBALL is missing"
src_version=$(dpkg-query -W -f='${Version}' "$SRC_PKG" 2>/dev/null) ||
    die "cannot read the version of $SRC_PKG"

# --- 2. cache key and lookup -------------------------------------------------
key=$(
    for f in "${fragments[@]}" "${patches[@]}" "$here/build.sh"; do
        printf '== %s\n' "${f#"$here"/}"
        cat "$f"
    done
    printf '== %s %s\n' "$SRC_PKG" "$src_version"
)
key=$(printf '%s' "$key" | sha256sum | cut -d' ' -f1)
out=$cache/$key

set_current() {
    ln -sfn "$key" "$cache/.current.$$"
    mv -Tf "$cache/.current.$$" "$cache/current"
}

if [[ -f $out/vmlinux ]]; then
    say "cache hit: $out"
    set_current
    echo "$out/vmlinux"
    exit 0
fi

mkdir -p "$cache"
exec 9>"$cache/.lock"
if ! flock -n 9; then
    say "another build holds $cache/.lock; waiting"
    flock 9
fi
if [[ -f $out/vmlinux ]]; then # built by whoever held the lock
    say "cache hit: $out"
    set_current
    echo "$out/vmlinux"
    exit 0
fi

# --- 3. source tree: extract once, swap patch sets in place ------------------
# kernel/build/src is reused across keys; .sandbox-vm/ in it records what it
# was extracted from and which patches are applied. If anything about it is
# off, it is thrown away and extracted again.
tree=$cache/build/src
state=$tree/.sandbox-vm
log=$cache/build/build.log

fresh_tree() {
    say "extracting $SRC_TARBALL…"
    rm -rf "$cache/build"
    mkdir -p "$tree"
    tar -xJf "$SRC_TARBALL" -C "$tree" --strip-components=1 ||
        die "extracting $SRC_TARBALL failed"
    mkdir -p "$state/applied"
    echo "$src_version" >"$state/source-version"
}

unapply_patches() {
    local p applied=("$state"/applied/*.patch)
    for ((i = ${#applied[@]} - 1; i >= 0; i--)); do
        p=${applied[i]}
        [[ -f $p ]] || continue
        patch -d "$tree" -p1 -R -s -f <"$p" >/dev/null 2>&1 || return 1
        rm -f "$p"
    done
}

same_patches() {
    local applied=("$state"/applied/*.patch)
    [[ -f ${applied[0]} ]] || applied=()
    ((${#applied[@]} == ${#patches[@]})) || return 1
    for ((i = 0; i < ${#patches[@]}; i++)); do
        cmp -s "${patches[i]}" "${applied[i]}" || return 1
    done
}

if [[ ! -f $state/source-version || $(cat "$state/source-version") != "$src_version" ||
      -e $state/patching ]]; then
    fresh_tree
fi
if ! same_patches; then
    touch "$state/patching" # an interrupted swap means: extract again
    if ! unapply_patches; then
        say "could not take the old patches out of $tree; starting over"
        fresh_tree
        touch "$state/patching"
    fi
    for p in "${patches[@]}"; do
        say "applying ${p##*/}"
        patch -d "$tree" -p1 -s -f -N <"$p" >&2 || die "patch ${p##*/} does not apply to $SRC_PKG $src_version"
        cp "$p" "$state/applied/"
    done
    rm -f "$state/patching"
fi

# --- 4. configuration ----------------------------------------------------------
say "configuring: tinyconfig + ${fragments[*]##*/}"
kmake() { make -C "$tree" --no-print-directory ARCH=x86_64 "$@"; }
kmake -s tinyconfig >"$log" 2>&1 || die "make tinyconfig failed (see $log)"
(cd "$tree" && scripts/kconfig/merge_config.sh -m .config "${fragments[@]}") >>"$log" 2>&1 ||
    die "merge_config.sh failed (see $log)"
kmake -s olddefconfig >>"$log" 2>&1 || die "make olddefconfig failed (see $log)"

# Every option a fragment asks for must have survived olddefconfig (a missing
# dependency silently drops it otherwise).
bad=()
while IFS= read -r line; do
    if [[ $line =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
        sym=${BASH_REMATCH[1]}
        if grep -qE "^$sym=" "$tree/.config"; then
            bad+=("$sym: wanted unset, got $(grep -E "^$sym=" "$tree/.config")")
        fi
    elif [[ $line =~ ^(CONFIG_[A-Za-z0-9_]+)= ]]; then
        sym=${BASH_REMATCH[1]}
        if ! grep -qxF "$line" "$tree/.config"; then
            got=$(grep -E "^$sym=|^# $sym is not set" "$tree/.config" || true)
            bad+=("$sym: wanted ${line#*=}, got ${got:-nothing (dependency missing?)}")
        fi
    fi
done < <(cat "${fragments[@]}")
if ((${#bad[@]})); then
    printf '[kernel]   %s\n' "${bad[@]}" >&2
    die "${#bad[@]} requested option(s) did not end up in .config (listed above)"
fi

# --- 5. build and install ------------------------------------------------------
say "building vmlinux with -j$jobs (≈7 min on 2 cores from scratch; log: $log)…"
start=$SECONDS
if ! kmake -j"$jobs" vmlinux >>"$log" 2>&1; then
    tail -n 30 "$log" >&2
    die "kernel build failed (full log: $log)"
fi
say "built in $((SECONDS - start)) s"

tmp=$cache/.tmp.$key.$$
rm -rf "$tmp"
mkdir -p "$tmp"
cp "$tree/vmlinux" "$tmp/vmlinux"
cp "$tree/.config" "$tmp/config"
cp "$tree/System.map" "$tmp/System.map"
kmake -s kernelrelease >"$tmp/release"
if ! mv -T "$tmp" "$out" 2>/dev/null; then
    rm -rf "$tmp"
    [[ -f $out/vmlinux ]] || die "could not install into $out"
fi
set_current
say "release $(cat "$out/release"), cached in $out"
echo "$out/vmlinux"
