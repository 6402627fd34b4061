#!/usr/bin/env bash
# Builds what tests/gpu/device-check.sh needs on a GPU machine that has no Rust toolchain: a
# stripped release dtee-worker with the CUDA driver and without TPM support (so that it needs no
# libtss2 there), in target/device/. Carry target/device/ with the working tree (the kernels are
# committed under kernels/ptx/).
#
# Caveat: the binary links the build machine's glibc (Debian 12: 2.36); a GPU machine with an
# older glibc cannot run it.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --locked -p dtee-worker --no-default-features --features cuda
mkdir -p target/device
cp target/release/dtee-worker target/device/dtee-worker
strip target/device/dtee-worker
ls -la target/device/dtee-worker
