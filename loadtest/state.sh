#!/usr/bin/env bash
# What one read_write state binding costs over a trivial job, in alternated rounds of one
# session: `dtee-loadtest jobs` with noop jobs, then the same number of jobs each incrementing
# one of 1,000 counters (`--state-keys 1000`), through one release worker (two kernel slots).
# With a second worker binary (e.g. one built from an earlier commit), each round runs both
# workers, so that a change is compared within one session.
# Prints one line per run (jobs/s and CPU per job by process, from /proc; on one Redis node also
# Redis's own count of calls per job, by command, from INFO commandstats: exact where CPU time
# is noisy, though it counts every client of that Redis) and, at the end, the median CPU per job
# of each workload and the difference: what the binding adds.
#
# Usage: loadtest/state.sh [ROUNDS] [OTHER_WORKER_BINARY]   (default 3 rounds; the other binary
# must be named dtee-worker, in another folder, for its CPU time to be found in /proc)
# Needs release binaries: cargo build --release -p dtee-worker -p dtee-loadtest
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
workers=(./target/release/dtee-worker)
if [ -n "${2:-}" ]; then workers+=("$2"); fi
jobs=${DTEE_STATE_JOBS:-3000}
out=$(mktemp)
trap 'rm -f "$out"; loadtest/forget.sh $(cut -d" " -f1 "$out.ns" 2>/dev/null); rm -f "$out.ns"' EXIT

printf '%-6s %-28s %-6s %9s  %s\n' round worker load jobs/s "CPU µs per job"
for round in $(seq 1 "$rounds"); do
  for worker_bin in "${workers[@]}"; do
    ns="perf-state-$$-$round-${#worker_bin}"
    echo "$ns" >>"$out.ns"
    (
      export DTEE_NAMESPACE=$ns
      DTEE_CONCURRENCY=2 DTEE_ATTESTATION=software DTEE_LOG=warn DTEE_WORKER_ID="$ns" \
        "$worker_bin" &
      worker=$!
      trap 'kill -TERM $worker 2>/dev/null; wait $worker 2>/dev/null' EXIT
      sleep 3
      for load in noop state; do
        args=(--jobs "$jobs" --in-flight 256)
        if [ "$load" = state ]; then args+=(--state-keys 1000); fi
        line=$(./target/release/dtee-loadtest jobs "${args[@]}" --json | tail -1)
        echo "$worker_bin $load $line" >>"$out"
        python3 - "$round" "$worker_bin" "$load" "$line" <<'PY'
import json, sys
round_, worker, load, line = sys.argv[1:5]
r = json.loads(line)
cpu = ", ".join(f"{k} {v:.0f}" for k, v in r["cpu_us_per_job"].items())
print(f"{round_:<6} {worker[-28:]:<28} {load:<6} {r['per_second']:>9.0f}  {cpu}")
redis = r.get("redis_per_job", {})
if redis:
    calls = ", ".join(f"{k} {v['calls']:.2f}" for k, v in redis.items())
    total = sum(v["calls"] for v in redis.values())
    scripts = redis.get("evalsha", {"us": 0})["us"]
    print(f"{'':<6} {'':<28} {'':<6} {'':>9}  Redis per job: {total:.2f} calls (scripts' own "
          f"calls included), scripts {scripts:.0f} µs ({calls})")
PY
      done
    )
  done
done
python3 - "$out" <<'PY'
import json, statistics, sys
runs = {}
redis = {}
for line in open(sys.argv[1]):
    worker, load, record = line.split(" ", 2)
    r = json.loads(record)
    runs.setdefault(worker, {}).setdefault(load, []).append(r["cpu_us_per_job"])
    counted = r.get("redis_per_job", {})
    if counted:
        redis.setdefault(worker, {}).setdefault(load, []).append({
            "calls": sum(v["calls"] for v in counted.values()),
            "scripts": counted.get("evalsha", {"us": 0})["us"],
        })
for worker, loads in runs.items():
    total = {load: statistics.median(c["total"] for c in cpus) for load, cpus in loads.items()}
    per = {}
    for load, cpus in loads.items():
        for name in cpus[0]:
            if name != "total":
                per.setdefault(name, {})[load] = statistics.median(c[name] for c in cpus)
    added = ", ".join(f"{name} {v['state'] - v['noop']:+.0f}" for name, v in per.items())
    print(f"{worker}: median CPU per job noop {total['noop']:.0f} µs, state {total['state']:.0f} µs: "
          f"the binding adds {total['state'] - total['noop']:.0f} µs ({added})")
    counted = redis.get(worker, {})
    if "noop" in counted and "state" in counted:
        calls = {load: statistics.median(c["calls"] for c in v) for load, v in counted.items()}
        us = {load: statistics.median(c["scripts"] for c in v) for load, v in counted.items()}
        print(f"{'':<{len(worker)}}  Redis's own count (INFO commandstats, medians per job): noop "
              f"{calls['noop']:.2f} calls, scripts {us['noop']:.0f} µs; state {calls['state']:.2f} "
              f"calls, scripts {us['state']:.0f} µs")
PY
