#!/usr/bin/env bash
# The unit files pass systemd-analyze verify, pointed at the built binary.
set -euo pipefail
bin=$1
src=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for f in "$src"/dataplane/systemd/*; do
    sed "s|/usr/bin/knoway-dataplane|$bin|g" "$f" >"$tmp/$(basename "$f")"
done
out=$(systemd-analyze verify --man=no "$tmp"/*.service "$tmp"/*.socket 2>&1 || true)
if [ -n "$out" ]; then
    echo "systemd-analyze verify:"
    echo "$out"
    exit 1
fi
grep -q '^Type=notify$' "$tmp/knoway-dataplane.service"
grep -q '^WatchdogSec=' "$tmp/knoway-dataplane.service"
grep -q '^FileDescriptorName=api$' "$tmp/knoway-dataplane.socket"
echo "ok   units verify"
