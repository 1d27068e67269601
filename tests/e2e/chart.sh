#!/usr/bin/env bash
# helm install / upgrade / uninstall of charts/knoway against a real kube-apiserver + etcd:
# CRDs Established, every object created, the discovery token generated once and kept
# across upgrades, values applied on upgrade (on 1.20: policy/v1beta1 PDB, autoscaling/v2beta2
# HPA), examples apply against the installed CRDs, uninstall removes the release.
# (No kubelet runs here: objects are checked, not pods.)
set -euo pipefail
src=$1
cd "$src"
helm=$(bash hack/install-helm.sh)
dir=$(mktemp -d /tmp/kw-e2e-chart-XXXXXX)
trap 'bash hack/kube-apiserver.sh stop "$dir"; rm -rf "$dir"' EXIT
bash hack/kube-apiserver.sh start "$dir"
export KUBECONFIG=$dir/kubeconfig
k() { kubectl --request-timeout=20s "$@"; }
fail() { echo "FAIL: $*"; exit 1; }
ns=knoway-system
# CEL rules in the CRDs need Kubernetes 1.25+: helm's server-side apply against 1.20 refuses
# the field, a client-side apply lets the server ignore it
ssa=--server-side=false

"$helm" install $ssa knoway charts/knoway -n "$ns" --create-namespace >"$dir/install.log" ||
    { cat "$dir/install.log"; fail "helm install"; }
grep -q "kubectl apply -f examples/openai.yaml" "$dir/install.log" || fail "NOTES.txt"
k wait --for condition=established --timeout=30s crd/llmbackends.llm.knoway.dev crd/llmroutes.llm.knoway.dev
for obj in deploy/knoway-controller deploy/knoway-dataplane svc/knoway-controller svc/knoway-dataplane \
    secret/knoway-discovery configmap/knoway-dataplane sa/knoway-controller sa/knoway-dataplane \
    role/knoway-leader-election rolebinding/knoway-leader-election pdb/knoway-dataplane; do
    k -n "$ns" get "$obj" >/dev/null || fail "missing $obj"
done
k get clusterrole/knoway-controller clusterrolebinding/knoway-controller >/dev/null || fail "cluster RBAC"
[ "$(k -n "$ns" get deploy knoway-dataplane -o jsonpath='{.spec.replicas}')" = 2 ] || fail "replicas"
[ "$(k -n "$ns" get pdb knoway-dataplane -o jsonpath='{.apiVersion}')" = policy/v1beta1 ] || fail "PDB version on 1.20"
k -n "$ns" get deploy knoway-dataplane -o jsonpath='{.spec.template.spec.securityContext.runAsNonRoot} {.spec.template.spec.containers[0].securityContext.readOnlyRootFilesystem}' |
    grep -q "true true" || fail "security context"
token=$(k -n "$ns" get secret knoway-discovery -o jsonpath='{.data.token}' | base64 -d)
[ ${#token} -eq 48 ] || fail "generated token: ${#token} characters"
# discovery over TLS by default: a CA and a certificate for the controller's Service names
for f in tls.crt tls.key ca.crt; do
    k -n "$ns" get secret knoway-discovery-tls -o jsonpath="{.data.${f//./\\.}}" | base64 -d >"$dir/$f"
done
openssl verify -CAfile "$dir/ca.crt" -verify_hostname knoway-controller.$ns.svc "$dir/tls.crt" >/dev/null ||
    fail "discovery certificate does not verify for knoway-controller.$ns.svc"
[ "$(openssl x509 -noout -modulus -in "$dir/tls.crt")" = "$(openssl rsa -noout -modulus -in "$dir/tls.key")" ] ||
    fail "discovery key does not match its certificate"
k -n "$ns" get configmap knoway-dataplane -o jsonpath='{.data.knoway\.yaml}' |
    grep -q "url: \"https://knoway-controller.$ns.svc:18000\"" || fail "data planes poll over https"
echo "ok   install"

# least privilege: the controller may read Secrets and write status, never write specs
can() { k auth can-i "$@" --as "system:serviceaccount:$ns:knoway-controller"; }
[ "$(can list llmbackends.llm.knoway.dev -A)" = yes ] || fail "RBAC list llmbackends"
[ "$(can update llmroutes.llm.knoway.dev --subresource=status -A)" = yes ] || fail "RBAC update status"
[ "$(can update llmroutes.llm.knoway.dev -A || true)" = no ] || fail "RBAC: controller may update specs"
[ "$(can delete secrets -A || true)" = no ] || fail "RBAC: controller may delete secrets"
[ "$(can update leases.coordination.k8s.io -n "$ns")" = yes ] || fail "RBAC leases"
echo "ok   RBAC"

"$helm" upgrade $ssa knoway charts/knoway -n "$ns" --set dataplane.replicas=3 \
    --set dataplane.autoscaling.enabled=true >/dev/null || fail "helm upgrade"
[ "$(k -n "$ns" get secret knoway-discovery -o jsonpath='{.data.token}' | base64 -d)" = "$token" ] ||
    fail "the discovery token changed on upgrade"
[ "$(k -n "$ns" get secret knoway-discovery-tls -o jsonpath='{.data.tls\.crt}' | base64 -d)" = "$(cat "$dir/tls.crt")" ] ||
    fail "the discovery certificate changed on upgrade"
util=$(k -n "$ns" get horizontalpodautoscalers.v2beta2.autoscaling knoway-dataplane \
    -o jsonpath='{.spec.metrics[0].resource.target.averageUtilization}')
[ "$util" = 70 ] || fail "HPA (autoscaling/v2beta2 on 1.20): $util"
"$helm" upgrade $ssa knoway charts/knoway -n "$ns" --set dataplane.replicas=3 >/dev/null || fail "helm upgrade 2"
[ "$(k -n "$ns" get deploy knoway-dataplane -o jsonpath='{.spec.replicas}')" = 3 ] || fail "upgraded replicas"
! k -n "$ns" get hpa knoway-dataplane >/dev/null 2>&1 || fail "HPA not removed"
echo "ok   upgrade keeps the token and the certificate"

# monitoring: the Prometheus Operator's CRDs (their names and groups; no schema here: the
# operator is not part of this cluster), a ServiceMonitor, a PodMonitor and the dashboard
for kind in ServiceMonitor PodMonitor; do
    plural=$(echo "$kind" | tr '[:upper:]' '[:lower:]')s
    cat <<CRD | k apply -f - >/dev/null || fail "monitoring CRD $kind"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: $plural.monitoring.coreos.com}
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: {kind: $kind, plural: $plural, listKind: ${kind}List, singular: $(echo "$kind" | tr '[:upper:]' '[:lower:]')}
  versions:
    - name: v1
      served: true
      storage: true
      schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
CRD
done
k wait --for condition=established --timeout=30s crd/servicemonitors.monitoring.coreos.com crd/podmonitors.monitoring.coreos.com >/dev/null
"$helm" upgrade $ssa knoway charts/knoway -n "$ns" --set dataplane.replicas=3 \
    --set metrics.serviceMonitor.enabled=true --set metrics.podMonitor.enabled=true \
    --set metrics.dashboard.enabled=true --set telemetry.otlp.endpoint=http://otel-collector:4318 \
    -f <(echo "telemetry: {otlp: {sampleRatio: 0.1}}") >/dev/null || fail "helm upgrade with monitoring"
[ "$(k -n "$ns" get servicemonitor knoway -o jsonpath='{.spec.endpoints[0].port}')" = admin ] || fail "ServiceMonitor"
[ "$(k -n "$ns" get podmonitor knoway -o jsonpath='{.spec.podMetricsEndpoints[0].port}')" = admin ] || fail "PodMonitor"
[ "$(k -n "$ns" get svc knoway-dataplane-metrics -o jsonpath='{.spec.ports[0].name}')" = admin ] || fail "metrics Service"
[ "$(k -n "$ns" get configmap knoway-dashboard -o jsonpath='{.metadata.labels.grafana_dashboard}')" = 1 ] || fail "dashboard label"
k -n "$ns" get configmap knoway-dashboard -o jsonpath='{.data.knoway\.json}' |
    python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["uid"] == "knoway-overview" and len(d["panels"]) > 10' ||
    fail "dashboard JSON"
k -n "$ns" get configmap knoway-dataplane -o jsonpath='{.data.knoway\.yaml}' |
    grep -q 'endpoint: "http://otel-collector:4318"' || fail "data planes export spans"
k -n "$ns" get deploy knoway-controller -o jsonpath='{.spec.template.spec.containers[0].args}' |
    grep -q -- '--otlp-endpoint=http://otel-collector:4318' || fail "the controller exports spans"
echo "ok   ServiceMonitor, PodMonitor, the Grafana dashboard, OTLP settings"

python3 -c '
import sys
docs = open("examples/openai.yaml").read().split("\n---\n")
print("\n---\n".join(d for d in docs if "kind: DataPlane" not in d))' | k apply -f - >/dev/null || fail "examples apply"
echo "ok   examples apply against the chart's CRDs"

"$helm" uninstall knoway -n "$ns" >/dev/null || fail "helm uninstall"
for _ in $(seq 1 50); do
    k -n "$ns" get deploy knoway-dataplane >/dev/null 2>&1 || break
    sleep 0.2
done
! k -n "$ns" get deploy knoway-dataplane >/dev/null 2>&1 || fail "uninstall left the data plane"
k get crd llmbackends.llm.knoway.dev >/dev/null || fail "helm removed the CRDs (it keeps them)"
echo "ok   uninstall"
