#!/usr/bin/env bash
# The CUDA and HIP drivers on a machine without a GPU (every CI machine): a dtee-worker built with
# `--features cuda,hip` must fail cleanly, with the reason, wherever it meets the missing device:
#   - a device host says so in its hello (and exits 0), for both drivers;
#   - a worker told to serve `cuda` or `hip.gfx90a` refuses to start, naming the target and why;
#   - `dtee-worker doctor --json` exits 0 and reports no GPU for either driver.
# On a machine that has such a GPU the checks of that driver are skipped (tests/gpu/device-check.sh
# is the one for real GPUs).
#
# Usage: tests/gpu/no-device.sh [path/to/dtee-worker]   (default: target/debug/dtee-worker)
set -euo pipefail
worker=${1:-target/debug/dtee-worker}
failures=0
fail() { echo "   FAIL: $*"; failures=$((failures + 1)); }
ok() { echo "   ok: $*"; }

hello() { # driver: the device host's hello frame, without its 4-byte length
  "$worker" __dtee-device-host --driver "$1" --device 0 </dev/null | tail -c +5
}

for driver in cuda hip; do
  answer=$(hello "$driver" || true)
  case "$answer" in
    *'"Ok"'*) echo "   skip: a $driver device is present here: $answer"; continue ;;
    *'"Err"'*'built without'*) fail "$worker was built without the $driver driver (build with --features cuda,hip)"; continue ;;
    *'"Err"'*) ok "$driver device host, no device: $answer" ;;
    *) fail "$driver device host answered: '$answer'" ;;
  esac
  case "$driver" in cuda) target=cuda ;; hip) target=hip.gfx90a ;; esac
  if output=$(DTEE_TARGETS="wasm,$target" DTEE_AMQP_URL=amqp://127.0.0.1:1/%2f timeout 60 "$worker" 2>&1); then
    fail "a worker serving $target started without a device"
  elif grep -q "DTEE_TARGETS names $target, but this worker has no device for it" <<<"$output"; then
    ok "a worker told to serve $target refuses to start: $(tail -n 1 <<<"$output")"
  else
    fail "a worker serving $target failed otherwise: $(tail -n 3 <<<"$output")"
  fi
done

if json=$("$worker" doctor --json); then
  if python3 -c 'import json,sys; d=json.load(sys.stdin); g=d["gpus"]; assert all(not x["devices"] for x in g), g; assert {x["driver"] for x in g} == {"cuda","hip"}, g; assert d["wasm"]["available"]; assert d["wasm"]["profiles"] == ["deterministic", "fast"], d["wasm"]' <<<"$json"; then
    ok "doctor --json exits 0 and reports no GPU for cuda and hip"
  else
    fail "doctor --json: $json"
  fi
else
  fail "doctor --json exited non-zero"
fi

[ "$failures" = 0 ] && echo "no-device.sh: all checks passed" || { echo "no-device.sh: $failures failed"; exit 1; }
