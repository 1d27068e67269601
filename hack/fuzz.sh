#!/usr/bin/env bash
# Build the libFuzzer targets with clang (ASan+UBSan) and run each for SECONDS (default 30)
# on the seed corpus in tests/fuzz/corpus. Fails on any crash, leak or sanitizer report.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-30}
build=${KW_FUZZ_BUILD:-build-fuzz}
CC=clang cmake -S . -B "$build" -DKW_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
targets=(yaml json front providers controller jwt)
cmake --build "$build" $(printf -- '--target fuzz_%s ' "${targets[@]}") -j"$(nproc)" >/dev/null
for t in "${targets[@]}"; do
    work=$(mktemp -d)
    echo "fuzz: $t for ${secs}s"
    log="$build/fuzz_$t.log"
    set +e # a crash must fail this script: keep the fuzzer's exit status
    "$build/tests/fuzz_$t" -max_total_time="$secs" -rss_limit_mb=2048 -max_len=8192 \
        -print_final_stats=1 -artifact_prefix="$build/" "$work" "tests/fuzz/corpus/$t" >"$log" 2>&1
    rc=$?
    set -e
    grep -E 'stat::number_of_executed_units|^==[0-9]+==ERROR|SUMMARY|^Done' "$log" || true
    rm -rf "$work"
    # every sanitizer report fails the run, whether or not the fuzzer stopped on it
    if [ "$rc" -eq 0 ] && grep -qE 'runtime error:|^==[0-9]+==(ERROR|WARNING)' "$log"; then
        grep -E -m5 -A3 'runtime error:|^==[0-9]+==(ERROR|WARNING)' "$log"
        rc=99
    fi
    if [ "$rc" -ne 0 ]; then
        echo "fuzz: fuzz_$t failed (exit $rc); crash input saved under $build/"
        exit 1
    fi
done
echo "fuzz: clean"
