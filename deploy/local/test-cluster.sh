#!/usr/bin/env bash
# Runs the cluster tests: starts deploy/local/cluster.sh's cluster (three RabbitMQ nodes, a Redis
# Cluster of three primaries and three replicas, TLS with client certificates everywhere), runs
# the end-to-end tests of jobs, state, attestation, cancellation, dead letters, result routing,
# commit atomicity and the commit's cached result against it, the Python and Node.js client conformance suites, then the failover test (a RabbitMQ node and a Redis primary
# stopped under load), and stops the cluster. Run after `cargo build --workspace --bins`.
#
# DTEE_KEEP_CLUSTER=1 leaves the cluster running afterwards.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$HOME/.cargo/bin:$PATH"

bash deploy/local/cluster.sh up >/dev/null
[ "${DTEE_KEEP_CLUSTER:-0}" = 1 ] || trap 'bash deploy/local/cluster.sh down' EXIT
eval "$(bash deploy/local/cluster.sh env)"

cargo test -p dtee-tests --locked --test e2e -- \
  jobs:: state:: attestation:: dead_letter result_routing:: commit_atomicity:: commit_cache:: secret_policy:: \
  hostile::a_cancelled_job_is_answered_cancelled_without_running
# The Python and Node.js clients through the same cluster and TLS settings.
bash clients/conformance/run.sh
cargo test -p dtee-tests --locked --test cluster -- --ignored --nocapture
