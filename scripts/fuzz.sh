#!/usr/bin/env bash
# `make fuzz`: runs each libFuzzer target (built by the Makefile into .build-fuzz) for FUZZ_SECONDS
# (or FUZZ_RUNS inputs), starting from the committed corpus Fuzz/corpus/<target> plus the inputs
# found by earlier runs (.build-fuzz/corpus/<target>). Prints executions, coverage and crashes per
# target; a crash leaves its input in .build-fuzz/artifacts/ and fails the run. See Fuzz/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${FUZZ_BUILD:-.build-fuzz}
SECONDS_PER_TARGET=${FUZZ_SECONDS:-120}
RUNS=${FUZZ_RUNS:-}
TARGETS=${*:-wire log}
status=0
for t in $TARGETS; do
    bin="$BUILD/debug/fuzz-$t"
    [ -x "$bin" ] || { echo "fuzz: $bin is missing (make fuzz builds it)"; exit 2; }
    mkdir -p "$BUILD/corpus/$t" "$BUILD/artifacts"
    log="$BUILD/fuzz-$t.log"
    limit=(-max_total_time="$SECONDS_PER_TARGET")
    [ -n "$RUNS" ] && limit=(-runs="$RUNS")
    echo "== fuzz-$t: ${RUNS:+$RUNS inputs}${RUNS:-$SECONDS_PER_TARGET s}, corpus Fuzz/corpus/$t + $BUILD/corpus/$t, log $log"
    set +e
    # The Swift runtime's own crash reporter would delay libFuzzer's; ASan reports leaks at exit.
    SWIFT_BACKTRACE=enable=no ASAN_OPTIONS=detect_leaks=1 "$bin" "${limit[@]}" -max_len=4096 -print_final_stats=1 \
        -artifact_prefix="$BUILD/artifacts/$t-" "$BUILD/corpus/$t" "Fuzz/corpus/$t" >"$log" 2>&1
    rc=$?
    set -e
    execs=$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -Eo '[0-9]+$' || true)
    last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
    cov=$(echo "$last" | grep -Eo 'cov: [0-9]+' | grep -Eo '[0-9]+' || true)
    ft=$(echo "$last" | grep -Eo 'ft: [0-9]+' | grep -Eo '[0-9]+' || true)
    corp=$(echo "$last" | grep -Eo 'corp: [0-9]+' | grep -Eo '[0-9]+' || true)
    rate=$(grep -Eo 'stat::average_exec_per_sec: *[0-9]+' "$log" | grep -Eo '[0-9]+$' || true)
    if [ $rc -eq 0 ]; then
        echo "fuzz-$t: ${execs:-?} inputs (${rate:-?}/s), 0 crashes; coverage ${cov:-?} edges, ${ft:-?} features, corpus ${corp:-?} inputs"
    else
        status=1
        echo "fuzz-$t: CRASH after ${execs:-?} inputs (exit $rc); coverage ${cov:-?} edges. Input:"
        grep -E 'Test unit written|property violated|Fatal error|ERROR: AddressSanitizer|SUMMARY' "$log" | head -5 || true
        echo "Reproduce: $bin <input> (a plain debug build replays it too: .build/debug/fuzz-$t <input>)."
        echo "After fixing the cause, commit the input as Fuzz/corpus/$t/regression-<what>."
    fi
done
exit $status
