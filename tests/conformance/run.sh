#!/usr/bin/env bash
# Runs the OCI runtime-tools validation suite against runc and sandbox-vm in the same run,
# prints a table per test (cases passed/failed for each runtime) and exits 1 when
# sandbox-vm fails a case runc passes that known-differences.txt does not list, or leaves
# a process, mount or directory behind.
#
#   tests/conformance/run.sh            the CI subset
#   tests/conformance/run.sh --all      every validation program
#   tests/conformance/run.sh TEST...    the named ones (names as in validation/)
#
# Uses target/release/sandbox-vm (or $SANDBOX_VM_BIN), which finds the guest kernel and
# image as usual (the SANDBOX_VM_* variables scripts/setup.sh prints, else the build
# cache and images/out). Knobs: CONFORMANCE_SCALE (sandbox-vm's waits, times the suite's;
# default 15), CONFORMANCE_TIMEOUT (seconds per program, default 2400), --logdir DIR.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=${SANDBOX_VM_BIN:-$root/target/release/sandbox-vm}
[[ -x $bin ]] || { echo "no $bin: cargo build --release -p runtime-cli -p vmm" >&2; exit 1; }
command -v runc > /dev/null || { echo "runc is missing: apt-get install runc" >&2; exit 1; }
python3 "$here/test_conformance.py" 2> /dev/null \
  || { python3 "$here/test_conformance.py"; echo "conformance.py's own tests fail" >&2; exit 1; }
suite=$(bash "$here/build.sh" | tail -n 1)
exec python3 "$here/conformance.py" --suite "$suite" --sandbox-vm "$bin" "$@"
