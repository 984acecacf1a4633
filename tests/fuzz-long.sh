#!/usr/bin/env bash
# Runs every cargo-fuzz target of the repository (each `*/fuzz` crate: vmm, sandbox,
# agent-protocol, ...) for FUZZ_RUNS executions (default 10 million) as coverage-guided
# libFuzzer binaries, one after the other, and prints a summary line per target. Not for CI
# (tests/fuzz-brief.sh is the brief run); for a release or after touching a parser.
# Needs the nightly toolchain. Exit status 1 if any target crashed, leaked or timed out.
#   FUZZ_RUNS=N    executions per target      FUZZ_ONLY="a b"   only these targets
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
runs=${FUZZ_RUNS:-10000000}
if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "[fuzz-long] needs the nightly toolchain (rustup toolchain install nightly)" >&2
  exit 1
fi
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing"
failed=0
summary=()
for manifest in "$root"/*/fuzz/Cargo.toml; do
  dir=$(dirname "$manifest")
  mapfile -t targets < <(sed -n '/^\[\[bin\]\]/,/^name/ s/^name *= *"\(.*\)"/\1/p' "$manifest")
  if [[ -n ${FUZZ_ONLY:-} ]]; then
    keep=()
    for t in "${targets[@]}"; do [[ " $FUZZ_ONLY " == *" $t "* ]] && keep+=("$t"); done
    targets=("${keep[@]}")
  fi
  ((${#targets[@]})) || continue
  cd "$dir"
  echo "[fuzz-long] building ${dir#"$root"/}: ${targets[*]}" >&2
  cargo +nightly build --quiet --release --target x86_64-unknown-linux-gnu "${targets[@]/#/--bin=}"
  for t in "${targets[@]}"; do
    mkdir -p "target/corpus/$t" target/artifacts
    log="target/$t.long.log"
    start=$(date +%s)
    echo "[fuzz-long] $t: $runs runs (log ${dir#"$root"/}/$log)" >&2
    extra=()
    [[ -d "seeds/$t" ]] && extra+=("seeds/$t")
    [[ -f "$t.dict" ]] && extra+=("-dict=$t.dict")
    if "target/x86_64-unknown-linux-gnu/release/$t" "target/corpus/$t" "${extra[@]}" \
        -runs="$runs" -max_len=4096 -timeout=10 -print_final_stats=1 \
        -artifact_prefix=target/artifacts/ >"$log" 2>&1; then
      result=ok
    else
      result=FAILED
      failed=1
      tail -n 30 "$log" >&2
    fi
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
    line="$t: $result, ${execs:-?} executions in $(($(date +%s) - start)) s"
    echo "[fuzz-long] $line" >&2
    summary+=("$line")
  done
done
printf '[fuzz-long] summary: %s\n' "${summary[@]}" >&2
exit "$failed"
