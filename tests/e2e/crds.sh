#!/usr/bin/env bash
# The CRDs against a real kube-apiserver + etcd (hack/kube-apiserver.sh) with real kubectl:
# they become Established; every example applies; the schema rejects bad objects; printer
# columns, short names and the category work; and what the API server returns (defaults
# filled in, server fields added) passes knoway's own parser.
set -euo pipefail
bin=$1
src=$2
cd "$src"
dir=$(mktemp -d /tmp/kw-e2e-crds-XXXXXX)
trap 'bash hack/kube-apiserver.sh stop "$dir"; rm -rf "$dir"' EXIT
bash hack/kube-apiserver.sh start "$dir"
export KUBECONFIG=$dir/kubeconfig
k() { kubectl --request-timeout=20s "$@"; }
fail() { echo "FAIL: $*"; exit 1; }

# CEL rules (x-kubernetes-validations) need Kubernetes 1.25+; older kubectl validation refuses
# the field, the 1.20 server ignores it: apply without client-side validation here
k apply --validate=false -f crds/
k wait --for condition=established --timeout=30s crd/llmbackends.llm.knoway.dev crd/llmroutes.llm.knoway.dev
echo "ok   CRDs established"

# every example, without the DataPlane bootstrap (a file-only kind)
for f in examples/*.yaml; do
    python3 - "$f" >"$dir/apply.yaml" <<'PY'
import sys
docs = open(sys.argv[1]).read().split("\n---\n")
print("\n---\n".join(d for d in docs if "kind: DataPlane" not in d))
PY
    # as they are on a fresh cluster: no namespace to create first
    k apply -f "$dir/apply.yaml" >/dev/null || fail "kubectl apply $f"
done
echo "ok   examples apply"

# short names, category, printer columns
names=$(k get llmb -A -o name)
[[ "$names" == *llmbackend.llm.knoway.dev/openai* ]] || fail "short name llmb: $names"
names=$(k get knoway -A -o name)
[[ "$names" == *llmroute.llm.knoway.dev/openai* ]] || fail "category knoway: $names"
table=$(k get llmb bedrock-claude)
[[ "$table" == *PROVIDER*MODEL*ACCEPTED*AGE*AWSBedrock*anthropic.claude-3-5-sonnet* ]] || fail "LLMBackend columns: $table"
table=$(k get llmr openai)
[[ "$table" == *MODELS*BACKENDS*PROGRAMMED*AGE* ]] || fail "LLMRoute columns: $table"
row=$(k get llmr llama --no-headers)
# (a [*] column shows its first match on 1.20)
[[ "$row" == *'["llama-3.1-8b"]'*llama-a* ]] || fail "LLMRoute column values: $row"
echo "ok   names and columns"

# the schema rejects what the parser rejects
reject() { # name, yaml, expected text
    if out=$(echo "$2" | k apply -f - 2>&1); then fail "$1: accepted"; fi
    echo "$out" | grep -q "$3" || fail "$1: $out"
    echo "ok   rejects $1"
}
reject "unknown provider" 'apiVersion: llm.knoway.dev/v1alpha1
kind: LLMBackend
metadata: {name: bad1}
spec: {provider: OpenAi}' 'spec.provider: Unsupported value: "OpenAi"'
reject "weight out of range" 'apiVersion: llm.knoway.dev/v1alpha1
kind: LLMRoute
metadata: {name: bad2}
spec: {match: {models: [m]}, backendRefs: [{name: b, weight: 5000}]}' 'weight: Invalid value: 5000: .*less than or equal to 1000'
reject "bad duration" 'apiVersion: llm.knoway.dev/v1alpha1
kind: LLMRoute
metadata: {name: bad3}
spec: {match: {models: [m]}, backendRefs: [{name: b}], timeout: soon}' 'spec.timeout: Invalid value: "soon"'
reject "missing backendRefs" 'apiVersion: llm.knoway.dev/v1alpha1
kind: LLMRoute
metadata: {name: bad4}
spec: {match: {models: [m]}}' 'missing required field "backendRefs"'
reject "unknown strategy" 'apiVersion: llm.knoway.dev/v1alpha1
kind: LLMRoute
metadata: {name: bad5}
spec: {match: {models: [m]}, backendRefs: [{name: b}], loadBalancer: {strategy: Fastest}}' 'spec.loadBalancer.strategy: Unsupported value: "Fastest"'
reject "unknown retryOn" 'apiVersion: llm.knoway.dev/v1alpha1
kind: LLMRoute
metadata: {name: bad6}
spec: {match: {models: [m]}, backendRefs: [{name: b}], retry: {retryOn: [4xx]}}' 'Unsupported value: "4xx"'
reject "breaker out of range" 'apiVersion: llm.knoway.dev/v1alpha1
kind: LLMBackend
metadata: {name: bad7}
spec: {provider: vLLM, upstream: {baseURL: "http://x"}, circuitBreaker: {maxEjectionPercent: 101}}' 'maxEjectionPercent: Invalid value: 101'

reject "unknown limit scope" 'apiVersion: llm.knoway.dev/v1alpha1
kind: LLMRoute
metadata: {name: bad8}
spec: {match: {models: [m]}, backendRefs: [{name: b}], rateLimits: [{name: x, requests: {limit: 1}, scope: Everywhere}]}' 'Unsupported value: "Everywhere"'
reject "budget not a decimal" 'apiVersion: llm.knoway.dev/v1alpha1
kind: LLMConsumer
metadata: {name: bad9}
spec: {budget: {limit: ten, period: Day}}' 'spec.budget.limit: Invalid value: "ten"'
reject "price not a decimal" 'apiVersion: llm.knoway.dev/v1alpha1
kind: LLMBackend
metadata: {name: bad10}
spec: {provider: vLLM, upstream: {baseURL: "http://x"}, pricing: {inputPerMillion: "1,5", outputPerMillion: "2"}}' 'spec.pricing.inputPerMillion: Invalid value: "1,5"'

# what the API returns is what the controller will read: it must pass the parser
k get llmb,llmr,llmc,secret -A -o json >"$dir/objects.json"
python3 - "$dir/objects.json" >"$dir/objects.yaml" <<'PY'
import json, sys
items = json.load(open(sys.argv[1]))["items"]
items = [i for i in items if i["kind"] != "Secret" or i.get("type") == "Opaque"]
print("\n---\n".join(json.dumps(i) for i in items))
PY
grep -q '"weight": 1' "$dir/objects.json" || fail "the API server did not fill in defaults"
"$bin" --check -c "$dir/objects.yaml" || fail "the parser refused what the API server returned"
echo "ok   API objects pass the parser"
