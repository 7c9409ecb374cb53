#!/usr/bin/env bash
# A/B comparison in one run: alternates two builds of the benchmark (benches/checks.rs) scenario by
# scenario, ROUNDS times, so both see the same machine load, and prints each scenario's medians per
# build (checks/s, p99 latency, Sluice and Redis CPU per check, EVALSHA time inside Redis) and the
# ratio NEW/BASE of each.
#
#   cargo bench --bench checks --no-run   # at the base commit; copy the printed executable to BASE
#   cargo bench --bench checks --no-run   # at the new commit; copy it to NEW
#   ROUNDS=3 BENCH_SECS=5 scripts/bench-ab.sh BASE NEW [scenario ...]
set -euo pipefail
base=$1 new=$2
shift 2
scenarios=("${@:-redis hot unmatched memory}")
read -r -a scenarios <<<"${scenarios[*]}"
rounds=${ROUNDS:-3}
export BENCH_SECS=${BENCH_SECS:-5}
declare -A runs
metrics=(rate p99 sluice redis evalsha)
for scenario in "${scenarios[@]}"; do
  for round in $(seq "$rounds"); do
    for which in base new; do
      bin=$base
      [[ $which == new ]] && bin=$new
      out=$(BENCH_SCENARIOS=$scenario "$bin" --bench)
      line=$(grep -E "^$scenario +[0-9]" <<<"$out" || true)
      cpu=$(grep -A1 -E "^$scenario +[0-9]" <<<"$out" | tail -1)
      echo "round $round $which: $line" >&2
      echo "round $round $which: $cpu" >&2
      runs[$scenario.$which.rate]+="$(awk '{print $2}' <<<"$line") "
      runs[$scenario.$which.p99]+="$(sed -n 's/.*p99 *\([0-9.]*\) ms.*/\1/p' <<<"$line") "
      runs[$scenario.$which.sluice]+="$(sed -n 's/.*sluice \([0-9.]*\) µs.*/\1/p' <<<"$cpu") "
      runs[$scenario.$which.redis]+="$(sed -n 's/.*redis \([0-9.]*\) µs.*/\1/p' <<<"$cpu") "
      runs[$scenario.$which.evalsha]+="$(sed -n 's/.*, \([0-9.]*\) µs per call inside.*/\1/p' <<<"$cpu") "
    done
  done
done
# A metric a scenario does not have (no Redis figures for `memory`) is empty: `|| true` keeps grep's
# "no lines" status from ending the script under `set -e -o pipefail`.
median() { tr ' ' '\n' | { grep -v '^$' || true; } | sort -g | awk '{a[NR]=$1} END {print (NR ? a[int((NR+1)/2)] : "-")}'; }
printf '%-10s %-9s %10s %10s %7s\n' scenario metric base new ratio
for scenario in "${scenarios[@]}"; do
  for metric in "${metrics[@]}"; do
    b=$(median <<<"${runs[$scenario.base.$metric]:-}")
    n=$(median <<<"${runs[$scenario.new.$metric]:-}")
    [[ $b == - && $n == - ]] && continue
    printf '%-10s %-9s %10s %10s %7s\n' "$scenario" "$metric" "$b" "$n" \
      "$(awk -v b="$b" -v n="$n" 'BEGIN {printf "%.2f", (b > 0 ? n / b : 0)}')"
  done
done
