#!/usr/bin/env bash
# Checks a running compose stack from outside, as a user and an operator would see it:
#
#   1. every container is up, and every one with a health check is healthy;
#   2. the web client, in headless Chromium (web/tests/browser.mjs), opens the edge's page,
#      sends a prompt, follows the message live across a reload and loads its image;
#   3. Prometheus scrapes all six services (up == 1) and holds the edge's SendMessage;
#   4. Jaeger holds that message's trace, with spans from the edge, the conversation
#      service, the generation worker and enhancement (intent joins only for a message
#      that could edit an earlier picture, and this is a conversation's first);
#   5. a message sent while the generation worker is stopped (a rollout's gap) completes
#      once a worker is back.
#
#   docker compose -f deploy/compose/compose.yaml up --build -d
#   bash deploy/compose/smoke.sh
#
# Needs curl, python3, Node.js, Chromium and the web client's packages (bash
# deploy/local/ensure-deps.sh --browser && bash deploy/local/build-web.sh). Environment:
#   ATELIER_COMPOSE   the compose command (default: docker compose -f deploy/compose/compose.yaml)
#   ATELIER_WEB_BASE  the edge's HTTP root (http://localhost:50080)
#   ATELIER_PROMETHEUS_URL (http://localhost:9090), ATELIER_JAEGER_URL (http://localhost:16686)
#   ATELIER_SMOKE_WAIT_SECS (180): how long to wait for health, a scrape and a trace.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"

read -r -a compose <<<"${ATELIER_COMPOSE:-docker compose -f deploy/compose/compose.yaml}"
web_base="${ATELIER_WEB_BASE:-http://localhost:50080}"
prometheus="${ATELIER_PROMETHEUS_URL:-http://localhost:9090}"
jaeger="${ATELIER_JAEGER_URL:-http://localhost:16686}"
wait_secs="${ATELIER_SMOKE_WAIT_SECS:-180}"

say() { printf 'smoke: %s\n' "$*"; }
die() { printf 'smoke: FAILED: %s\n' "$*" >&2; exit 1; }

# Retries "$@" once a second until it succeeds or wait_secs pass. A check may leave what
# it last saw in `seen`, for the failure to name.
seen=""
eventually() {
  local what="$1"; shift
  local deadline=$((SECONDS + wait_secs))
  seen=""
  until "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || die "$what (waited ${wait_secs}s)${seen:+: $seen}"
    sleep 1
  done
}

# --------------------------------------------------------------------------- 1. health
all_healthy() {
  local ids
  ids="$("${compose[@]}" ps -q)"
  [ -n "$ids" ] || return 1
  # shellcheck disable=SC2086 # one id per word
  seen="$(docker inspect -f '{{.Name}} {{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' $ids \
    | grep -vE ' (healthy|running)$' | tr '\n' ' ')"
  [ -z "$seen" ]
}
say "waiting for every container to be healthy"
eventually "containers not healthy" all_healthy
say "$("${compose[@]}" ps -q | wc -l) containers healthy"

# ------------------------------------------------------------------------ 2. the page
user="smoke-$(date +%s)"
token="$("${compose[@]}" exec -T edge atelier-mint-token --sub "$user")"
[ -n "$token" ] || die "atelier-mint-token printed nothing"

# The builtin renderer: 512 px by default, and done before the page could see it draw, so
# any live progress event (its "storing") counts as seen before the reload.
browse() {
  ATELIER_WEB_URL="$web_base/#token=$token" ATELIER_EXPECT_WIDTH=512 ATELIER_MODEL=builtin \
    ATELIER_PROGRESS_STAGE=any \
    ATELIER_SCREENSHOT="${ATELIER_SCREENSHOT:-}" node web/tests/browser.mjs
}
say "web client: a prompt, live progress, a reload, the image ($web_base)"
started=$SECONDS
# Jaeger's query takes microseconds: only traces from here on are this run's.
since_us="$(date +%s%6N)"
result="$(browse)" || die "the web client's check failed (its reasons are above)"
message_id="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["messageId"])' "$result")"
say "message $message_id completed and its image loaded in $((SECONDS - started)) s: $result"

# ------------------------------------------------------------------------ 3. metrics
query() {
  curl -fsS --get "$prometheus/api/v1/query" --data-urlencode "query=$1"
}
all_scraped() {
  local answer
  answer="$(query 'up{job="atelier"}' 2>&1)"
  seen="${answer:0:600}"
  python3 -c '
import json, sys
results = json.load(sys.stdin)["data"]["result"]
up = {r["metric"]["service"] for r in results if r["value"][1] == "1"}
sys.exit(0 if len(up) == 6 else 1)' <<<"$answer"
}
say "Prometheus: every service scraped"
eventually "Prometheus does not scrape all six services" all_scraped
send_seen() {
  query 'sum(atelier_rpc_server_duration_seconds_count{service="edge",method="/atelier.v1.ChatService/SendMessage",code="OK"})' \
    | python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; sys.exit(0 if r and float(r[0]["value"][1]) >= 1 else 1)'
}
eventually "Prometheus has no answered SendMessage from the edge" send_seen
say "Prometheus: 6/6 services up, the edge's SendMessage recorded"

# -------------------------------------------------------------------------- 4. traces
trace_complete() {
  curl -fsS --get "$jaeger/api/traces" --data-urlencode service=edge --data-urlencode limit=200 \
    --data-urlencode start="$since_us" --data-urlencode end="$(date +%s%6N)" \
    | python3 -c '
import json, sys
wanted = {"edge", "conversation", "generation", "enhancement"}
for trace in json.load(sys.stdin)["data"]:
    services = {p["serviceName"] for p in trace["processes"].values()}
    if wanted <= services:
        print(trace["traceID"], len(trace["spans"]), "spans from", ", ".join(sorted(services)))
        sys.exit(0)
sys.exit(1)'
}
say "Jaeger: one trace from the edge through the worker to enhancement"
eventually "no trace in Jaeger spans edge, conversation, generation and enhancement" trace_complete >/dev/null
say "Jaeger: trace $(trace_complete)"

# ------------------------------------------------------------------------- 5. rollout
# A rollout stops the worker (SIGTERM: it drains and hands back what it holds) before the
# new one starts: a message sent in that gap waits in JetStream, it is not lost.
say "rollout: a message sent while the generation worker is stopped"
"${compose[@]}" stop generation >/dev/null 2>&1 || die "the generation worker did not stop"
( sleep 8 && "${compose[@]}" start generation >/dev/null 2>&1 ) &
starter=$!
started=$SECONDS
result="$(browse)" || die "a message sent while the generation worker was stopped did not complete"
wait "$starter" || die "the generation worker did not start again"
say "rollout: the message completed $((SECONDS - started)) s after it was sent: $result"
eventually "the generation worker is not healthy again" all_healthy

say "passed"
