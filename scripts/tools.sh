#!/usr/bin/env bash
# System tools the deploy tests use, installed when missing: Prometheus + promtool (Debian
# package). hadolint and kubernetes-validate come with the Python dev extras (scripts/setup.sh).
set -euo pipefail
if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
  echo "tools: prometheus $(prometheus --version 2>&1 | head -1 | awk '{print $3}') present"; exit 0
fi
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
echo "tools: installing prometheus (Debian package)"
$SUDO apt-get install -y -q --no-install-recommends prometheus >/dev/null 2>&1 \
  || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q --no-install-recommends prometheus >/dev/null; }
# the package enables a system service; the tests start their own Prometheus
$SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
prometheus --version 2>&1 | head -1
