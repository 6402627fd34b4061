#!/usr/bin/env bash
# Runs the Python and Node.js client conformance suites (clients/conformance/README.md) against
# the local RabbitMQ and Redis and a worker of this checkout, in the namespace
# `dtee-conformance`, and removes that namespace's Redis keys afterwards.
#
# Needs: deploy/local/setup.sh run (it installs the clients' dependencies) and
# `cargo build --workspace --bins` (target/debug/dtee-worker and target/debug/dtee).
# Environment: DTEE_AMQP_URL, DTEE_REDIS_URL (defaults: the local guest broker and Redis; node
# lists and redis+cluster:// or rediss+cluster:// URLs as the worker takes them),
# DTEE_TLS_CA_FILE, DTEE_TLS_CERT_FILE, DTEE_TLS_KEY_FILE (for amqps and rediss; the worker and
# both suites use them); CONFORMANCE=python|node to run one suite.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD

export DTEE_NAMESPACE=dtee-conformance
export DTEE_AMQP_URL=${DTEE_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
export DTEE_REDIS_URL=${DTEE_REDIS_URL:-redis://127.0.0.1:6379}
export DTEE_KERNELS=$repo/kernels/wasm
export DTEE_BIN=$repo/target/debug/dtee
suites=${CONFORMANCE:-python node}

for bin in target/debug/dtee-worker "$DTEE_BIN"; do
  [ -x "$bin" ] || { echo "conformance: $bin is missing; run cargo build --workspace --bins" >&2; exit 1; }
done

log=$(mktemp)
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
DTEE_ATTESTATION=software DTEE_LOG=warn DTEE_WORKER_ID="conformance-$$" \
  DTEE_METRICS_ADDR="127.0.0.1:$port" target/debug/dtee-worker >"$log" 2>&1 &
worker=$!
# Deletes the namespace's keys: on one node, or on each seed node of a cluster (-c follows
# MOVED to the keys' primaries).
remove_keys() {
  local tls=() url=$DTEE_REDIS_URL
  [ -z "${DTEE_TLS_CA_FILE:-}" ] || tls+=(--tls --cacert "$DTEE_TLS_CA_FILE")
  [ -z "${DTEE_TLS_CERT_FILE:-}" ] || tls+=(--cert "$DTEE_TLS_CERT_FILE" --key "$DTEE_TLS_KEY_FILE")
  case $url in
    redis+cluster://* | rediss+cluster://*)
      local authority=${url#*://} node
      authority=${authority%%/*}
      for node in $(printf '%s' "${authority##*@}" | tr ',' ' '); do
        redis-cli -c "${tls[@]}" -h "${node%:*}" -p "${node##*:}" --scan --pattern "$DTEE_NAMESPACE:*" \
          | xargs -r -n 1 redis-cli -c "${tls[@]}" -h "${node%:*}" -p "${node##*:}" del >/dev/null || true
      done
      ;;
    *)
      redis-cli "${tls[@]}" -u "$url" --scan --pattern "$DTEE_NAMESPACE:*" \
        | xargs -r -n 500 redis-cli "${tls[@]}" -u "$url" del >/dev/null || true
      ;;
  esac
}
cleanup() {
  kill -TERM "$worker" 2>/dev/null || true
  wait "$worker" 2>/dev/null || true
  remove_keys
  rm -f "$log"
}
trap cleanup EXIT

ready=0
for _ in $(seq 1 300); do
  if curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; then ready=1; break; fi
  kill -0 "$worker" 2>/dev/null || break
  sleep 0.1
done
if [ "$ready" != 1 ]; then
  echo "conformance: the worker did not become ready" >&2
  cat "$log" >&2
  exit 1
fi

status=0
for suite in $suites; do
  case $suite in
    python)
      echo "== conformance: Python (clients/python)"
      PYTHONPATH=clients/python clients/python/.venv/bin/python -m unittest discover \
        -s clients/python/tests -t clients/python -v || status=1
      ;;
    node)
      echo "== conformance: Node.js (clients/node)"
      (cd clients/node && npm test --silent) || status=1
      ;;
    *) echo "conformance: unknown suite $suite" >&2; exit 64 ;;
  esac
done
if [ "$status" != 0 ]; then
  echo "conformance: a suite failed; the worker's log:" >&2
  cat "$log" >&2
fi
exit "$status"
