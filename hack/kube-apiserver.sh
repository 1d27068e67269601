#!/usr/bin/env bash
# A real kube-apiserver (1.20, from Debian's kubernetes source package) with Debian's etcd
# on loopback, for tests and by hand.
#
#   hack/kube-apiserver.sh build       build once; cached outside the clone (KW_K8S_CACHE,
#                                      default ~/.cache/knoway/k8s), about 5 min on 2 cores
#   hack/kube-apiserver.sh start DIR   start etcd + kube-apiserver with state in DIR; writes
#                                      DIR/kubeconfig (cluster-admin) and waits until ready
#   hack/kube-apiserver.sh stop DIR    stop them
#   hack/kube-apiserver.sh restart DIR [compact]   restart kube-apiserver (optionally after
#                                      compacting etcd, so old watches get 410 Gone)
#
# Then: KUBECONFIG=DIR/kubeconfig kubectl get ns
set -euo pipefail
cache=${KW_K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/knoway/k8s}
bin=$cache/kube-apiserver

build() {
    if [ -x "$bin" ]; then
        echo "kube-apiserver: cached at $bin"
        return
    fi
    export DEBIAN_FRONTEND=noninteractive
    local need=()
    for p in golang-1.19-go etcd-server rsync make dpkg-dev; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
    done
    if [ ${#need[@]} -gt 0 ]; then
        apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null ||
            { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null; }
    fi
    local src=$cache/src
    mkdir -p "$src/lists/partial"
    (
        cd "$src"
        # a private deb-src list: the machine's apt configuration stays as it is
        echo "deb-src http://deb.debian.org/debian bookworm main" >sources.list
        local apt=(-o Dir::Etc::sourcelist="$src/sources.list" -o Dir::Etc::sourceparts=-
                   -o Dir::State::Lists="$src/lists")
        if ! ls kubernetes_*.dsc >/dev/null 2>&1; then
            apt-get "${apt[@]}" update -q >/dev/null
            apt-get "${apt[@]}" source --download-only kubernetes
        fi
        rm -rf tree
        dpkg-source --no-check -x kubernetes_*.dsc tree >/dev/null
    )
    local r2=$src/tree/vendor/github.com/modern-go/reflect2
    # reflect2 before v1.0.2 links mapiterinit with its pre-Go-1.18 signature: the server
    # crashes on the first custom resource. Give it the runtime's signature and layout.
    python3 - "$r2" <<'PY'
import re, sys
d = sys.argv[1]
p = d + "/unsafe_link.go"
s = open(p).read()
s = s.replace("func mapiterinit(rtype unsafe.Pointer, m unsafe.Pointer) *hiter",
              "func mapiterinit(rtype unsafe.Pointer, m unsafe.Pointer, it *hiter)")
s = re.sub(r"type hiter struct \{.*?\n\}", """type hiter struct {
	key         unsafe.Pointer
	value       unsafe.Pointer
	t           unsafe.Pointer
	h           unsafe.Pointer
	buckets     unsafe.Pointer
	bptr        unsafe.Pointer
	overflow    *[]unsafe.Pointer
	oldoverflow *[]unsafe.Pointer
	startBucket uintptr
	offset      uint8
	wrapped     bool
	B           uint8
	i           uint8
	bucket      uintptr
	checkBucket uintptr
}""", s, flags=re.S)
open(p, "w").write(s)
p = d + "/unsafe_map.go"
s = open(p).read()
s = s.replace("""	return &UnsafeMapIterator{
		hiter:      mapiterinit(type2.rtype, *(*unsafe.Pointer)(obj)),""", """	var it hiter
	mapiterinit(type2.rtype, *(*unsafe.Pointer)(obj), &it)
	return &UnsafeMapIterator{
		hiter:      &it,""")
open(p, "w").write(s)
PY
    grep -q "it \*hiter)" "$r2/unsafe_link.go" && grep -q "checkBucket" "$r2/unsafe_link.go" &&
        grep -q "mapiterinit(type2.rtype, \*(\*unsafe.Pointer)(obj), &it)" "$r2/unsafe_map.go" ||
        { echo "kube-apiserver: the reflect2 patch did not apply" >&2; exit 1; }
    local gobin
    gobin=$(dirname "$(dpkg -L golang-1.19-go | grep '/bin/go$' | head -n 1)")
    (
        cd "$src/tree"
        PATH="$gobin:$PATH" GOFLAGS=-mod=vendor GOCACHE="$cache/gocache" \
            make WHAT=cmd/kube-apiserver KUBE_BUILD_PLATFORMS=linux/amd64
    )
    install -m 0755 "$src/tree/_output/local/bin/linux/amd64/kube-apiserver" "$bin"
    rm -rf "$src/tree" "$cache/gocache"
    echo "kube-apiserver: built $bin"
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

start() {
    local dir=$1
    [ -x "$bin" ] || build
    mkdir -p "$dir/etcd" "$dir/certs"
    dir=$(cd "$dir" && pwd)
    local etcd_port peer_port api_port
    etcd_port=$(free_port)
    peer_port=$(free_port)
    api_port=$(free_port)
    etcd --data-dir "$dir/etcd" --listen-client-urls "http://127.0.0.1:$etcd_port" \
        --advertise-client-urls "http://127.0.0.1:$etcd_port" \
        --listen-peer-urls "http://127.0.0.1:$peer_port" \
        --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
        --initial-cluster "default=http://127.0.0.1:$peer_port" >"$dir/etcd.log" 2>&1 &
    echo $! >"$dir/etcd.pid"
    echo "$etcd_port" >"$dir/etcd.port"
    local token
    token=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
    echo "$token,admin,admin,system:masters" >"$dir/tokens.csv"
    openssl genrsa -out "$dir/sa.key" 2048 2>/dev/null
    openssl rsa -in "$dir/sa.key" -pubout -out "$dir/sa.pub" 2>/dev/null
    local args=(--etcd-servers "http://127.0.0.1:$etcd_port" --bind-address 127.0.0.1
        --advertise-address 127.0.0.1 --secure-port "$api_port" --cert-dir "$dir/certs"
        --token-auth-file "$dir/tokens.csv" --authorization-mode RBAC
        --service-account-key-file "$dir/sa.pub" --service-account-signing-key-file "$dir/sa.key"
        --service-account-issuer https://kubernetes.default.svc
        --service-cluster-ip-range 10.96.0.0/16 --allow-privileged=false
        --enable-priority-and-fairness=false)
    printf '%q ' "${args[@]}" >"$dir/kube-apiserver.args"
    echo "$api_port" >"$dir/kube-apiserver.port"
    echo "$token" >"$dir/token"
    "$bin" "${args[@]}" >"$dir/kube-apiserver.log" 2>&1 &
    echo $! >"$dir/kube-apiserver.pid"
    cat >"$dir/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: https://127.0.0.1:$api_port
    certificate-authority: $dir/certs/apiserver.crt
users:
- name: admin
  user:
    token: $token
contexts:
- name: local
  context: {cluster: local, user: admin, namespace: default}
current-context: local
EOF
    for _ in $(seq 1 300); do
        if [ -f "$dir/certs/apiserver.crt" ] &&
            curl -sf --cacert "$dir/certs/apiserver.crt" -H "Authorization: Bearer $token" \
                "https://127.0.0.1:$api_port/readyz" >/dev/null 2>&1; then
            echo "kube-apiserver: ready at https://127.0.0.1:$api_port (KUBECONFIG=$dir/kubeconfig)"
            return
        fi
        sleep 0.2
    done
    echo "kube-apiserver: not ready; see $dir/kube-apiserver.log" >&2
    tail -n 20 "$dir/kube-apiserver.log" >&2
    exit 1
}

# Restart kube-apiserver only (same address, certificates and etcd): clients see their
# connections and watches break, and the new server's watch cache starts at etcd's current
# revision. With "compact", etcd's history is first compacted to its current revision after
# one unrelated write, so a watch resumed from an older resourceVersion gets 410 Gone.
restart() {
    local dir=$1 mode=${2:-}
    dir=$(cd "$dir" && pwd)
    local pid
    pid=$(cat "$dir/kube-apiserver.pid")
    kill "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    if [ "$mode" = compact ]; then
        local etcd rev
        etcd=http://127.0.0.1:$(cat "$dir/etcd.port")
        rev=$(curl -sf -m 5 -X POST "$etcd/v3/kv/put" -d '{"key":"a25vd2F5LWUyZQ==","value":"MQ=="}' |
            python3 -c 'import json,sys; print(json.load(sys.stdin)["header"]["revision"])')
        curl -sf -m 5 -X POST "$etcd/v3/kv/compaction" -d "{\"revision\":\"$rev\",\"physical\":true}" >/dev/null
        echo "etcd: compacted to revision $rev"
    fi
    eval "set -- $(cat "$dir/kube-apiserver.args")"
    "$bin" "$@" >>"$dir/kube-apiserver.log" 2>&1 &
    echo $! >"$dir/kube-apiserver.pid"
    local port token
    port=$(cat "$dir/kube-apiserver.port")
    token=$(cat "$dir/token")
    for _ in $(seq 1 300); do
        if curl -sf --cacert "$dir/certs/apiserver.crt" -H "Authorization: Bearer $token" \
            "https://127.0.0.1:$port/readyz" >/dev/null 2>&1; then
            echo "kube-apiserver: restarted"
            return
        fi
        sleep 0.2
    done
    echo "kube-apiserver: not ready after restart" >&2
    exit 1
}

stop() {
    local dir=$1
    for p in kube-apiserver etcd; do
        [ -f "$dir/$p.pid" ] && kill "$(cat "$dir/$p.pid")" 2>/dev/null || true
    done
    for p in kube-apiserver etcd; do
        [ -f "$dir/$p.pid" ] && while kill -0 "$(cat "$dir/$p.pid")" 2>/dev/null; do sleep 0.1; done
        rm -f "$dir/$p.pid"
    done
}

case "${1:-}" in
build) build ;;
start) start "${2:?usage: $0 start DIR}" ;;
stop) stop "${2:?usage: $0 stop DIR}" ;;
restart) restart "${2:?usage: $0 restart DIR [compact]}" "${3:-}" ;;
*)
    echo "usage: $0 build | start DIR | restart DIR [compact] | stop DIR" >&2
    exit 2
    ;;
esac
