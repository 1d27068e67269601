#!/usr/bin/env bash
# Build the libFuzzer targets with clang (ASan+UBSan) and run each for SECONDS (default 30)
# on the seed corpus in tests/fuzz/corpus. Fails on any crash, leak or sanitizer report.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-30}
build=${KW_FUZZ_BUILD:-build-fuzz}
CC=clang cmake -S . -B "$build" -DKW_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" --target fuzz_yaml fuzz_json fuzz_front -j"$(nproc)" >/dev/null
for t in yaml json front; do
    work=$(mktemp -d)
    echo "fuzz: $t for ${secs}s"
    "$build/tests/fuzz_$t" -max_total_time="$secs" -rss_limit_mb=2048 -max_len=8192 \
        -print_final_stats=1 -artifact_prefix="$build/" "$work" "tests/fuzz/corpus/$t" 2>&1 |
        grep -E 'stat::number_of_executed_units|ERROR|SUMMARY|Done' || true
    rc=${PIPESTATUS[0]}
    rm -rf "$work"
    if [ "$rc" -ne 0 ]; then
        echo "fuzz: fuzz_$t failed (exit $rc); crash input saved under $build/"
        exit 1
    fi
done
echo "fuzz: clean"
