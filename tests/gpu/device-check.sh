#!/usr/bin/env bash
# The GPU check for a real NVIDIA machine (CUDA driver, Python with numpy and PyTorch; no Rust,
# RabbitMQ or Redis needed). Runs GPU jobs through `dtee-worker exec` (the worker's own backend,
# device host, limits and attestation; no broker) and prints what it measured:
#
#   - saxpy, vadd, matmul, reduce and sha256 from kernels/ptx/, outputs checked against CPU
#     references (numpy, hashlib);
#   - spin with a 500 ms limit: answered execution_timeout within 2 s, and the next job
#     succeeds on a fresh device host;
#   - oob (an illegal address): a clear failure (kernel_trapped), and the next job succeeds;
#   - a job over its device-memory limit: refused before anything is allocated;
#   - per-job overhead of a trivial kernel through the device host, in one worker process
#     (median of 1,000 runs), and the tiled matmul at 4096³ f32 next to torch.matmul on the same
#     GPU (ratio of kernel times).
#
# Usage: tests/gpu/device-check.sh [path/to/dtee-worker]   (default: target/device/dtee-worker,
# made by tests/gpu/build-for-device.sh on a development machine). Finishes in well under 5 min.
set -euo pipefail
# A worker path relative to where the script was started, resolved before changing directory.
worker=${1:-}
if [ -n "$worker" ]; then worker=$(realpath "$worker"); fi
cd "$(dirname "$0")/../.."
worker=${worker:-target/device/dtee-worker}
[ -x "$worker" ] || { echo "device-check: no $worker (run tests/gpu/build-for-device.sh first)" >&2; exit 2; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
exec python3 tests/gpu/device_check.py "$worker"
