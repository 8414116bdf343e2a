#!/usr/bin/env bash
# System tools the deploy tests use, installed when missing: Prometheus + promtool (Debian
# package) and dclint (npm, the Docker Compose linter with the compose-spec schema, into
# .tools/). hadolint and kubernetes-validate come with the Python dev extras (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
DCLINT_VERSION=3.1.0
if [ -x .tools/node_modules/.bin/dclint ] && [ "$(.tools/node_modules/.bin/dclint --version)" = "$DCLINT_VERSION" ]; then
  echo "tools: dclint $DCLINT_VERSION present"
else
  command -v npm >/dev/null 2>&1 || { echo "tools: npm is needed for dclint (Debian: apt-get install npm)" >&2; exit 1; }
  echo "tools: installing dclint $DCLINT_VERSION (npm)"
  mkdir -p .tools
  npm install --prefix .tools --no-audit --no-fund --silent "dclint@$DCLINT_VERSION" >/dev/null
fi
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
