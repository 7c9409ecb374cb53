#!/usr/bin/env bash
# Measures the resident memory of an idle Sluice holding many policies loaded from PostgreSQL
# (docs/benchmarks.md, "Policy memory"). Creates its own database, runs `sluice migrate`, inserts
# TENANTS × PATTERNS policies with one INSERT … SELECT over generate_series, starts each given
# release binary against it in turn (in-process counters, a JWT secret set), waits for /readyz,
# lets it idle, reads VmRSS and VmHWM from /proc, stops it, and drops the database at the end.
#
#   cargo build --release && scripts/policy-memory.sh                 # target/release/sluice
#   scripts/policy-memory.sh /tmp/sluice-base target/release/sluice  # before/after, same data
#
# Settings (environment): SLUICE_TEST_DATABASE_URL (an account that may CREATE DATABASE; default
# postgres://sluice_test:sluice_test@127.0.0.1:5432/postgres), TENANTS (1000), PATTERNS (100, at
# most 400), IDLE_SECS (5: the wait after /readyz before reading RSS), ROUNDS (1 per binary).
set -euo pipefail
cd "$(dirname "$0")/.."

admin_url=${SLUICE_TEST_DATABASE_URL:-postgres://sluice_test:sluice_test@127.0.0.1:5432/postgres}
tenants=${TENANTS:-1000}
patterns=${PATTERNS:-100}
idle_secs=${IDLE_SECS:-5}
rounds=${ROUNDS:-1}
binaries=("$@")
[ ${#binaries[@]} -gt 0 ] || binaries=(target/release/sluice)
for bin in "${binaries[@]}"; do
    [ -x "$bin" ] || { echo "no executable at $bin (cargo build --release?)" >&2; exit 1; }
done

db="sluice_mem_$$_${RANDOM}"
db_url="${admin_url%/*}/${db}"
server_pid=""
cleanup() {
    if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
    psql -q "$admin_url" -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null
}
trap cleanup EXIT

psql -q "$admin_url" -c "CREATE DATABASE \"$db\"" >/dev/null
DATABASE_URL="$db_url" "${binaries[0]}" migrate >/dev/null 2>&1

# Four realistic shapes per group of four: a method with a final `*`, a method with literals only,
# a final `**`, and a `*` in the middle.
started=$(date +%s.%N)
psql -q "$db_url" <<SQL
INSERT INTO rate_policies (id, tenant_id, endpoint_pattern, max_requests, window_seconds, burst_limit)
SELECT gen_random_uuid(),
       'tenant-' || t,
       CASE p % 4
           WHEN 0 THEN 'GET /v1/svc' || p / 4 || '/items/*'
           WHEN 1 THEN 'POST /v1/svc' || p / 4 || '/items'
           WHEN 2 THEN '/v1/svc' || p / 4 || '/admin/**'
           ELSE '/v1/svc' || p / 4 || '/users/*/orders'
       END,
       100 + p, 60, CASE WHEN p % 3 = 0 THEN 10 ELSE 0 END
FROM generate_series(0, $tenants - 1) AS t, generate_series(0, $patterns - 1) AS p;
SQL
echo "inserted $(psql -tA "$db_url" -c 'SELECT count(*) FROM rate_policies') policies in $(echo "$(date +%s.%N) - $started" | bc) s"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

measure() {
    local bin=$1 http_port
    http_port=$(free_port)
    local t0
    t0=$(date +%s.%N)
    DATABASE_URL="$db_url" \
        SLUICE_JWT_HS256_SECRET=policy-memory-benchmark-secret-0123456789abcdef \
        SLUICE_GRPC_ADDR=127.0.0.1:0 SLUICE_HTTP_ADDR="127.0.0.1:$http_port" \
        SLUICE_LOG_FORMAT=json RUST_LOG=warn \
        "$bin" serve >/dev/null 2>>"${SERVER_LOG:-/dev/null}" &
    server_pid=$!
    until curl -fs "http://127.0.0.1:$http_port/readyz" >/dev/null 2>&1; do
        kill -0 "$server_pid" 2>/dev/null || { echo "$bin exited before /readyz" >&2; exit 1; }
        sleep 0.05
    done
    local ready
    ready=$(echo "$(date +%s.%N) - $t0" | bc)
    sleep "$idle_secs"
    local rss hwm policies
    rss=$(awk '/^VmRSS/ {print $2}' "/proc/$server_pid/status")
    hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$server_pid/status")
    policies=$(curl -fs "http://127.0.0.1:$http_port/metrics" | awk '/^sluice_policies / {print $2}')
    kill -TERM "$server_pid"
    wait "$server_pid" || true
    server_pid=""
    printf '%-40s policies %-7s ready %6.2f s   idle VmRSS %7.1f MB   peak VmHWM %7.1f MB\n' \
        "$bin" "$policies" "$ready" "$(echo "$rss / 1024" | bc -l)" "$(echo "$hwm / 1024" | bc -l)"
}

for _ in $(seq "$rounds"); do
    for bin in "${binaries[@]}"; do
        measure "$bin"
    done
done
