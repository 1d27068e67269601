#!/usr/bin/env bash
# The README's run command: install dependencies, build, start the mock provider on
# 127.0.0.1:8000 and knoway-dataplane in static mode with examples/quickstart.yaml
# (CONFIG=path for another file; MOCK=0 to skip the mock). Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
bash hack/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" --target knoway-dataplane knoway-mockllm
config=${CONFIG:-examples/quickstart.yaml}
build/dataplane/knoway-dataplane --check -c "$config"
if [ "${MOCK:-1}" = 1 ]; then
    build/tests/knoway-mockllm --listen 127.0.0.1:8000 --ttft-ms 50 --interval-ms 20 &
    mock=$!
    trap 'kill $mock 2>/dev/null' EXIT
fi
echo "knoway: try  curl localhost:8080/v1/chat/completions -d '{\"model\":\"demo\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}'"
build/dataplane/knoway-dataplane -c "$config"
