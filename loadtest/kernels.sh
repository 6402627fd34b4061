#!/usr/bin/env bash
# The sample C kernels in the wasm backend against the same C built natively, in one run.
#
# Builds kernels/src/{sha256,saxpy,matmul}.c as x86-64 code with clang-15 -O2 -ffp-contract=off
# (the wasm build's flags, without the wasm target) against a native dtee_kernel.h (the wasm
# header's helpers unchanged; host functions over plain memory in loadtest/native/harness.c),
# and runs each RUNS times on the same inputs the wasm job gets. Then runs the committed
# kernels/wasm/*.wasm RUNS times through `dtee-worker exec --repeat` (the worker's own backend:
# instantiation, the copies in and out, fuel metering and the epoch deadline all on, as for a
# job). Prints the medians, their ratio, and checks that both produced the same output bytes.
# Each wasm build runs in each wasm profile of PROFILES (default "deterministic fast": fuel
# metering and NaN canonicalisation on, or neither; schemas/PROTOCOL.md §3).
#
# Usage: loadtest/kernels.sh [RUNS] [path/to/dtee-worker]   (defaults: 20, target/release)
# NATIVE_FLAGS replaces the native build's -O2 (e.g. "-O2 -fno-vectorize -fno-slp-vectorize").
# WASM_DIRS: the folders of .wasm kernels to run, space-separated (default kernels/wasm); give
# two to compare builds in the same run. ROUNDS (3): alternated rounds of native and wasm runs.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-20}
worker=${2:-target/release/dtee-worker}
[ -x "$worker" ] || { echo "kernels.sh: no $worker (cargo build --release -p dtee-worker)" >&2; exit 2; }
read -r -a dirs <<<"${WASM_DIRS:-kernels/wasm}"
read -r -a profiles <<<"${PROFILES:-deterministic fast}"
# The wasm variants, build-major: the same order as the job folders made below.
labels=()
for dir in "${dirs[@]}"; do
  for profile in "${profiles[@]}"; do labels+=("$(basename "$dir")/$profile"); done
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# The native header: prologue, the wasm header's helpers, epilogue.
python3 - "$tmp/dtee_kernel.h" <<'PY'
import sys
src = open("schemas/include/dtee_kernel.h").read()
start = src.index("/* dtee_strlen")
end = src.index("/* ---------------------------------------------------------------------------------------------\n * Memory")
open(sys.argv[1], "w").write(open("loadtest/native/prologue.h").read() + src[start:end]
                             + open("loadtest/native/epilogue.h").read())
PY

# The wasm jobs' inputs, identical to the harness's.
mkdir -p "$tmp/blobs"
PROFILES="${profiles[*]}" python3 - "$tmp" "${dirs[@]}" <<'PY'
import base64, hashlib, json, os, struct, sys
tmp = sys.argv[1]
profiles = os.environ["PROFILES"].split()
def blob(data):
    digest = hashlib.sha256(data).hexdigest()
    open(f"{tmp}/blobs/{digest}", "wb").write(data)
    return "sha256:" + digest
def floats(n, mod, div):
    import array
    return array.array("f", [float(i % mod) / div for i in range(n)]).tobytes()
def job(name, buffers, params):
  variants = [(f, p) for f in sys.argv[2:] for p in profiles]
  for index, (folder, profile) in enumerate(variants):
    kernel = open(f"{folder}/{name}.wasm", "rb").read()
    spec = {"schema": "dtee.job/v1",
            "kernel": {"digest": blob(kernel), "format": "wasm", "entry": name, "target": "wasm",
                       "profile": profile},
            "buffers": buffers, "params": params,
            "limits": {"timeout_ms": 60000, "memory_bytes": 256 << 20, "output_bytes": 8 << 20}}
    os.makedirs(f"{tmp}/{index}", exist_ok=True)
    json.dump(spec, open(f"{tmp}/{index}/{name}.json", "w"))
def inp(name, data): return {"kind": "input", "name": name, "blob": blob(data)}
def out(name, size): return {"kind": "output", "name": name, "size": size}
n = 1 << 20
job("sha256", [inp("data", bytes((31 * i + 7) % 256 for i in range(n))), out("digest", 32)], [])
job("saxpy", [inp("x", floats(n, 1000, 7.0)), inp("y", floats(n, 777, 3.0)), out("out", 4 * n)],
    [{"name": "a", "type": "f32", "value": 2.5}])
job("matmul", [inp("a", floats(256 * 256, 100, 10.0)), inp("b", floats(256 * 256, 37, 5.0)),
               out("c", 4 * 256 * 256)],
    [{"name": k, "type": "u32", "value": 256} for k in ("m", "n", "k")])
PY

# Each round runs the native build RUNS times and then every wasm build RUNS times, so that a
# noisy spell on this shared machine hits both sides; the ratio is the median of the rounds'.
rounds=${ROUNDS:-3}
median() { python3 -c 'import statistics,sys; print(round(statistics.median(float(x) for x in sys.argv[1:]), 2))' "$@"; }
header="kernel     native µs"
for label in "${labels[@]}"; do header+="  $label µs, ratio"; done
echo "$header  (medians of $rounds rounds of $runs runs)"
for kernel in sha256 saxpy matmul; do
  # shellcheck disable=SC2086 # NATIVE_FLAGS is a list of flags
  clang-15 ${NATIVE_FLAGS:--O2} -ffp-contract=off -std=c11 -w -I "$tmp" -DENTRY="$kernel" -DKERNEL_NAME="\"$kernel\"" \
    "kernels/src/$kernel.c" loadtest/native/harness.c -o "$tmp/$kernel"
  natives=()
  declare -A times=() ratios=()
  for _ in $(seq 1 "$rounds"); do
    read -r native_us native_head < <("$tmp/$kernel" "$runs")
    natives+=("$native_us")
    for index in "${!labels[@]}"; do
      job="$tmp/$index/$kernel.json"
      wasm_us=$(DTEE_ATTESTATION=software DTEE_MAX_MEMORY_BYTES=$((1 << 30)) "$worker" exec "$job" \
          --blobs "$tmp/blobs" --repeat "$runs" 2>&1 >"$tmp/$kernel.result" | sed -n 's/.*median \([0-9]*\) us.*/\1/p')
      wasm_head=$(python3 -c 'import base64,json,sys; r=json.load(open(sys.argv[1])); print(base64.b64decode(r["outputs"][-1]["data"])[:8].hex())' "$tmp/$kernel.result")
      if [ "$native_head" != "$wasm_head" ]; then
        echo "kernels.sh: $kernel, ${labels[$index]}, differs from native ($wasm_head / $native_head)" >&2
        exit 1
      fi
      times[$index]+=" $wasm_us"
      ratios[$index]+=" $(python3 -c "print($wasm_us / $native_us)")"
    done
  done
  line=$(printf '%-8s %12s' "$kernel" "$(median "${natives[@]}")")
  for index in "${!labels[@]}"; do
    # shellcheck disable=SC2086 # the lists are space-separated numbers
    line+=$(printf '  %12s %6s' "$(median ${times[$index]})" "$(median ${ratios[$index]})")
  done
  echo "$line"
  unset times ratios
done
