#!/usr/bin/env bash
# Sets up the machine (deploy/local/setup.sh) and runs every check CI runs: kernel
# reproducibility, formatting, clippy, and the full test suite against the real RabbitMQ,
# Redis and swtpm. Exits non-zero when anything fails.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash deploy/local/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"

echo "== kernels: committed .wasm, .ptx and .hsaco files match their sources"
bash kernels/build.sh --check

echo "== cargo fmt --check"
cargo fmt --all --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== cargo build (the tests run the dtee and dtee-worker binaries)"
cargo build --workspace --bins --locked

echo "== deploy: operator files (definitions import, Redis ACL, promtool, compose, systemd, live least-privilege run)"
bash deploy/validate.sh --live

echo "== cargo test"
cargo test --workspace --locked

echo "== cluster and TLS: a 3-node RabbitMQ cluster and a Redis Cluster (3+3) with TLS and client certificates (deploy/local/cluster.sh)"
bash deploy/local/test-cluster.sh

echo "== client libraries: the Python and Node.js conformance suites (clients/conformance)"
bash clients/conformance/run.sh

echo "== GPU drivers: the cuda and hip builds pass clippy and fail cleanly without a GPU"
export HIP_PATH=/usr
cargo clippy -p dtee-worker --all-targets --locked --features cuda,hip -- -D warnings
cargo build -p dtee-worker --locked --features cuda,hip
bash tests/gpu/no-device.sh target/debug/dtee-worker

echo "== test hooks: a worker built without the test-hooks feature refuses DTEE_TEST_HOOK"
# The workspace build above enables the feature (the test crate needs it); this builds the worker
# alone, as a release build is made, and checks that no hook can be set.
cargo test -p dtee-worker --locked --lib config::tests::test_hooks_exist_only_with_the_feature
