#!/usr/bin/env bash
# The test suite: setup (idempotent, cached), formatting and lint checks, a brief run of
# the fuzz targets, the template the e2e tests restore from (tests/test-template.sh), then
# every test in the workspace (unit, KVM tiny-guest, CLI, agent, and the e2e boots of the
# real kernel), then the CI subset of the OCI runtime-tools validation suite
# (tests/conformance/run.sh: sandbox-vm beside runc).
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/setup.sh)"
export SANDBOX_VM_KERNEL SANDBOX_VM_TEST_INITRD SANDBOX_VM_VIRTIO_INITRD SANDBOX_VM_AGENT_DISK SANDBOX_VM_INITRD SANDBOX_VM_VIRTIOFSD SANDBOX_VM_PROBE
export SANDBOX_VM_CONTAINERD_1_7 SANDBOX_VM_CONTAINERD_2_1
echo "[test] cargo fmt --check" >&2
cargo fmt --all -- --check
echo "[test] cargo clippy" >&2
cargo clippy --workspace --all-targets -- -D warnings
echo "[test] fuzz targets, briefly" >&2
bash tests/fuzz-brief.sh
echo "[test] template for the e2e tests" >&2
# Sandboxes whose VM matches it restore from this template instead of booting cold.
export SANDBOX_VM_TEMPLATE_DIR=${SANDBOX_VM_CACHE:-$HOME/.cache/sandbox-vm}/test-templates
bash tests/test-template.sh
# e2e tests whose sandboxes should match one of them check that they restored it.
export SANDBOX_VM_E2E_TEMPLATES=1
echo "[test] cargo test" >&2
cargo test --workspace -- --nocapture 2>&1
echo "[test] OCI conformance: runtime-tools validation, CI subset, sandbox-vm beside runc" >&2
bash tests/conformance/run.sh
