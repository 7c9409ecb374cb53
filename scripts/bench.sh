#!/usr/bin/env bash
# Runs the hot-path benchmark (benches/checks.rs): the decide microbenchmark, then ShouldRateLimit
# over gRPC against an in-process Sluice with in-process counters and with Redis. About 1.5 minutes
# with the defaults; results and method in docs/benchmarks.md.
#
#   scripts/bench.sh                          # every scenario, 10 s each
#   BENCH_SECS=5 BENCH_SCENARIOS=redis,hot scripts/bench.sh
#
# Needs a Redis at BENCH_REDIS_URL (default redis://127.0.0.1:6379) for the Redis scenarios; keys
# go under a fresh `sluicebench:` prefix and expire on their own (nothing is flushed).
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench --bench checks "$@"
