#!/usr/bin/env bash
# Sets up the machine, builds dtee, starts a pool of two workers, runs the sample jobs end to
# end with the dtee command line, prints their results, and stops the workers.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash deploy/local/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"

echo "== building (release)"
cargo build --release --locked -p dtee-worker -p dtee-submitter
bin=target/release
export DTEE_NAMESPACE=${DTEE_NAMESPACE:-demo}
export DTEE_LOG=${DTEE_LOG:-warn}

workers=()
stop_workers() { for pid in "${workers[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done; wait || true; }
trap stop_workers EXIT
for idx in 1 2; do
  DTEE_WORKER_ID="demo-worker-$idx" "$bin/dtee-worker" &
  workers+=($!)
done
# Wait until the workers have declared the queue.
for _ in $(seq 1 100); do
  rabbitmqctl -q list_queues name 2>/dev/null | grep -qx "$DTEE_NAMESPACE.jobs.wasm" && break
  sleep 0.1
done

work=$(mktemp -d)
summary() { # prints status, error, outputs and resources of a result read from stdin
  local result format=$1
  result=$(cat)
  jq -r '"  status=\(.status)" + (if .error then " error=\(.error.code) (\(.error.message))" else "" end)' <<<"$result"
  jq -r '.outputs[] | "\(.name) \(.size) \(.data)"' <<<"$result" | while read -r name size data; do
    if [ "$format" = f32 ]; then
      shown=$(base64 -d <<<"$data" | od -An -v -t f4 | xargs)
    else
      shown=$(base64 -d <<<"$data" | od -An -v -t x1 | tr -d ' \n')
    fi
    echo "  output $name ($size bytes): $shown"
  done
  jq -r '"  fuel=\(.resources.fuel_consumed // "-") peak_memory=\(.resources.peak_memory_bytes // "-") wall_time_us=\(.resources.wall_time_us // "-") worker=\(.execution.worker_id)"' <<<"$result"
}

echo
echo "== saxpy: out = 2*x + y"
"$bin/dtee" run --kernel kernels/wasm/saxpy.wasm --entry saxpy \
  --input x=f32:1,2,3,4 --input y=f32:0.5,0.5,0.5,0.5 --param a:f32=2 --output out:16 | summary f32

echo
echo "== sha256 of a 1 MiB blob input"
head -c 1048576 /dev/urandom > "$work/data.bin"
"$bin/dtee" run --kernel kernels/wasm/sha256.wasm --entry sha256 \
  --input "data=blob:@$work/data.bin" --output digest:32 | summary hex
echo "  expected:    $(sha256sum "$work/data.bin" | cut -d' ' -f1)"

echo
echo "== matmul: [[1,2],[3,4]] x [[5,6],[7,8]]"
"$bin/dtee" run --kernel kernels/wasm/matmul.wasm --entry matmul \
  --input a=f32:1,2,3,4 --input b=f32:5,6,7,8 \
  --param m:u32=2 --param n:u32=2 --param k:u32=2 --output c:16 | summary f32

echo
echo "== echo (WAT kernel), run twice: the second answer comes from the result cache (the job is not published again)"
"$bin/dtee" run --kernel kernels/wasm/echo.wasm --entry echo --input in=text:hello --output out:16 | summary hex
"$bin/dtee" run --kernel kernels/wasm/echo.wasm --entry echo --input in=text:hello --output out:16 | summary hex

echo
echo "== an infinite loop, stopped by its 200 ms wall-clock limit (exit code 1: the job failed)"
set +e
"$bin/dtee" run --kernel kernels/wasm/spin.wasm --entry spin --timeout-ms 200 --fuel 1000000000000 | summary hex
echo "  dtee exit code: ${PIPESTATUS[0]}"
set -e
rm -rf "$work"
echo
echo "demo done; stopping the workers"
