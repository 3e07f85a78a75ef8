#!/usr/bin/env bash
# Builds the reference web client (web/ -> web/dist/): installs its npm packages from
# the lock file when they are missing or older than the lock, generates the protobuf
# code from proto/, type-checks and bundles. Idempotent; needs npm (ensure-deps.sh).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo/web"

# The toolchain (protoc-gen-es, playwright-core) needs Node.js 20 or newer.
node_major="$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)"
if [ "$node_major" -lt 20 ]; then
  echo "web: Node.js 20 or newer is needed to build the web client (found $(node --version 2>/dev/null || echo none));" >&2
  echo "web: install a newer nodejs (Debian 13 ships 20; NodeSource has packages for older releases) and re-run" >&2
  exit 1
fi

# npx and npm must never stop to ask a question.
export npm_config_yes=true npm_config_fund=false npm_config_audit=false

# node_modules/.package-lock.json is npm's record of what it installed: reinstall when the
# committed lock is newer (someone changed a dependency).
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "web: npm ci"
  npm ci --no-progress
fi
echo "web: npm run build"
npm run build --silent
echo "web: ok (web/dist)"
