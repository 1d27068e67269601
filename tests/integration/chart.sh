#!/usr/bin/env bash
# The Helm chart without a cluster: helm lint, helm template against golden files (default
# and non-default values), schema validation of values, and charts/knoway/crds = crds/.
#   tests/integration/chart.sh BIN SRC [--update]   (--update rewrites the golden files)
set -euo pipefail
bin=$1
src=$2
update=${3:-}
cd "$src"
helm=$(bash hack/install-helm.sh)
fail() { echo "FAIL: $*"; exit 1; }

"$helm" lint --strict --kube-version 1.29.0 charts/knoway >/dev/null || { "$helm" lint --strict --kube-version 1.29.0 charts/knoway; fail "helm lint"; }
"$helm" lint --strict --kube-version 1.29.0 charts/knoway -f tests/golden/values-custom.yaml >/dev/null || fail "helm lint custom"
echo "ok   helm lint"

render() { # the generated discovery token, Redis password and TLS material differ per run: masked
    "$helm" template knoway charts/knoway -n knoway-system --kube-version 1.29.0 "$@" |
        sed -E 's/^(  (token|password|tls\.crt|tls\.key|ca\.crt): )"[A-Za-z0-9+\/=]{40,}"$/\1"(generated)"/'
}
for case in default custom; do
    args=()
    [ "$case" = custom ] && args=(-f tests/golden/values-custom.yaml)
    out=$(render "${args[@]}")
    if [ "$update" = --update ]; then
        printf '%s\n' "$out" >"tests/golden/chart-$case.yaml"
    fi
    diff -u "tests/golden/chart-$case.yaml" <(printf '%s\n' "$out") || fail "golden chart-$case.yaml"
    echo "ok   golden $case"
    # the bootstrap the chart renders is valid for the data plane
    printf '%s\n' "$out" | python3 -c '
import sys
text = sys.stdin.read()
cm = text[text.index("kind: ConfigMap"):]
body = cm[cm.index("knoway.yaml: |") + len("knoway.yaml: |"):].split("\n---")[0]
print("\n".join(line[4:] for line in body.strip("\n").split("\n")))' >"/tmp/kw-chart-bootstrap-$case.yaml"
    "$bin" --check -c "/tmp/kw-chart-bootstrap-$case.yaml" >/dev/null || fail "rendered bootstrap ($case)"
    rm -f "/tmp/kw-chart-bootstrap-$case.yaml"
done

# the release's own Redis never runs without a password: one is generated (kept across
# upgrades through lookup), mounted into data planes and the controller, and only they may
# connect (NetworkPolicy)
out=$(render --set redis.deploy=true)
grep -q "name: knoway-redis-auth" <<<"$out" || fail "no generated Redis password"
grep -q "passwordFile: /var/run/knoway-redis/password" <<<"$out" || fail "data plane without the password"
grep -q -- "--redis-password-file=/var/run/knoway-redis/password" <<<"$out" || fail "controller without the password"
grep -q "kind: NetworkPolicy" <<<"$out" || fail "no NetworkPolicy for Redis"
! grep -q 'protected-mode, "no"' <<<"$out" || fail "Redis with protected mode off"
echo "ok   bundled Redis: password and NetworkPolicy"

# the admin ports behind a NetworkPolicy on request: only the listed peers reach them, the
# API and discovery ports stay reachable
out=$(render -f tests/golden/values-custom.yaml)
printf '%s\n' "$out" | python3 -c '
import sys, yaml
docs = [d for d in yaml.safe_load_all(sys.stdin) if d and d["kind"] == "NetworkPolicy"]
pols = {d["metadata"]["name"]: d["spec"]["ingress"] for d in docs}
mon = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
dp, ctl = pols["knoway-dataplane-admin"], pols["knoway-controller-admin"]
assert dp == [{"ports": [{"port": "http"}]}, {"from": mon, "ports": [{"port": "admin"}]}], dp
assert ctl[0]["ports"] == [{"port": "discovery"}] and ctl[1] == {"from": mon, "ports": [{"port": "admin"}]}, ctl
' || fail "admin NetworkPolicy"
! render | grep -q "name: knoway-dataplane-admin" || fail "admin NetworkPolicy on by default"
echo "ok   admin NetworkPolicy (metrics.networkPolicy)"

if out=$("$helm" template knoway charts/knoway --set dataplane.port=0 2>&1); then
    fail "values schema accepted dataplane.port=0"
fi
echo "$out" | grep -q "dataplane.port" || fail "schema message: $out"
if "$helm" template knoway charts/knoway --set dataplane.bogus=1 >/dev/null 2>&1; then
    fail "values schema accepted an unknown value"
fi
echo "ok   values.schema.json"

for f in crds/*.yaml; do
    cmp -s "$f" "charts/knoway/crds/$(basename "$f")" || fail "charts/knoway/crds/$(basename "$f") differs from $f"
done
[ "$(ls charts/knoway/crds | wc -l)" = "$(ls crds | wc -l)" ] || fail "charts/knoway/crds has other files"
echo "ok   chart CRDs = crds/"
