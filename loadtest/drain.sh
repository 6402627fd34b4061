#!/usr/bin/env bash
# Issue 13's drain comparison, in alternated rounds of one session: N SHA-256-of-1-MiB jobs
# queued while nothing consumes, then timed from the start of consumption, through
#   - dtee: one release worker (DTEE_CONCURRENCY=2, fuel and the epoch deadline on, every result
#     attested), `dtee-loadtest jobs --workload sha256 --drain-worker ...`, hashing in
#     WebAssembly, then through the host's SHA-256 primitive (--host-sha256);
#   - a plain Python task queue on the same broker and Redis (loadtest/python_pool.py: two
#     processes, hashlib, confirms and acks, no sandbox, no attestation);
# and a drain of trivial (noop) jobs through dtee. Prints one line per run.
#
# Usage: loadtest/drain.sh [ROUNDS] [JOBS]   (default 3 rounds of 500 jobs)
# Needs release binaries (cargo build --release -p dtee-worker -p dtee-loadtest) and the Python
# client's environment (deploy/local/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
jobs=${2:-500}
worker="env DTEE_CONCURRENCY=2 DTEE_ATTESTATION=software DTEE_LOG=warn target/release/dtee-worker"
script=$(cat <<'PY'
import json, sys
r = json.loads(sys.stdin.read().strip().splitlines()[-1])
cpu = ", ".join(f"{k} {v:.0f}" for k, v in r.get("cpu_us_per_job", {}).items())
print(f"{r['mode']:<26} {r['count']:>6} {r['per_second']:>9.0f} jobs/s  p50 {r['latency_ms_p50']:>7.1f} ms  {cpu}")
PY
)
line() { python3 -c "$script"; }
namespaces=()
trap 'loadtest/forget.sh "${namespaces[@]}"' EXIT
for round in $(seq 1 "$rounds"); do
  echo "round $round"
  namespaces+=("drain-$$-$round" "drain-host-$$-$round" "drain-noop-$$-$round")
  DTEE_NAMESPACE="drain-$$-$round" ./target/release/dtee-loadtest jobs --workload sha256 \
    --jobs "$jobs" --in-flight 64 --drain-worker "$worker" --json | line
  DTEE_NAMESPACE="drain-host-$$-$round" ./target/release/dtee-loadtest jobs --workload sha256 \
    --host-sha256 --jobs "$jobs" --in-flight 64 --drain-worker "$worker" --json | line
  clients/python/.venv/bin/python loadtest/python_pool.py --jobs "$jobs" --processes 2 --json | line
  DTEE_NAMESPACE="drain-noop-$$-$round" ./target/release/dtee-loadtest jobs \
    --jobs $((jobs * 10)) --in-flight 256 --drain-worker "$worker" --json | line
done
