#!/usr/bin/env bash
# Runs the whole Atelier mesh locally: the five internal services and the
# public edge, built from this checkout, logging to .dev/logs/.
# Stays in the foreground; Ctrl-C (or SIGTERM) stops all six processes, and
# if any one of them dies the rest are stopped too.
#
# Every default can be overridden from the environment:
#   ATELIER_DATABASE_URL, ATELIER_NATS_URL, ATELIER_CONVERSATION_URL,
#   ATELIER_<SERVICE>_LISTEN_ADDR (e.g. ATELIER_EDGE_LISTEN_ADDR),
#   ATELIER_EDGE_HTTP_ADDR (127.0.0.1:50080): images and the web client,
#   ATELIER_PG_HOST / ATELIER_PG_PORT / ATELIER_NATS_PORT (see ensure-deps.sh),
#   ATELIER_RUN_WAIT_SECS (30): how long to wait for a service to listen.
#   ATELIER_SERVICE_TOKEN, ATELIER_JWT_HS256_SECRET, ATELIER_IMAGE_URL_SECRET:
#   generated once under .dev/secrets/ when unset.
# Anything else in the caller's environment (RUST_LOG, JWT settings, ...) is
# inherited by every service.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"

# rustup installs into ~/.cargo/bin, which is not always on PATH.
cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
if ! command -v cargo >/dev/null 2>&1 && [ -x "$cargo_bin/cargo" ]; then
  export PATH="$cargo_bin:$PATH"
fi

pg_host="${ATELIER_PG_HOST:-127.0.0.1}"
pg_port="${ATELIER_PG_PORT:-5432}"
wait_secs="${ATELIER_RUN_WAIT_SECS:-30}"

# Start order matters: conversation first (the edge forwards to it), edge last.
services=(conversation intent enhancement title generation edge)
declare -A listen=(
  [conversation]="${ATELIER_CONVERSATION_LISTEN_ADDR:-127.0.0.1:50052}"
  [intent]="${ATELIER_INTENT_LISTEN_ADDR:-127.0.0.1:50053}"
  [enhancement]="${ATELIER_ENHANCEMENT_LISTEN_ADDR:-127.0.0.1:50054}"
  [title]="${ATELIER_TITLE_LISTEN_ADDR:-127.0.0.1:50055}"
  [generation]="${ATELIER_GENERATION_LISTEN_ADDR:-127.0.0.1:50056}"
  [edge]="${ATELIER_EDGE_LISTEN_ADDR:-127.0.0.1:50051}"
)
edge_http="${ATELIER_EDGE_HTTP_ADDR:-127.0.0.1:50080}"
storage_dir="${ATELIER_STORAGE_DIR:-$repo/.data/objects}"
database_url="${ATELIER_DATABASE_URL:-postgres://postgres@$pg_host:$pg_port/atelier}"
conversation_url="${ATELIER_CONVERSATION_URL:-http://${listen[conversation]}}"

bin_dir="${CARGO_TARGET_DIR:-target}/debug"
log_dir="$repo/.dev/logs"

say() { printf 'run: %s\n' "$*"; }
die() { printf 'run: %s\n' "$*" >&2; exit 1; }

# TCP probe without nc/curl: bash's /dev/tcp, bounded by timeout.
# Takes "host:port" (IPv4 or hostname).
addr_open() {
  timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "${1%:*}" "${1##*:}" >/dev/null 2>&1
}

# Refuse to start a second copy: if the edge (or any service) port already
# answers, something - most likely an earlier run.sh - is using it.
if addr_open "${listen[edge]}"; then
  die "${listen[edge]} is already accepting connections - is the mesh already running? Not starting a second copy."
fi
for svc in "${services[@]}"; do
  if addr_open "${listen[$svc]}"; then
    die "port for $svc (${listen[$svc]}) is already in use; stop whatever holds it (or set ATELIER_${svc^^}_LISTEN_ADDR)"
  fi
done
if addr_open "$edge_http"; then
  die "the edge's HTTP port ($edge_http) is already in use; stop whatever holds it (or set ATELIER_EDGE_HTTP_ADDR)"
fi

bash deploy/local/ensure-deps.sh --client-tools
# ensure-deps records the server it made sure of (a too-old one is replaced by the pinned
# nats-server on another port).
nats_url="${ATELIER_NATS_URL:-$(cat "$repo/.dev/nats-url")}"

# The mesh's secrets: random, made once per checkout under .dev/secrets/ (git-ignored,
# readable by this user only), and the same for every service. A value already in the
# environment wins. No service starts with a missing, built-in or short secret unless
# ATELIER_ENV=development (see SECURITY.md).
secrets_dir="$repo/.dev/secrets"
local_secret() {
  local file="$secrets_dir/$1"
  if [ ! -s "$file" ]; then
    mkdir -p "$secrets_dir"
    chmod 700 "$secrets_dir"
    (umask 077 && head -c 48 /dev/urandom | base64 -w0 >"$file.tmp" && mv "$file.tmp" "$file")
    say "generated a secret in ${file#"$repo"/}" >&2
  fi
  cat "$file"
}
ATELIER_SERVICE_TOKEN="${ATELIER_SERVICE_TOKEN:-$(local_secret service-token)}"
ATELIER_JWT_HS256_SECRET="${ATELIER_JWT_HS256_SECRET:-$(local_secret jwt-hs256)}"
ATELIER_IMAGE_URL_SECRET="${ATELIER_IMAGE_URL_SECRET:-$(local_secret image-url)}"
export ATELIER_SERVICE_TOKEN ATELIER_JWT_HS256_SECRET ATELIER_IMAGE_URL_SECRET

# The conversation service owns the 'atelier' database. Only create it when we
# are using our default URL; a caller-supplied URL is the caller's business.
if [ -z "${ATELIER_DATABASE_URL:-}" ]; then
  psql_base=(psql -w -X -h "$pg_host" -p "$pg_port" -U postgres -d postgres -v ON_ERROR_STOP=1)
  if [ "$("${psql_base[@]}" -tAc "select 1 from pg_database where datname='atelier'")" != 1 ]; then
    "${psql_base[@]}" -qc 'create database atelier'
    say "created database atelier"
  fi
fi

say "cargo build --workspace --bins"
cargo build --workspace --bins
# The API runs without the web client; test.sh, which needs it, fails instead.
web_dir="$repo/web/dist"
if ! bash deploy/local/build-web.sh; then
  say "the web client was not built (see above): the mesh runs without it"
  web_dir=""
fi

for svc in "${services[@]}"; do
  [ -x "$bin_dir/atelier-$svc" ] \
    || die "binary $bin_dir/atelier-$svc not found after the build (does crate atelier-$svc have a main.rs / [[bin]] named atelier-$svc?)"
done

mkdir -p "$log_dir"

declare -A pids=()

# Stops every child we started: SIGTERM, a bounded grace period, then SIGKILL.
# (Background children of a script ignore SIGINT, so Ctrl-C alone would not
# reach them.)
stop_all() {
  trap - EXIT INT TERM HUP
  local svc pid alive deadline
  [ "${#pids[@]}" -gt 0 ] || return 0
  say "stopping services"
  for svc in "${!pids[@]}"; do
    kill -TERM "${pids[$svc]}" 2>/dev/null || true
  done
  # Longer than the workers' drain (20 s), so running jobs can finish.
  deadline=$((SECONDS + 25))
  while :; do
    alive=0
    for pid in "${pids[@]}"; do
      if kill -0 "$pid" 2>/dev/null; then alive=1; fi
    done
    [ "$alive" -eq 0 ] && break
    if [ "$SECONDS" -ge "$deadline" ]; then
      for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
      break
    fi
    sleep 0.2
  done
  wait 2>/dev/null || true
}
trap stop_all EXIT
trap 'stop_all; exit 130' INT
trap 'stop_all; exit 143' TERM HUP

# Reports a child that exited on its own, with the end of its log, and stops
# the rest (via the EXIT trap).
child_died() {
  local svc="$1" rc=0
  wait "${pids[$svc]}" 2>/dev/null || rc=$?
  printf 'run: atelier-%s exited early (status %s); last lines of %s:\n' \
    "$svc" "$rc" "$log_dir/$svc.log" >&2
  tail -n 40 "$log_dir/$svc.log" >&2 || true
  exit 1
}

check_children() {
  local svc
  for svc in "${!pids[@]}"; do
    kill -0 "${pids[$svc]}" 2>/dev/null || child_died "$svc"
  done
}

start() {
  local svc="$1"
  shift
  env ATELIER_LISTEN_ADDR="${listen[$svc]}" \
    ATELIER_DATABASE_URL="$database_url" \
    ATELIER_NATS_URL="$nats_url" \
    "$@" \
    "$bin_dir/atelier-$svc" >"$log_dir/$svc.log" 2>&1 &
  pids[$svc]=$!
  say "started atelier-$svc (pid ${pids[$svc]}) on ${listen[$svc]}"
}

# Bounded wait for a service's port, failing fast if any child dies meanwhile.
wait_listening() {
  local svc="$1" deadline=$((SECONDS + wait_secs))
  until addr_open "${listen[$svc]}"; do
    check_children
    if [ "$SECONDS" -ge "$deadline" ]; then
      printf 'run: atelier-%s is not listening on %s after %ss; last lines of its log:\n' \
        "$svc" "${listen[$svc]}" "$wait_secs" >&2
      tail -n 40 "$log_dir/$svc.log" >&2 || true
      exit 1
    fi
    sleep 0.3
  done
}

# Workers find each other by URL; images go under .data/objects (the builtin renderer
# needs nothing else, so the mesh runs offline).
# Every service serves /metrics on a port of its own: edge 9151, conversation 9152,
# intent 9153, enhancement 9154, title 9155, generation 9156.
start conversation ATELIER_METRICS_ADDR="${ATELIER_CONVERSATION_METRICS_ADDR:-127.0.0.1:9152}"
start intent ATELIER_METRICS_ADDR="${ATELIER_INTENT_METRICS_ADDR:-127.0.0.1:9153}"
start enhancement ATELIER_METRICS_ADDR="${ATELIER_ENHANCEMENT_METRICS_ADDR:-127.0.0.1:9154}"
start title ATELIER_CONVERSATION_URL="$conversation_url" \
  ATELIER_METRICS_ADDR="${ATELIER_TITLE_METRICS_ADDR:-127.0.0.1:9155}"
start generation ATELIER_CONVERSATION_URL="$conversation_url" \
  ATELIER_METRICS_ADDR="${ATELIER_GENERATION_METRICS_ADDR:-127.0.0.1:9156}" \
  ATELIER_INTENT_URL="http://${listen[intent]}" \
  ATELIER_ENHANCEMENT_URL="http://${listen[enhancement]}" \
  ATELIER_STORAGE_DIR="$storage_dir"
# The edge forwards to conversation, so let conversation come up first. It reads the
# images the worker stores (to serve them under signed URLs), serves the web client, and
# lets the page's own origin call it over grpc-web.
wait_listening conversation
start edge ATELIER_CONVERSATION_URL="$conversation_url" \
  ATELIER_METRICS_ADDR="${ATELIER_EDGE_METRICS_ADDR:-127.0.0.1:9151}" \
  ATELIER_STORAGE_DIR="$storage_dir" \
  ATELIER_EDGE_HTTP_ADDR="$edge_http" \
  ATELIER_WEB_DIR="$web_dir"
wait_listening edge
check_children
# A token for the page, signed with the mesh's HS256 secret.
web_token="$("$bin_dir/atelier-mint-token" --sub "${ATELIER_WEB_USER:-alice}" --ttl-seconds 86400 2>/dev/null || true)"

cat <<EOF

Atelier mesh is up.
  web client:              http://$edge_http/#token=$web_token
  edge (gRPC + grpc-web):  ${listen[edge]}
  tools on PATH:           export PATH="$repo/.dev/tools/bin:\$PATH"   (grpcurl, when ensure-deps installed it there)
  mint a token:            export TOKEN="\$($bin_dir/atelier-mint-token --sub alice)"
  grant credits:           grpcurl -plaintext -H "x-atelier-service-token: \$(cat .dev/secrets/service-token)" -d '{"user_id": "alice", "amount": 500, "reference": "grant-1"}' ${listen[conversation]} atelier.conversation.v1.ConversationService/GrantCredits
  try it:                  grpcurl -plaintext -H "authorization: Bearer \$TOKEN" -d '{}' ${listen[edge]} atelier.v1.ChatService/CreateConversation
  watch your events:       grpcurl -plaintext -H "authorization: Bearer \$TOKEN" -d '{}' ${listen[edge]} atelier.v1.ChatService/WatchEvents
  images:                  $storage_dir (served under signed URLs at http://$edge_http/images/...)
  metrics:                 http://127.0.0.1:9151/metrics (edge) ... :9156 (generation); conversation 9152, intent 9153, enhancement 9154, title 9155 (each ATELIER_<SERVICE>_METRICS_ADDR overrides)
  logs:                    $log_dir/<service>.log
Press Ctrl-C to stop all services.
EOF
[ -x "$bin_dir/atelier-mint-token" ] \
  || say "note: $bin_dir/atelier-mint-token was not built; token minting above will not work"

# Sleep until a child exits (or a signal arrives and the trap stops everything).
while :; do
  wait -n || true
  check_children
done
