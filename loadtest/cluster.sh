#!/usr/bin/env bash
# One worker against the local single-node RabbitMQ and Redis (plain TCP) next to one worker
# against deploy/local/cluster.sh's cluster (three RabbitMQ nodes, quorum queues with three
# replicas, a Redis Cluster of three primaries and three replicas, TLS with client
# certificates everywhere), in alternated rounds of the same session. Two workloads: trivial
# jobs (noop) and jobs with one read_write state binding each (increments over 100 counters).
# A third setup, cluster-wait, is the cluster with DTEE_REDIS_WAIT_REPLICAS=1 (a job answered
# only once a replica of every primary holds its writes).
# Prints one line per run: jobs/s, p50 ms and CPU per job. The CPU columns sum every process of
# a kind (all beam.smp, all redis-server), so both setups carry the other's idle nodes.
#
# Usage: loadtest/cluster.sh [ROUNDS]   (default 2; as root: it starts the cluster if needed)
# Needs release binaries: cargo build --release -p dtee-worker -p dtee-loadtest
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-2}
bash deploy/local/cluster.sh up >/dev/null
cluster_env=$(bash deploy/local/cluster.sh env)

printf '%-6s %-13s %-6s %9s %7s  %s\n' round setup load jobs/s "p50 ms" "CPU µs per job"
for round in $(seq 1 "$rounds"); do
  for setup in single cluster cluster-wait; do
    ns="perf-$setup-$$-$round"
    (
      if [ "$setup" != single ]; then eval "$cluster_env"; fi
      if [ "$setup" = cluster-wait ]; then export DTEE_REDIS_WAIT_REPLICAS=1; fi
      export DTEE_NAMESPACE=$ns
      DTEE_CONCURRENCY=2 DTEE_ATTESTATION=software DTEE_LOG=warn DTEE_WORKER_ID="$ns" \
        ./target/release/dtee-worker &
      worker=$!
      # The round's worker stops with its subshell.
      trap 'kill -TERM $worker 2>/dev/null; wait $worker 2>/dev/null' EXIT
      sleep 3
      for load in noop state; do
        if [ "$load" = noop ]; then args=(--jobs 3000 --in-flight 256); else args=(--jobs 2000 --in-flight 128 --state-keys 100); fi
        line=$(./target/release/dtee-loadtest jobs "${args[@]}" --json | tail -1)
        python3 - "$round" "$setup" "$load" "$line" <<'PY'
import json, sys
round_, setup, load, line = sys.argv[1:5]
r = json.loads(line)
cpu = ", ".join(f"{k} {v:.0f}" for k, v in r["cpu_us_per_job"].items())
print(f"{round_:<6} {setup:<13} {load:<6} {r['per_second']:>9.0f} {r['latency_ms_p50']:>7.1f}  {cpu}")
PY
      done
    )
  done
done
