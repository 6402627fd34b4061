#!/usr/bin/env bash
# Prepares a Debian 12 machine (as root) for building, testing and running dtee, idempotently:
# installs the Debian packages it needs, makes sure a Rust toolchain is there, and starts
# RabbitMQ, Redis and a software TPM (swtpm) when they are not already running.
#
# Environment: DTEE_SKIP_APT=1 skips apt-get (for machines set up already).
set -euo pipefail

log() { printf '[setup] %s\n' "$*" >&2; }

PACKAGES=(
  build-essential pkg-config ca-certificates curl git jq openssl
  clang-15 lld-15 wabt                 # WebAssembly kernels (kernels/build.sh)
  rabbitmq-server redis-server         # the broker and the state store
  swtpm swtpm-tools tpm2-tools libtss2-dev  # software TPM for attestation tests
  libamdhip64-dev                      # the HIP runtime the `hip` feature links (no GPU needed)
  python3 python3-venv                 # the Python client (clients/python)
)
# The Node.js client (clients/node) needs node >= 18 and npm: Debian 12's packages, unless a
# node is installed already.
command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || PACKAGES+=(nodejs npm)

if [ "$(id -u)" != 0 ]; then
  echo "setup.sh must run as root (it installs packages and starts services)" >&2
  exit 1
fi

if [ "${DTEE_SKIP_APT:-0}" != 1 ]; then
  missing=()
  for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  log "apt-get update"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    log "all Debian packages present"
  fi
fi

# Rust: the workspace needs 1.95 or newer (see rust-version in Cargo.toml).
if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    log "installing Rust with rustup"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c clippy,rustfmt
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
fi

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # port, seconds, name
  for _ in $(seq 1 "$(( $2 * 10 ))"); do port_open "$1" && return 0; sleep 0.1; done
  echo "$3 did not start listening on 127.0.0.1:$1 within $2 s" >&2
  return 1
}

# RabbitMQ (127.0.0.1:5672, guest/guest).
if port_open 5672; then
  log "rabbitmq already running"
else
  log "starting rabbitmq"
  if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
    systemctl start rabbitmq-server
  else
    # Each quorum queue (one per tenant and routing key) takes file handles: with su's soft
    # limit of 1,024, RabbitMQ stops accepting connections at about a thousand of them.
    # Debian's systemd unit sets LimitNOFILE=65536; without systemd, the environment file
    # (sourced by RabbitMQ's scripts as the rabbitmq user) raises it as far as allowed.
    env_file=/etc/rabbitmq/rabbitmq-env.conf
    if ! grep -q "dtee: file handles" "$env_file" 2>/dev/null; then
      mkdir -p /etc/rabbitmq
      printf '%s\n' "# dtee: file handles for many quorum queues (deploy/local/setup.sh)" \
        'ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true' >>"$env_file"
    fi
    rabbitmq-server -detached
  fi
  wait_port 5672 120 rabbitmq
  rabbitmqctl -q await_startup >/dev/null 2>&1 || true
fi

# Redis (127.0.0.1:6379).
if port_open 6379; then
  log "redis already running"
else
  log "starting redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --dir /var/lib/redis \
    --logfile /var/log/redis/dtee.log --appendonly yes --appendfsync everysec
  wait_port 6379 30 redis
fi

# swtpm: a TPM 2.0 simulator on 127.0.0.1:2321 (commands) and :2322 (control).
SWTPM_PORT=${DTEE_SWTPM_PORT:-2321}
if port_open "$SWTPM_PORT"; then
  log "swtpm already running"
else
  log "starting swtpm on port $SWTPM_PORT"
  state=/var/lib/dtee/swtpm
  mkdir -p "$state"
  swtpm socket --tpm2 --daemon \
    --server "type=tcp,port=$SWTPM_PORT,bindaddr=127.0.0.1" \
    --ctrl "type=tcp,port=$(( SWTPM_PORT + 1 )),bindaddr=127.0.0.1" \
    --tpmstate "dir=$state" --flags not-need-init,startup-clear \
    --log "file=$state/swtpm.log"
  wait_port "$SWTPM_PORT" 30 swtpm
fi

# The client libraries' dependencies, from their lock files: a virtual environment for Python
# (pinned versions and hashes; the tests import the package from its source directory) and
# node_modules for Node.js. Redone only when a lock file changed.
repo=$(cd "$(dirname "$0")/../.." && pwd)
venv="$repo/clients/python/.venv"
lock="$repo/clients/python/requirements.lock"
if [ -f "$lock" ] && ! cmp -s "$lock" "$venv/.installed.lock" 2>/dev/null; then
  log "installing the Python client's dependencies into clients/python/.venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check --require-hashes -r "$lock"
  cp "$lock" "$venv/.installed.lock"
fi
node_lock="$repo/clients/node/package-lock.json"
if [ -f "$node_lock" ] && ! cmp -s "$node_lock" "$repo/clients/node/node_modules/.installed.lock" 2>/dev/null; then
  log "installing the Node.js client's dependencies (npm ci)"
  (cd "$repo/clients/node" && npm ci --silent --no-audit --no-fund)
  cp "$node_lock" "$repo/clients/node/node_modules/.installed.lock"
fi

log "ready: rabbitmq 127.0.0.1:5672, redis 127.0.0.1:6379, swtpm 127.0.0.1:$SWTPM_PORT"
