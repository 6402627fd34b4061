#!/usr/bin/env bash
# Part of `deploy/validate.sh --live`: the least-privilege users of deploy/redis/users.acl
# against Redis in cluster mode. Starts a throwaway one-node Redis Cluster (all 16384 slots)
# with redis.conf and the ACL file, then, as dtee-worker and dtee-submitter: a worker, `dtee
# run` (a job, a state job, `dtee state get`) and the Python and Node.js clients (a job each).
# Cluster clients read the slot map (CLUSTER SLOTS), follow ASK redirections, and redis-py
# reads COMMAND: the ACL must allow these, and nothing here runs as an administrator.
#
# Environment (from validate.sh): BIN (dtee-worker and dtee), TMP (a scratch folder),
# RABBIT_WORKER_URL and RABBIT_SUBMITTER_URL (the dtee vhost as dtee-worker and dtee-submitter).
# Prints ok/FAIL lines and exits with the number of failures.
set -uo pipefail
cd "$(dirname "$0")/.."

failures=0
ok() { printf '   ok: %s\n' "$*"; }
fail() { printf '   FAIL: %s\n' "$*"; failures=$((failures + 1)); }
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
dir=$TMP/cluster
mkdir -p "$dir"
pw_worker=cw-$RANDOM$RANDOM pw_submitter=cs-$RANDOM$RANDOM pw_admin=ca-$RANDOM$RANDOM
port=$(free_port)
# The cluster bus defaults to port + 10000, past 65535 for a high free port: name it.
bus_port=$(free_port)
redis_pid= worker_pid=
cleanup() {
  for pid in $worker_pid $redis_pid; do
    kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  done
}
trap cleanup EXIT

DTEE_REDIS_ACL_TEMPLATE=deploy/redis/users.acl DTEE_REDIS_ACL="$dir/users.acl" \
  DTEE_REDIS_WORKER_PASSWORD=$pw_worker DTEE_REDIS_SUBMITTER_PASSWORD=$pw_submitter \
  DTEE_REDIS_ADMIN_PASSWORD=$pw_admin sh deploy/compose/redis-start.sh --acl-only
redis-server deploy/redis/redis.conf --port "$port" --bind 127.0.0.1 --dir "$dir" \
  --aclfile "$dir/users.acl" --logfile "$dir/redis.log" --daemonize no \
  --cluster-enabled yes --cluster-config-file "$dir/nodes.conf" --cluster-port "$bus_port" \
  </dev/null >/dev/null 2>&1 &
redis_pid=$!
admin() { REDISCLI_AUTH=$pw_admin redis-cli -p "$port" --user dtee-admin "$@" 2>&1; }
# Under load the server can take seconds to start: wait for it, then assign every slot (again
# until it is accepted).
for _ in $(seq 1 300); do
  [ "$(admin PING)" = PONG ] && break
  sleep 0.1
done
for _ in $(seq 1 50); do
  reply=$(admin CLUSTER ADDSLOTSRANGE 0 16383)
  [ "$reply" = OK ] || [[ "$reply" == *busy* ]] && break
  sleep 0.2
done
# (Not `| grep -q` under pipefail: grep's early exit can fail the pipe.)
formed() { [[ "$(admin CLUSTER INFO)" == *cluster_state:ok* ]]; }
for _ in $(seq 1 300); do
  formed && break
  sleep 0.1
done
if formed; then
  ok "a one-node Redis Cluster with redis.conf and users.acl (127.0.0.1:$port)"
else
  fail "the throwaway Redis Cluster did not form (CLUSTER ADDSLOTSRANGE: ${reply:-no answer})"
  admin CLUSTER INFO | head -n 3 | sed 's/^/      /'
  tail -n 5 "$dir/redis.log" | sed 's/^/      /'
  exit "$failures"
fi

metrics_port=$(free_port)
env -i PATH="$PATH" HOME="$TMP" DTEE_AMQP_URL="$RABBIT_WORKER_URL" \
  DTEE_REDIS_URL="redis+cluster://dtee-worker:$pw_worker@127.0.0.1:$port/" \
  DTEE_ATTESTATION=software DTEE_METRICS_ADDR="127.0.0.1:$metrics_port" DTEE_CONCURRENCY=1 \
  DTEE_WORKER_ID="validate-cluster-$$" DTEE_SHUTDOWN_GRACE_SECS=5 \
  "$BIN/dtee-worker" </dev/null >"$dir/worker.log" 2>&1 &
worker_pid=$!
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$metrics_port/readyz" >/dev/null 2>&1 && break
  kill -0 "$worker_pid" 2>/dev/null || break
  sleep 0.2
done
if ! curl -fsS "http://127.0.0.1:$metrics_port/readyz" >/dev/null 2>&1; then
  fail "dtee-worker on Redis Cluster as dtee-worker did not become ready"
  tail -n 5 "$dir/worker.log" | sed 's/^/      /'
  exit "$failures"
fi
ok "dtee-worker is ready on Redis Cluster as dtee-worker"

redis_url="redis+cluster://dtee-submitter:$pw_submitter@127.0.0.1:$port/"
client=(env -i PATH="$PATH" HOME="$TMP" DTEE_AMQP_URL="$RABBIT_SUBMITTER_URL" DTEE_REDIS_URL="$redis_url" "$BIN/dtee")
nonce=validate-cluster-$$-$RANDOM
if "${client[@]}" run --kernel kernels/wasm/increment.wasm --entry increment \
    --state "counter=read_write?:dtee-submitter/validate/$nonce" --nonce "$nonce" --timeout 30 \
    >"$dir/state.json" 2>"$dir/state.err" && grep -q '"status": "succeeded"' "$dir/state.json" \
    && [[ "$("${client[@]}" state get "dtee-submitter/validate/$nonce" 2>&1)" == *'"version": 1'* ]]; then
  ok "dtee run as dtee-submitter on Redis Cluster: a state job commits, and dtee state get reads it"
else
  fail "dtee run and dtee state get as dtee-submitter on Redis Cluster"
  tail -n 5 "$dir/state.err" | sed 's/^/      /'
fi

if DTEE_AMQP_URL="$RABBIT_SUBMITTER_URL" DTEE_REDIS_URL="$redis_url" PYTHONPATH=clients/python \
    timeout 60 clients/python/.venv/bin/python - >"$dir/python.log" 2>&1 <<'EOF'
import os, dtee
with dtee.Client(os.environ["DTEE_AMQP_URL"], os.environ["DTEE_REDIS_URL"], "dtee") as client:
    kernel = client.put_file("kernels/wasm/echo.wasm")
    job = dtee.Job(kernel, "echo").input_bytes("in", b"cluster").output("out", 16).nonce(os.urandom(8).hex())
    assert client.run(job, 30, check=True).output_bytes("out") == b"cluster"
EOF
then
  ok "the Python client as dtee-submitter on Redis Cluster: a job runs"
else
  fail "the Python client as dtee-submitter on Redis Cluster"; tail -n 5 "$dir/python.log" | sed 's/^/      /'
fi

if DTEE_AMQP_URL="$RABBIT_SUBMITTER_URL" DTEE_REDIS_URL="$redis_url" \
    timeout 60 node --input-type=module - >"$dir/node.log" 2>&1 <<'EOF'
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { Client, job } from './clients/node/src/index.js';
const client = await Client.connect({ amqpUrl: process.env.DTEE_AMQP_URL, redisUrl: process.env.DTEE_REDIS_URL, namespace: 'dtee' });
try {
  const kernel = await client.putBlob(readFileSync('kernels/wasm/echo.wasm'));
  const spec = job(kernel, 'echo').inputBytes('in', Buffer.from('cluster')).output('out', 16).nonce(randomBytes(8).toString('hex'));
  const result = await client.run(spec, { timeoutMs: 30000 });
  if (result.status !== 'succeeded') throw new Error(JSON.stringify(result));
} finally {
  await client.close();
}
EOF
then
  ok "the Node.js client as dtee-submitter on Redis Cluster: a job runs"
else
  fail "the Node.js client as dtee-submitter on Redis Cluster"; tail -n 5 "$dir/node.log" | sed 's/^/      /'
fi
exit "$failures"
