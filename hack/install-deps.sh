#!/usr/bin/env bash
# Installs every Debian package that knoway's build, tests and benchmarks need.
# Idempotent: packages already present are skipped, and `apt-get update` runs only
# when something is missing and the package lists are absent or older than a day.
set -euo pipefail

PKGS=(
  # build
  build-essential cmake pkg-config
  libmicrohttpd-dev libcurl4-openssl-dev libyajl-dev libyaml-dev libssl-dev
  libsystemd-dev zlib1g-dev libhiredis-dev libpq-dev libmimalloc-dev
  # tests
  libcmocka-dev valgrind clang libclang-rt-14-dev redis-server postgresql curl python3 iproute2
  prometheus  # promtool checks the /metrics text
  # benchmarks
  nginx-light wrk
  # lint
  clang-format cppcheck
)

# The openai npm client test needs node and npm; machines that ship their own Node.js
# (not Debian's) keep it.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  PKGS+=(nodejs npm)
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PKGS[@]} packages present"
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
stamp=/var/lib/apt/periodic/update-success-stamp
lists=$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' 2>/dev/null | head -n 1)
if [ -z "$lists" ] || [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -mmin -1440 2>/dev/null | head -n 1)" ]; then
  $SUDO apt-get update -q
elif ! apt-cache show "${missing[0]}" >/dev/null 2>&1; then
  $SUDO apt-get update -q
fi
: "$stamp"
if ! $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"; then
  # stale lists (a package version rotated out of the mirror): refresh once and retry
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
echo "install-deps: done"
