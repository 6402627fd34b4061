#!/usr/bin/env bash
# Builds the example kernels: kernels/src/<name>.c and kernels/src/<name>.wat into
# kernels/wasm/<name>.wasm, and the GPU kernels kernels/gpu/<name>.cu (one source for both GPU
# vendors) into kernels/ptx/<name>.ptx (NVIDIA, sm_80 PTX, which newer GPUs JIT) and
# kernels/hsaco/<name>.<gfx arch>.hsaco (AMD code objects for each of GPU_ARCHS). The output is
# reproducible: the same tools give the same bytes.
#
# Usage:
#   kernels/build.sh           build every kernel into kernels/wasm/, kernels/ptx/, kernels/hsaco/
#   kernels/build.sh --check   build into a temporary folder and fail if any built kernel
#                              differs, is missing, or has no source
#
# Tools (Debian packages clang-15, lld-15, wabt): clang-15, wasm-ld-15, wat2wasm. Override with
# CLANG=..., WASM_LD=..., WAT2WASM=... The committed kernels were built with the versions listed
# in kernels/README.md; other versions may produce different (still working) bytes, which
# --check reports as differences.
set -euo pipefail

usage() {
    echo "usage: $0 [--check]" >&2
    exit 64
}

check=false
case "$#:${1:-}" in
    0:) ;;
    1:--check) check=true ;;
    *) usage ;;
esac

kernels_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_dir="$(cd "$kernels_dir/.." && pwd)"
src_dir="$kernels_dir/src"
wasm_dir="$kernels_dir/wasm"
gpu_src_dir="$kernels_dir/gpu"
ptx_dir="$kernels_dir/ptx"
hsaco_dir="$kernels_dir/hsaco"
# AMD architectures a code object is built for (Debian's clang-15 has no gfx942).
GPU_ARCHS=(gfx90a gfx1100)
include_dir="$repo_dir/schemas/include"

find_tool() {
    # The first of the candidates that exists, as a command or a path.
    local candidate
    for candidate in "$@"; do
        if command -v "$candidate" >/dev/null 2>&1; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

CLANG="${CLANG:-$(find_tool clang-15 || true)}"
WASM_LD="${WASM_LD:-$(find_tool wasm-ld-15 /usr/lib/llvm-15/bin/wasm-ld wasm-ld || true)}"
WAT2WASM="${WAT2WASM:-$(find_tool wat2wasm || true)}"
[[ -n "$CLANG" ]] || { echo "build.sh: clang-15 not found (apt-get install clang-15)" >&2; exit 69; }
[[ -n "$WASM_LD" ]] || { echo "build.sh: wasm-ld-15 not found (apt-get install lld-15)" >&2; exit 69; }
[[ -n "$WAT2WASM" ]] || { echo "build.sh: wat2wasm not found (apt-get install wabt)" >&2; exit 69; }

# C kernels: freestanding wasm32, no libc and none of the build machine's headers (only clang's
# own stddef.h, stdint.h, ...), explicit exports only (DTEE_EXPORT), the stack first in
# memory so that overflowing it traps instead of overwriting data, no debug info. The name
# section is kept so that traps name the function. -ffp-contract=off: no fused multiply-add, so
# float results match a plain reference bit for bit. -msimd128: fixed-width SIMD, which clang's
# auto-vectoriser uses and Wasmtime compiles to SSE/AVX (deterministic; NaN bits are canonicalised
# by the engine): measured with loadtest/kernels.sh, saxpy 3.5x -> 1.7x and matmul 11.5x -> 2.8x
# native time.
CFLAGS=(
    --target=wasm32 -std=c11 -O2 -msimd128 -nostdlib -nostdlibinc -ffreestanding -ffp-contract=off
    -Wall -Wextra -Werror
    -I "$include_dir"
)
# GPU kernels: device code only, no CUDA SDK or ROCm headers or libraries (kernels/gpu/dtee_gpu.h
# defines what the kernels use), no fused multiply-add (results match a plain f32 reference).
GPU_FLAGS=(--cuda-device-only -O3 -ffp-contract=off -Wall -Wextra -Werror)
CUDA_FLAGS=(-x cuda --cuda-gpu-arch=sm_80 -nocudainc -nocudalib -S "${GPU_FLAGS[@]}")
HIP_FLAGS=(-x hip -nogpuinc -nogpulib --no-gpu-bundle-output "${GPU_FLAGS[@]}")
LDFLAGS=(
    "-fuse-ld=$WASM_LD"
    -Wl,--no-entry -Wl,--stack-first -Wl,-z,stack-size=65536
)

# Relative paths keep the build independent of where the repository is checked out (no path
# reaches the output without -g, but this keeps it that way).
cd "$src_dir"

out_dir="$wasm_dir"
tmp_dir=""
cleanup() {
    if [[ -n "$tmp_dir" ]]; then
        rm -rf -- "$tmp_dir"
    fi
}
trap cleanup EXIT
if $check; then
    tmp_dir="$(mktemp -d)"
    out_dir="$tmp_dir"
fi
mkdir -p "$out_dir"

export LC_ALL=C SOURCE_DATE_EPOCH=0
shopt -s nullglob
names=()
for source in *.c *.wat; do
    name="${source%.*}"
    for seen in "${names[@]}"; do
        if [[ "$seen" == "$name" ]]; then
            echo "build.sh: two sources for kernel $name" >&2
            exit 65
        fi
    done
    names+=("$name")
    case "$source" in
        *.c) "$CLANG" "${CFLAGS[@]}" "${LDFLAGS[@]}" -o "$out_dir/$name.wasm" "$source" ;;
        *.wat) "$WAT2WASM" -o "$out_dir/$name.wasm" "$source" ;;
    esac
    chmod 644 "$out_dir/$name.wasm" # the linker marks its output executable; keep one mode
done

# GPU kernels, from kernels/gpu/ (relative paths again).
cd "$gpu_src_dir"
gpu_out="$out_dir"
if ! $check; then
    gpu_out="$kernels_dir"
fi
mkdir -p "$gpu_out/ptx" "$gpu_out/hsaco"
gpu_names=()
for source in *.cu; do
    name="${source%.cu}"
    gpu_names+=("$name")
    "$CLANG" "${CUDA_FLAGS[@]}" -o "$gpu_out/ptx/$name.ptx" "$source"
    for arch in "${GPU_ARCHS[@]}"; do
        "$CLANG" "${HIP_FLAGS[@]}" --offload-arch="$arch" -o "$gpu_out/hsaco/$name.$arch.hsaco" "$source"
        chmod 644 "$gpu_out/hsaco/$name.$arch.hsaco"
    done
done

if ! $check; then
    (cd "$out_dir" && sha256sum -- *.wasm)
    (cd "$kernels_dir" && sha256sum -- ptx/*.ptx hsaco/*.hsaco)
    exit 0
fi

status=0
# Compares the fresh build in $1 with the committed folder $2 (files ending in $3).
compare() { # built committed suffix
    local built=$1 committed=$2 suffix=$3 file
    for file in "$built"/*"$suffix"; do
        file="$(basename "$file")"
        if [[ ! -f "$committed/$file" ]]; then
            echo "build.sh --check: kernels/$(basename "$committed")/$file is missing" >&2
            status=1
        elif ! cmp -s "$built/$file" "$committed/$file"; then
            echo "build.sh --check: kernels/$(basename "$committed")/$file differs from a fresh build of its source" >&2
            status=1
        fi
    done
    for file in "$committed"/*"$suffix"; do
        file="$(basename "$file")"
        if [[ ! -f "$built/$file" ]]; then
            echo "build.sh --check: kernels/$(basename "$committed")/$file has no source" >&2
            status=1
        fi
    done
}
mkdir -p "$out_dir/wasm"
mv "$out_dir"/*.wasm "$out_dir/wasm/"
compare "$out_dir/wasm" "$wasm_dir" .wasm
compare "$out_dir/ptx" "$ptx_dir" .ptx
compare "$out_dir/hsaco" "$hsaco_dir" .hsaco
if [[ $status -ne 0 ]]; then
    echo "build.sh --check: run kernels/build.sh and commit kernels/wasm/, kernels/ptx/ and kernels/hsaco/ (tools used: $("$CLANG" --version | head -n 1); wat2wasm $("$WAT2WASM" --version))" >&2
    exit 1
fi
echo "build.sh --check: ${#names[@]} wasm kernels and ${#gpu_names[@]} GPU kernels (PTX, and code objects for ${GPU_ARCHS[*]}) match their sources"
