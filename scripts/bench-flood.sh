#!/usr/bin/env bash
# The flood benchmark, in one command: builds Sluice and the load generator (examples/flood.rs),
# starts the real `sluice` binary on PostgreSQL (a database of its own, created here and dropped at
# the end) and Redis (a key prefix of its own, deleted at the end; nothing is flushed), creates the
# policies through the admin API and floods ShouldRateLimit with many different bodies: one tenant,
# 1,000 tenants with Zipf-like popularity, and the deny path, each at 256 and 1,024 in flight; then
# the ceiling, redis-benchmark running a naive per-request sliding-window script at the same
# concurrency. Prints one table; method and figures in docs/benchmarks.md.
#
#   scripts/bench-flood.sh                                  # release build, 10 s per run (~2 min)
#   FLOOD_SECS=3 FLOOD_INFLIGHT=256 scripts/bench-flood.sh
#   FLOOD_PROFILE=debug FLOOD_CHECK=1 FLOOD_SECS=2 FLOOD_INFLIGHT=64 scripts/bench-flood.sh  # CI smoke
#
# Settings (environment): FLOOD_PROFILE (release | debug), FLOOD_SECS (10), FLOOD_WARMUP_SECS (1),
# FLOOD_INFLIGHT (256,1024), FLOOD_SCENARIOS (one,zipf,deny), FLOOD_TENANTS (1000),
# FLOOD_CEILING_CALLS (200000; 0 = none), FLOOD_CHECK (1: exit non-zero on an error answer or
# counted hits != OK answers), FLOOD_REDIS_URL (redis://127.0.0.1:6379), FLOOD_DATABASE_URL
# (postgres://sluice_test:sluice_test@127.0.0.1:5432/postgres: a role that may create databases),
# FLOOD_MIN_FREE_GB (5: free disk a release build needs), FLOOD_SLUICE_BIN (another sluice binary
# to run, for an A/B against an earlier commit), FLOOD_RATE (checks per second in all, open loop,
# latency timed from when each check was due; 0 = closed loop, the default; FLOOD_INFLIGHT then
# caps how many are outstanding). Sluice's own settings (e.g.
# RATE_LIMIT_REDIS_TIMEOUT_MS, SLUICE_REDIS_POOL_SIZE) pass through. Loopback only; every run is
# bounded by FLOOD_SECS and a maximum number of checks.
set -euo pipefail
exec </dev/null
cd "$(dirname "$0")/.."

die() { printf 'bench-flood: %s\n' "$*" >&2; exit 1; }

PROFILE="${FLOOD_PROFILE:-release}"
REDIS_URL_="${FLOOD_REDIS_URL:-redis://127.0.0.1:6379}"
ADMIN_DB_URL="${FLOOD_DATABASE_URL:-postgres://sluice_test:sluice_test@127.0.0.1:5432/postgres}"

need() { command -v "$1" >/dev/null || die "$1 not found: apt-get install $2"; }
need cargo "rustup (https://rustup.rs), then re-run"
need psql postgresql-client
need redis-cli redis-tools
need redis-benchmark redis-tools
need curl curl
need python3 python3

loopback_url() {
    local host="${1#*://}"
    host="${host#*@}"
    host="${host%%/*}"
    host="${host%:*}"
    case "$host" in
        127.0.0.1 | localhost | "[::1]") ;;
        *) die "$2 must point at loopback (127.0.0.1), not $host: this benchmark floods what it talks to" ;;
    esac
}
loopback_url "$REDIS_URL_" FLOOD_REDIS_URL
loopback_url "$ADMIN_DB_URL" FLOOD_DATABASE_URL

[ "$(redis-cli -u "$REDIS_URL_" ping 2>/dev/null || true)" = "PONG" ] \
    || die "Redis at $REDIS_URL_ does not answer PING (start redis-server, or set FLOOD_REDIS_URL)"
PGCONNECT_TIMEOUT=5 psql -X -q -w -At "$ADMIN_DB_URL" -c 'select 1' >/dev/null 2>&1 \
    || die "cannot connect to PostgreSQL with FLOOD_DATABASE_URL (a role that may create databases)"

case "$PROFILE" in
    release) build_flags=(--release); target_dir="${CARGO_TARGET_DIR:-target}/release" ;;
    debug) build_flags=(); target_dir="${CARGO_TARGET_DIR:-target}/debug" ;;
    *) die "FLOOD_PROFILE must be release or debug, not $PROFILE" ;;
esac
free_gb="$(df -Pk . | awk 'NR == 2 { print int($4 / 1048576) }')"
if [ "$PROFILE" = release ] && [ "$free_gb" -lt "${FLOOD_MIN_FREE_GB:-5}" ]; then
    die "only ${free_gb} GB free on $(pwd): a release build needs about ${FLOOD_MIN_FREE_GB:-5} GB (FLOOD_MIN_FREE_GB)"
fi

echo "bench-flood: building sluice and examples/flood ($PROFILE)" >&2
SQLX_OFFLINE=true cargo build -q "${build_flags[@]}" --bin sluice --example flood
# FLOOD_SLUICE_BIN: run another build of sluice (e.g. an earlier commit's, for an A/B in one
# sitting) against the same generator.
sluice_bin="${FLOOD_SLUICE_BIN:-$target_dir/sluice}"
[ -x "$sluice_bin" ] || die "FLOOD_SLUICE_BIN=$sluice_bin is not an executable"

# ---------------------------------------------------------------- what this run creates
run_id="$$_$(date +%s)"
db_name="sluice_flood_${run_id}"
key_prefix="sluiceflood:${run_id}:"
work_dir="$(mktemp -d)"
sluice_pid=""

cleanup() {
    local status=$?
    if [ -n "$sluice_pid" ] && kill -0 "$sluice_pid" 2>/dev/null; then
        kill -TERM "$sluice_pid" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$sluice_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$sluice_pid" 2>/dev/null || true
        wait "$sluice_pid" 2>/dev/null || true
    fi
    psql -X -q -w "$ADMIN_DB_URL" -c "DROP DATABASE IF EXISTS \"$db_name\" WITH (FORCE)" >/dev/null 2>&1 \
        || echo "bench-flood: could not drop database $db_name" >&2
    redis-cli -u "$REDIS_URL_" --scan --pattern "${key_prefix}*" 2>/dev/null \
        | xargs -r -n 500 redis-cli -u "$REDIS_URL_" unlink >/dev/null 2>&1 \
        || echo "bench-flood: could not delete Redis keys under ${key_prefix}" >&2
    rm -rf "$work_dir"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

psql -X -q -w "$ADMIN_DB_URL" -c "CREATE DATABASE \"$db_name\"" >/dev/null
database_url="${ADMIN_DB_URL%/*}/${db_name}"

read -r grpc_port http_port < <(python3 - <<'EOF'
import socket
sockets = [socket.socket() for _ in range(2)]
for s in sockets:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in sockets))
EOF
)

# The admin API needs a key with PostgreSQL: a fresh HS256 secret, given only to the two processes.
secret="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"

SLUICE_JWT_HS256_SECRET="$secret" \
    DATABASE_URL="$database_url" \
    REDIS_URL="$REDIS_URL_" \
    SLUICE_REDIS_KEY_PREFIX="$key_prefix" \
    SLUICE_GRPC_ADDR="127.0.0.1:$grpc_port" \
    SLUICE_HTTP_ADDR="127.0.0.1:$http_port" \
    SLUICE_LOG_FORMAT=json \
    RUST_LOG="${RUST_LOG:-warn}" \
    "$sluice_bin" serve >"$work_dir/sluice.log" 2>&1 &
sluice_pid=$!

ready=""
for _ in $(seq 1 300); do
    kill -0 "$sluice_pid" 2>/dev/null || break
    if curl -fs "http://127.0.0.1:$http_port/readyz" >/dev/null 2>&1; then
        ready=1
        break
    fi
    sleep 0.1
done
if [ -z "$ready" ]; then
    tail -n 20 "$work_dir/sluice.log" >&2
    die "sluice did not become ready on 127.0.0.1:$http_port within 30 s (its log is above)"
fi

cpu_model="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || true)"
echo "machine: $(nproc) CPUs (${cpu_model:-unknown}), $(awk '/MemTotal/ { printf "%.0f GB", $2 / 1048576 }' /proc/meminfo), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "sluice $("$sluice_bin" --version | awk '{ print $2 }') ($PROFILE, ${FLOOD_SLUICE_BIN:+binary $FLOOD_SLUICE_BIN, }commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)); $(redis-cli -u "$REDIS_URL_" info server | grep -o 'redis_version:[^[:space:]]*'); PostgreSQL $(psql -X -At "$ADMIN_DB_URL" -c 'show server_version')"
echo "Sluice, Redis, PostgreSQL and the load generator share this machine; RATE_LIMIT_REDIS_TIMEOUT_MS=${RATE_LIMIT_REDIS_TIMEOUT_MS:-50}"

check_flag=()
[ "${FLOOD_CHECK:-0}" = 1 ] && check_flag=(--check)
status=0
SLUICE_JWT_HS256_SECRET="$secret" "$target_dir/examples/flood" \
    --grpc "127.0.0.1:$grpc_port" \
    --http "127.0.0.1:$http_port" \
    --sluice-pid "$sluice_pid" \
    --redis-url "$REDIS_URL_" \
    --key-prefix "$key_prefix" \
    --secs "${FLOOD_SECS:-10}" \
    --warmup-secs "${FLOOD_WARMUP_SECS:-1}" \
    --inflight "${FLOOD_INFLIGHT:-256,1024}" \
    --scenarios "${FLOOD_SCENARIOS:-one,zipf,deny}" \
    --tenants "${FLOOD_TENANTS:-1000}" \
    --ceiling-calls "${FLOOD_CEILING_CALLS:-200000}" \
    --rate "${FLOOD_RATE:-0}" \
    "${check_flag[@]}" "$@" || status=$?
if [ "$status" -ne 0 ]; then
    echo "bench-flood: the load generator failed (exit $status); the last lines of Sluice's log:" >&2
    tail -n 20 "$work_dir/sluice.log" >&2
fi
exit "$status"
