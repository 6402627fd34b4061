#!/usr/bin/env bash
# Trivial jobs through one or more worker binaries against the raw job round trip, in alternated
# rounds of one session: each round runs `dtee-loadtest roundtrip` (lapin alone, no dtee), the
# same in dtee's broker shape (`--shape dtee`: dtee's exchanges, queue arguments and message
# properties, no dtee code; reported beside the workers, against the plain trip), and then
# `dtee-loadtest jobs` (noop jobs, the `reply` wait of `dtee run`) through each worker in turn,
# each worker a fresh release process with two kernel slots in its own namespace.
# Prints one line per run and, at the end, each one's medians: jobs/s, CPU µs per job by process
# (from /proc), the ratios to the round trip that issue 13 sets goals for, and, on one Redis
# node, the Redis calls per job that Redis itself counted (INFO commandstats).
#
# Usage: loadtest/compare.sh [ROUNDS] [WORKER_BINARY...]   (default 3 rounds and
# target/release/dtee-worker; give an earlier build, named dtee-worker in another folder, to
# compare a change). DTEE_COMPARE_JOBS (5000) jobs per run; DTEE_COMPARE_ENV, extra environment
# for every worker (e.g. DTEE_SHORT_RUN_FUEL=0); DTEE_COMPARE_PREFETCH (16, the worker's default
# on two kernel slots, at least 1), the prefetch of the round trip's consumer and of every worker
# alike (RabbitMQ's CPU per message falls as the window grows, so compare only like windows). A
# DTEE_PREFETCH in DTEE_COMPARE_ENV overrides it for the workers alone: unlike windows.
# Needs release binaries: cargo build --release -p dtee-worker -p dtee-loadtest
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
shift || true
workers=("$@")
if [ ${#workers[@]} -eq 0 ]; then workers=(./target/release/dtee-worker); fi
jobs=${DTEE_COMPARE_JOBS:-5000}
prefetch=${DTEE_COMPARE_PREFETCH:-16}
if ! [[ $prefetch =~ ^[1-9][0-9]*$ ]] || [ "$prefetch" -gt 65535 ]; then
  echo "DTEE_COMPARE_PREFETCH must be 1 to 65535, not '$prefetch'" >&2
  exit 64
fi
out=$(mktemp)
namespaces=()
trap 'rm -f "$out"; loadtest/forget.sh "${namespaces[@]}"' EXIT

report() { # NAME JSON_LINE
  echo "$1 $2" >>"$out"
  python3 - "$1" "$2" <<'PY'
import json, sys
name, r = sys.argv[1], json.loads(sys.argv[2])
cpu = ", ".join(f"{k} {v:.0f}" for k, v in r["cpu_us_per_job"].items())
print(f"{name[-34:]:<34} {r['per_second']:>7.0f}/s  p50 {r['latency_ms_p50']:6.1f} ms  CPU µs/job: {cpu}")
redis = r.get("redis_per_job", {})
if redis:
    calls = ", ".join(f"{k} {v['calls']:.2f}" for k, v in redis.items())
    print(f"{'':<34} Redis per job (its own count): {sum(v['calls'] for v in redis.values()):.2f} "
          f"calls ({calls})")
PY
}

for round in $(seq 1 "$rounds"); do
  echo "== round $round"
  ns="compare-$$-$round-raw"
  namespaces+=("$ns")
  report roundtrip "$(DTEE_NAMESPACE=$ns ./target/release/dtee-loadtest roundtrip \
    --messages "$jobs" --in-flight 256 --prefetch "$prefetch" --json | tail -1)"
  report roundtrip/dtee-shape "$(DTEE_NAMESPACE=$ns ./target/release/dtee-loadtest roundtrip \
    --messages "$jobs" --in-flight 256 --prefetch "$prefetch" --shape dtee --json | tail -1)"
  for index in "${!workers[@]}"; do
    worker_bin=${workers[$index]}
    ns="compare-$$-$round-$index"
    namespaces+=("$ns")
    # shellcheck disable=SC2086 # DTEE_COMPARE_ENV is a list of NAME=VALUE words
    env DTEE_PREFETCH="$prefetch" ${DTEE_COMPARE_ENV:-} DTEE_NAMESPACE="$ns" DTEE_CONCURRENCY=2 \
      DTEE_ATTESTATION=software \
      DTEE_LOG=warn DTEE_WORKER_ID="$ns" "$worker_bin" &
    worker=$!
    sleep 3
    line=$(DTEE_NAMESPACE=$ns ./target/release/dtee-loadtest jobs --jobs "$jobs" \
      --in-flight 256 --json | tail -1)
    kill -TERM "$worker"
    wait "$worker" || true
    report "$index:$worker_bin" "$line"
  done
  # Each round's queues go at its end: queues left by earlier rounds cost the broker CPU in
  # later ones (RabbitMQ's CPU per job rose by a quarter over five rounds when they stayed).
  loadtest/forget.sh "${namespaces[@]}"
  namespaces=()
done

python3 - "$out" <<'PY'
import json, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    name, record = line.split(" ", 1)
    runs.setdefault(name, []).append(json.loads(record))
median = lambda rs, f: statistics.median(f(r) for r in rs)
raw = runs.pop("roundtrip")
raw_rate = median(raw, lambda r: r["per_second"])
raw_cpu = median(raw, lambda r: r["cpu_us_per_job"]["total"])
print(f"\nmedians of {len(raw)} rounds")
print(f"{'roundtrip':<34} {raw_rate:>7.0f}/s  CPU µs/job total {raw_cpu:.0f}")
for name, rs in runs.items():
    rate = median(rs, lambda r: r["per_second"])
    cpu = {k: median(rs, lambda r: r["cpu_us_per_job"][k]) for k in rs[0]["cpu_us_per_job"]}
    parts = ", ".join(f"{k} {v:.0f}" for k, v in cpu.items())
    print(f"{name[-34:]:<34} {rate:>7.0f}/s  CPU µs/job: {parts}")
    print(f"{'':<34} throughput {rate / raw_rate:.2f} of the round trip (goal ≥ 0.8), "
          f"CPU {cpu['total'] / raw_cpu:.2f}× (goal ≤ 1.3×)")
    if all(r.get("redis_per_job") for r in rs):
        calls = median(rs, lambda r: sum(v["calls"] for v in r["redis_per_job"].values()))
        print(f"{'':<34} Redis calls per job (INFO commandstats, scripts' own calls included): "
              f"{calls:.2f}")
PY
