#!/usr/bin/env bash
# Benchmarks (not a pass/fail test): the same load against direct-to-mock, nginx
# proxy_pass and knoway in one run; prints JSON with the figures and their ratios.
#   hack/bench.sh [--seconds N] [--conns N] [--streams N] [--relay-streams N] [--relay-chunks N]
set -euo pipefail
cd "$(dirname "$0")/.."
bash hack/install-deps.sh >/dev/null
cmake -S . -B build-release -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build-release -j"$(nproc)" --target knoway-dataplane knoway-mockllm knoway-bench-lb >/dev/null
ulimit -n "$(ulimit -Hn)"
exec python3 hack/bench.py --build build-release "$@"
