#!/usr/bin/env bash
# Measures trivial-job throughput of one worker for several prefetch values, on this machine's
# RabbitMQ and Redis. Usage: loadtest/prefetch-sweep.sh [JOBS] [PREFETCH...]
# Needs release binaries: cargo build --release -p dtee-worker -p dtee-loadtest
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=${1:-5000}; shift || true
values=("$@"); [ ${#values[@]} -gt 0 ] || values=(1 2 4 8 16 32 64)
ns="sweep-$$"
for prefetch in "${values[@]}"; do
  DTEE_NAMESPACE=$ns DTEE_PREFETCH=$prefetch DTEE_LOG=warn ./target/release/dtee-worker &
  worker=$!
  sleep 1
  printf 'prefetch %3s: ' "$prefetch"
  DTEE_NAMESPACE=$ns ./target/release/dtee-loadtest jobs --jobs "$jobs" --in-flight 256 --json | tail -1
  kill -TERM $worker; wait $worker || true
done
