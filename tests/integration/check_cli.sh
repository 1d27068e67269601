#!/usr/bin/env bash
# knoway-dataplane's command line: --check on every example and on bad input, --version, --help;
# knoway-controller's refusal to serve snapshots without a token.
set -u
bin=$1
src=$2
fail=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

expect() { # name, expected rc, expected output file pattern (grep -F lines), command...
    local name=$1 want_rc=$2 pattern=$3
    shift 3
    "$@" >"$tmp/out" 2>&1
    local rc=$?
    if [ "$rc" -ne "$want_rc" ]; then
        echo "FAIL $name: exit $rc, want $want_rc"; cat "$tmp/out"; fail=1; return
    fi
    while IFS= read -r line; do
        [ -z "$line" ] && continue
        if ! grep -qF -- "$line" "$tmp/out"; then
            echo "FAIL $name: output lacks: $line"; cat "$tmp/out"; fail=1; return
        fi
    done <<<"$pattern"
    echo "ok   $name"
}

for f in "$src"/examples/*.yaml; do
    expect "check $(basename "$f")" 0 "$f: configuration is valid" "$bin" --check -c "$f"
done

cat >"$tmp/bad.yaml" <<'YAML'
apiVersion: llm.knoway.dev/v1alpha1
kind: LLMBackend
metadata:
  name: b
spec:
  provider: vLLM
  upstream:
    baseURL: http://127.0.0.1:8000/v1
    timeout: soon
---
apiVersion: llm.knoway.dev/v1alpha1
kind: LLMRoute
metadata:
  name: r
spec:
  match: {models: [m]}
  backendRefs: [{name: missing}]
YAML
expect "check reports every error" 1 "$tmp/bad.yaml:9:14: LLMBackend/default/b: spec.upstream.timeout: invalid duration \"soon\" (use a number and a unit: 250ms, 30s, 5m, 1h)
$tmp/bad.yaml:17:24: LLMRoute/default/r: spec.backendRefs[0].name: LLMBackend \"default/missing\" not found
$tmp/bad.yaml: configuration is invalid (2 errors)" "$bin" --check -c "$tmp/bad.yaml"
expect "check short flag" 1 "configuration is invalid" "$bin" -t -c "$tmp/bad.yaml"
expect "missing file" 1 "$tmp/none.yaml: cannot open: No such file or directory" "$bin" --check -c "$tmp/none.yaml"
expect "version" 0 "knoway-dataplane 0." "$bin" --version
expect "help" 0 "Usage: knoway-dataplane -c FILE [--check]" "$bin" --help
expect "no config" 2 "-c FILE is required" "$bin"
expect "bad option" 2 "Usage:" "$bin" --bogus

# knoway-controller: snapshots carry credentials, so discovery without a token is refused
ctl=${3:-}
if [ -n "$ctl" ]; then
    expect "controller without a token" 2 "--token-file is required" "$ctl" --kubeconfig /nonexistent
    expect "controller without a token, insecure by choice" 1 "/nonexistent" \
        "$ctl" --kubeconfig /nonexistent --insecure-no-token
fi

exit $fail
