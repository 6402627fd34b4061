#!/usr/bin/env bash
# Throughput against the number of workers and of kernel slots per worker, on this machine:
# for each (workers, DTEE_CONCURRENCY) pair, starts that many release workers in a scratch
# namespace and runs `dtee-loadtest jobs` (the reply wait path), for two workloads: trivial jobs
# (noop) and SHA-256 of 1 MiB per job. Prints one line per run: jobs/s, p50 ms, and CPU per job.
#
# Usage: loadtest/scale.sh [WORKERS...] -- [SLOTS...]   (default: 1 2 4 -- 1 2 4)
# Needs release binaries: cargo build --release -p dtee-worker -p dtee-loadtest
set -euo pipefail
cd "$(dirname "$0")/.."
workers=(); slots=(); target=workers
for arg in "$@"; do
  if [ "$arg" = -- ]; then target=slots; continue; fi
  if [ "$target" = workers ]; then workers+=("$arg"); else slots+=("$arg"); fi
done
[ ${#workers[@]} -gt 0 ] || workers=(1 2 4)
[ ${#slots[@]} -gt 0 ] || slots=(1 2 4)
ns="scale-$$"
pids=()
stop() { for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done; for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done; pids=(); }
trap stop EXIT
printf '%-8s %-6s %-7s %10s %8s %s\n' workers slots load jobs/s "p50 ms" "CPU µs per job"
for w in "${workers[@]}"; do
  for s in "${slots[@]}"; do
    for i in $(seq 1 "$w"); do
      DTEE_NAMESPACE=$ns DTEE_CONCURRENCY=$s DTEE_ATTESTATION=software DTEE_LOG=warn \
        DTEE_WORKER_ID="scale-$w-$s-$i" ./target/release/dtee-worker &
      pids+=($!)
    done
    sleep 2
    for load in noop sha256; do
      if [ "$load" = noop ]; then args=(--jobs 3000 --in-flight 256); else args=(--jobs 200 --in-flight 32 --workload sha256); fi
      line=$(DTEE_NAMESPACE=$ns ./target/release/dtee-loadtest jobs "${args[@]}" --json | tail -1)
      python3 - "$w" "$s" "$load" "$line" <<'PY'
import json, sys
w, s, load, line = sys.argv[1:5]
r = json.loads(line)
cpu = ", ".join(f"{k} {v:.0f}" for k, v in r["cpu_us_per_job"].items())
print(f"{w:<8} {s:<6} {load:<7} {r['per_second']:>10.0f} {r['latency_ms_p50']:>8.1f} {cpu}")
PY
    done
    stop
  done
done
