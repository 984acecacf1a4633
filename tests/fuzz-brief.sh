#!/usr/bin/env bash
# Runs each cargo-fuzz target of the repository's `*/fuzz` crates (vmm, sandbox,
# agent-protocol, ...) briefly (default 10 s each: about a million executions per target here) as coverage-guided libFuzzer binaries,
# built with the nightly toolchain and the sanitizer-coverage flags (the same binary
# `cargo fuzz` builds, without needing cargo-fuzz installed). A crash fails the run. The
# same targets also run as bounded random-input unit tests in `cargo test`.
# tests/fuzz-long.sh runs them all for 10 million executions each.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
secs=${FUZZ_SECONDS:-10}
if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "[fuzz] no nightly toolchain here: skipping the libFuzzer runs (the bounded random-input tests still ran in cargo test)" >&2
  exit 0
fi
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing"
for manifest in "$root"/*/fuzz/Cargo.toml; do
  dir=$(dirname "$manifest")
  mapfile -t targets < <(sed -n '/^\[\[bin\]\]/,/^name/ s/^name *= *"\(.*\)"/\1/p' "$manifest")
  cd "$dir"
  echo "[fuzz] building ${dir#"$root"/}: ${targets[*]} (nightly, sancov)" >&2
  cargo +nightly build --quiet --release --target x86_64-unknown-linux-gnu "${targets[@]/#/--bin=}"
  for t in "${targets[@]}"; do
    mkdir -p "target/corpus/$t"
    extra=()
    [[ -d "seeds/$t" ]] && extra+=("seeds/$t")
    [[ -f "$t.dict" ]] && extra+=("-dict=$t.dict")
    echo "[fuzz] $t for ${secs} s" >&2
    log="target/$t.log"
    if ! "target/x86_64-unknown-linux-gnu/release/$t" "target/corpus/$t" "${extra[@]}" \
        -max_total_time="$secs" -max_len=4096 -print_final_stats=1 >"$log" 2>&1; then
      tail -n 40 "$log" >&2
      echo "[fuzz] $t failed (crash input saved by libFuzzer in ${dir#"$root"/})" >&2
      exit 1
    fi
    grep -E "stat::number_of_executed_units" "$log" | sed "s/^/[fuzz] $t /" >&2
  done
done
