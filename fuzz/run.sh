#!/usr/bin/env bash
# Build every fuzz target and run each for SECONDS; print per-target exec
# counts; exit non-zero if any target found a crash (or failed to run).
#
# Usage: fuzz/run.sh SECONDS [TARGET...]     (default: all targets)
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
# Seeds are read from fuzz/corpus/TARGET (committed); what libFuzzer finds
# is kept in fuzz/target/corpus/TARGET (not committed, reused by later runs
# on the same machine). Crash inputs go to fuzz/artifacts/TARGET/, logs to
# fuzz/target/logs/TARGET.log. Extra libFuzzer flags: FUZZ_ARGS="...".
# FUZZ_TARGET_DIR (default fuzz/target) moves the build, e.g. to a directory
# a CI machine keeps between clean clones: the first build is long.
set -euo pipefail
FUZZ="$(cd "$(dirname "$0")" && pwd)"
SECONDS_EACH="${1:?usage: fuzz/run.sh SECONDS [TARGET...]}"
shift
cd "$FUZZ/.."

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz/run.sh: the nightly Rust toolchain is not installed (cargo-fuzz needs it):" >&2
    echo "    rustup toolchain install nightly" >&2
    exit 1
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz/run.sh: cargo-fuzz is not installed: cargo install cargo-fuzz --locked" >&2
    exit 1
fi

# seed-corpora is the helper of seed-corpora.sh, not a target.
ALL=$(cargo +nightly fuzz list | grep -vx seed-corpora)
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
    mapfile -t TARGETS <<<"$ALL"
fi

OUT="${FUZZ_TARGET_DIR:-$FUZZ/target}"
build_start=$(date +%s)
cargo +nightly fuzz build --target-dir "$OUT"
echo "== fuzz build: $(($(date +%s) - build_start)) s"

TRIPLE=$(rustc +nightly -vV | sed -n 's/^host: //p')
BIN="$OUT/$TRIPLE/release"
# Storage of the targets (temporary repositories) stays inside fuzz/target.
export TMPDIR="$OUT/tmp"
rm -rf "$TMPDIR"
mkdir -p "$TMPDIR" "$OUT/logs"

summary=()
failed=()
for t in "${TARGETS[@]}"; do
    grep -qx "$t" <<<"$ALL" || { echo "unknown target $t (have: $(echo $ALL))" >&2; exit 2; }
    mkdir -p "$OUT/corpus/$t" "$FUZZ/artifacts/$t"
    log="$OUT/logs/$t.log"
    echo "== $t: ${SECONDS_EACH}s"
    start=$(date +%s)
    set +e
    # shellcheck disable=SC2086
    "$BIN/$t" \
        -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -timeout=10 \
        -print_final_stats=1 -artifact_prefix="$FUZZ/artifacts/$t/" \
        ${FUZZ_ARGS:-} \
        "$OUT/corpus/$t" "$FUZZ/corpus/$t" >"$log" 2>&1
    rc=$?
    set -e
    took=$(($(date +%s) - start))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | sed 's/cov: //')
    line=$(printf '%-16s %6ss %10s execs %8s exec/s  cov %6s  rss %5s MB' "$t" "$took" "${execs:-?}" \
        "$([ -n "$execs" ] && [ "$took" -gt 0 ] && echo $((execs / took)) || echo '?')" "${cov:-?}" "${rss:-?}")
    summary+=("$line")
    echo "$line"
    if [ $rc -ne 0 ]; then
        failed+=("$t")
        echo "!! $t failed (exit $rc); log: $log" >&2
        grep -E 'panicked at|ERROR: libFuzzer|ERROR: AddressSanitizer|SUMMARY|Test unit written' "$log" | head -20 >&2 || true
    fi
done

echo "== summary (${SECONDS_EACH}s per target)"
printf '%s\n' "${summary[@]}"
rm -rf "$TMPDIR"
if [ ${#failed[@]} -ne 0 ]; then
    echo "fuzz/run.sh: crashes or failures in: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
