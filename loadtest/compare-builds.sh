#!/usr/bin/env bash
# Two or more builds of the whole job path (worker, client and raw round trip alike) against
# each other, in alternated rounds of one session: for each build in turn, the raw round trip
# (`dtee-loadtest roundtrip`) and then 5,000 trivial jobs through one fresh worker with two kernel
# slots, both with that build's binaries. Where compare.sh varies the worker under one load
# generator, this varies everything the build links, e.g. the AMQP client (third_party/lapin).
# Prints one line per run, then each build's medians and its ratios to its own round trip.
#
# Usage: loadtest/compare-builds.sh ROUNDS DIR...   (each DIR holds dtee-worker and
# dtee-loadtest release binaries). DTEE_COMPARE_JOBS (5000) jobs per run; DTEE_COMPARE_PREFETCH
# (16) the worker's DTEE_PREFETCH and the round trip's --prefetch.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { echo "usage: $0 ROUNDS DIR..." >&2; exit 2; }
rounds=$1
shift
jobs=${DTEE_COMPARE_JOBS:-5000}
prefetch=${DTEE_COMPARE_PREFETCH:-16}
out=$(mktemp)
namespaces=()
trap 'rm -f "$out"; loadtest/forget.sh "${namespaces[@]}"' EXIT

for round in $(seq 1 "$rounds"); do
  echo "== round $round"
  for dir in "$@"; do
    ns="builds-$$-$round-${#namespaces[@]}"
    namespaces+=("$ns")
    raw=$(DTEE_NAMESPACE=$ns "$dir/dtee-loadtest" roundtrip --messages "$jobs" --in-flight 256 \
      --prefetch "$prefetch" --json | tail -1)
    DTEE_NAMESPACE=$ns DTEE_CONCURRENCY=2 DTEE_PREFETCH=$prefetch DTEE_ATTESTATION=software \
      DTEE_LOG=warn DTEE_WORKER_ID="$ns" "$dir/dtee-worker" &
    worker=$!
    sleep 3
    line=$(DTEE_NAMESPACE=$ns "$dir/dtee-loadtest" jobs --jobs "$jobs" --in-flight 256 --json \
      | tail -1)
    kill -TERM "$worker"
    wait "$worker" || true
    echo "$dir roundtrip $raw" >>"$out"
    echo "$dir jobs $line" >>"$out"
    python3 - "$dir" "$raw" "$line" <<'PY'
import json, sys
for kind, r in (("roundtrip", json.loads(sys.argv[2])), ("jobs", json.loads(sys.argv[3]))):
    cpu = ", ".join(f"{k} {v:.0f}" for k, v in r["cpu_us_per_job"].items())
    print(f"{sys.argv[1][-24:]:<24} {kind:<9} {r['per_second']:>7.0f}/s  CPU µs/job: {cpu}")
PY
  done
  # Each round's queues go at its end (left behind, they cost the broker CPU in later rounds).
  loadtest/forget.sh "${namespaces[@]}"
  namespaces=()
done

python3 - "$out" <<'PY'
import json, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    build, kind, record = line.split(" ", 2)
    runs.setdefault(build, {}).setdefault(kind, []).append(json.loads(record))
print(f"\nmedians of {len(next(iter(runs.values()))['jobs'])} rounds")
for build, kinds in runs.items():
    med = lambda kind, f: statistics.median(f(r) for r in kinds[kind])
    keys = kinds["jobs"][0]["cpu_us_per_job"]
    cpu = {k: med("jobs", lambda r, k=k: r["cpu_us_per_job"][k]) for k in keys}
    raw_rate = med("roundtrip", lambda r: r["per_second"])
    raw_cpu = med("roundtrip", lambda r: r["cpu_us_per_job"]["total"])
    rate = med("jobs", lambda r: r["per_second"])
    parts = ", ".join(f"{k} {v:.0f}" for k, v in cpu.items())
    print(f"{build}: round trip {raw_rate:.0f}/s, {raw_cpu:.0f} µs/job; jobs {rate:.0f}/s, {parts}")
    print(f"  throughput {rate / raw_rate:.2f} of its round trip (goal ≥ 0.8), "
          f"CPU {cpu['total'] / raw_cpu:.2f}× (goal ≤ 1.3×)")
PY
