#!/usr/bin/env bash
# The project's test command (what CI runs via .ci/run):
#   dependencies -> the deployment files -> rustfmt -> buf lint -> the web client's build
#   -> clippy -> nextest.
# Cheap checks run first so formatting/lint mistakes fail fast, before compiling.
set -euo pipefail

# Run from the repo root no matter where we were called from.
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"

# rustup installs into ~/.cargo/bin, which is not always on PATH (e.g. CI shells).
cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
if ! command -v cargo >/dev/null 2>&1 && [ -x "$cargo_bin/cargo" ]; then
  export PATH="$cargo_bin:$PATH"
fi

# CI logs are plain text; colour codes only add noise there.
if [ -n "${CI:-}" ]; then
  export CARGO_TERM_COLOR=never
fi

# Tests create their own databases from this URL and their own streams on the NATS
# server ensure-deps.sh made sure of; the defaults follow the same overrides it uses.
export ATELIER_TEST_DATABASE_URL="${ATELIER_TEST_DATABASE_URL:-postgres://postgres@${ATELIER_PG_HOST:-127.0.0.1}:${ATELIER_PG_PORT:-5432}/postgres}"

step() { printf '\n==> %s\n' "$*"; }

step "dependencies"
bash deploy/local/ensure-deps.sh --browser --deploy-validators
export ATELIER_TEST_NATS_URL="${ATELIER_TEST_NATS_URL:-$(cat .dev/nats-url)}"
echo "tests use ATELIER_TEST_DATABASE_URL=$ATELIER_TEST_DATABASE_URL ATELIER_TEST_NATS_URL=$ATELIER_TEST_NATS_URL"

# Offline: the compose file and the Kubernetes manifests against their schemas, and the
# cross-checks no schema makes (no Docker engine or cluster needed).
step "deployment files: bash deploy/validate-deploy.sh"
bash deploy/validate-deploy.sh

step "cargo fmt --all --check"
cargo fmt --all --check

step "buf lint"
if command -v npx >/dev/null 2>&1; then
  # npx must never stop to ask whether to download buf.
  export npm_config_yes=true
  # Pinned: a new buf release may add lint rules; move the pin on purpose.
  npx --yes @bufbuild/buf@1.75.0 lint
else
  echo "buf lint needs npx: run deploy/local/ensure-deps.sh (it installs npm)" >&2
  exit 1
fi

# The browser test (in nextest) serves web/dist; its build also type-checks the client.
step "web client: npm ci, buf generate, tsc, esbuild"
bash deploy/local/build-web.sh

step "cargo clippy --workspace --all-targets --locked -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo nextest run --workspace --locked --no-fail-fast"
cargo nextest run --workspace --locked --no-fail-fast
