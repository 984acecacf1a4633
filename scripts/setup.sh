#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine and builds everything: Debian packages, the guest kernel
# (cached by config hash under ~/.cache/sandbox-vm), the test initramfs and the binaries.
# Prints `export` lines for the artifact paths on stdout's last lines (eval-able).
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS=(build-essential flex bison bc libelf-dev libssl-dev cpio xz-utils python3
      linux-source-6.12 qemu-system-x86 busybox-static e2fsprogs util-linux
      podman runc crun libseccomp-dev libcap-ng-dev pkg-config mmdebstrap
      containerd containernetworking-plugins python3-venv curl iproute2 iperf3
      # tests/conformance/build.sh: the OCI runtime-tools validation suite (GOPATH build)
      golang-go golang-github-opencontainers-specs-dev golang-github-google-uuid-dev
      golang-github-mrunalp-fileutils-dev golang-github-urfave-cli-dev
      golang-github-opencontainers-selinux-dev golang-gocapability-dev
      golang-github-xeipuuv-gojsonschema-dev golang-github-blang-semver-dev
      golang-github-hashicorp-go-multierror-dev golang-golang-x-sys-dev
      golang-github-sirupsen-logrus-dev)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "[setup] installing: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq "${missing[@]}" >&2
fi

# virtiofsd (the vhost-user virtio-fs backend each sandbox runs), from crates.io.
VIRTIOFSD_VERSION=1.14.0
if ! /usr/local/bin/virtiofsd --version 2>/dev/null | grep -q "$VIRTIOFSD_VERSION"; then
  echo "[setup] virtiofsd $VIRTIOFSD_VERSION (cargo install, about a minute)" >&2
  cargo install --quiet --locked --root /usr/local --version "$VIRTIOFSD_VERSION" virtiofsd >&2
fi

echo "[setup] guest kernel" >&2
KERNEL=$(guest-kernel-config/build.sh | tail -n 1)
echo "[setup] test initramfs" >&2
INITRD=$(images/build-test-initramfs.sh | tail -n 1)
echo "[setup] virtio e2e initramfs" >&2
VIRTIO_INITRD=$(images/build-virtio-initramfs.sh | tail -n 1)
echo "[setup] guest image (agent disk)" >&2
AGENT_DISK=$(images/build-agent-disk.sh | tail -n 1)
echo "[setup] agent initramfs (OCI runtime guest)" >&2
AGENT_INITRD=$(images/build-agent-initramfs.sh | tail -n 1)
echo "[setup] isolation benchmark probe (static)" >&2
PROBE=$(tests/probe/build-static.sh | tail -n 1)
echo "[setup] binaries (cargo build --release)" >&2
cargo build --release --workspace >&2
# containerd looks for containerd-shim-NAME-v2 on its PATH only (1.6.20 ignores
# runtime_path); a symlink keeps the shim's real path in target/release, beside the
# sandbox-vm-vmm binary it runs the VMM with.
ln -sfn "$PWD/target/release/containerd-shim-sandbox-vm-v2" /usr/local/bin/containerd-shim-sandbox-vm-v2

# containerd 1.7 and 2.1 beside the system's 1.6 (the shim's e2e version matrix), in a
# private prefix under the cache.
echo "[setup] containerd 1.7 and 2.1 (Debian trixie/sid packages, private prefix)" >&2
CONTAINERD_DIRS=$(scripts/fetch-containerd.sh)
echo "$CONTAINERD_DIRS"

echo "export SANDBOX_VM_KERNEL=$KERNEL"
echo "export SANDBOX_VM_TEST_INITRD=$INITRD"
echo "export SANDBOX_VM_VIRTIO_INITRD=$VIRTIO_INITRD"
echo "export SANDBOX_VM_AGENT_DISK=$AGENT_DISK"
echo "export SANDBOX_VM_INITRD=$AGENT_INITRD"
echo "export SANDBOX_VM_VIRTIOFSD=/usr/local/bin/virtiofsd"
echo "export SANDBOX_VM_PROBE=$PROBE"
