#!/usr/bin/env bash
# The README's test command: install dependencies, build, run every test.
#   hack/test.sh           everything CI runs: deps, Debug build + ctest, ASan+UBSan build +
#                          ctest, Release build + the integration tests, valgrind on the unit
#                          tests, lint, fuzzing (FUZZ_SECONDS each)
#   hack/test.sh --quick   Debug build + ctest only; once set up it installs nothing (the
#                          dependency and kube-apiserver steps find everything in place)
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)
quick=0
[ "${1:-}" = "--quick" ] && quick=1

step() { printf '\n=== %s\n' "$*"; }

step "dependencies"
bash hack/install-deps.sh

step "openai and Anthropic npm clients for the integration tests"
# --quick once set up: node_modules newer than the lock file is kept as it is
lock=tests/integration/clients/package-lock.json
installed=tests/integration/clients/node_modules/.package-lock.json
if [ $quick -eq 1 ] && [ -f "$installed" ] && [ "$installed" -nt "$lock" ]; then
    echo "npm clients: up to date"
else
    (cd tests/integration/clients && npm ci --no-audit --no-fund --loglevel=error)
fi

step "kube-apiserver for the e2e tests (built once, cached outside the clone)"
bash hack/kube-apiserver.sh build

step "Debug build and tests"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Debug >/dev/null
cmake --build build -j"$jobs"
(cd build && ctest --output-on-failure -j"$jobs")
[ $quick -eq 1 ] && exit 0

step "ASan+UBSan build and tests"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DKW_SANITIZE=ON >/dev/null
cmake --build build-asan -j"$jobs"
(cd build-asan && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
    ctest --output-on-failure -j"$jobs")

step "Release build"
cmake -S . -B build-release -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build-release -j"$jobs"
build-release/dataplane/knoway-dataplane --check -c examples/quickstart.yaml

step "Release build: the integration suite against the build users run (mimalloc, -O2)"
(cd build-release && ctest -L integration --output-on-failure -j"$jobs")

step "benchmark smoke: fails only on a gross regression (knoway below 0.25x nginx's RPS)"
ulimit -n "$(ulimit -Hn)"
python3 hack/bench.py --build build-release --phases nonstream --seconds 2 --guard 0.25 >/dev/null

step "valgrind on the unit tests"
for t in build/tests/test_*; do
    KW_NO_TIMING=1 valgrind -q --leak-check=full --errors-for-leak-kinds=definite,indirect,possible \
        --error-exitcode=9 "$t" >/dev/null
    echo "valgrind clean: $(basename "$t")"
done

step "lint"
bash hack/lint.sh

step "fuzz"
bash hack/fuzz.sh "${FUZZ_SECONDS:-30}"

printf '\nall tests passed\n'
