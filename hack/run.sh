#!/usr/bin/env bash
# The README's run command: install dependencies, build, and run knoway-dataplane in static
# mode with examples/quickstart.yaml (override with CONFIG=path).
set -euo pipefail
cd "$(dirname "$0")/.."
bash hack/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" --target knoway-dataplane
config=${CONFIG:-examples/quickstart.yaml}
build/dataplane/knoway-dataplane --check -c "$config"
exec build/dataplane/knoway-dataplane -c "$config"
