#!/usr/bin/env bash
# A production-shaped test environment on one machine, with TLS everywhere:
#
#   - a RabbitMQ cluster of three nodes, dtee-c1@localhost .. dtee-c3@localhost, each with its
#     own data directory, AMQPS on 127.0.0.1:5681..5683 (no plain AMQP listener) and Erlang
#     distribution on 25681..25683;
#   - a Redis Cluster of three primaries and three replicas, TLS only, on 127.0.0.1:7001..7006
#     (replication and the cluster bus over TLS too);
#   - its own CA, a server certificate for localhost / 127.0.0.1, and a client certificate:
#     both RabbitMQ and Redis require clients to present one.
#
# Usage (as root, after deploy/local/setup.sh):
#   deploy/local/cluster.sh up       start everything (idempotent), then print the settings
#   deploy/local/cluster.sh env      print the settings (export lines) for workers, dtee and tests
#   deploy/local/cluster.sh down     stop everything and delete its data
#   deploy/local/cluster.sh stop-rabbit N | start-rabbit N     stop or start RabbitMQ node N
#   deploy/local/cluster.sh stop-redis PORT | kill-redis PORT | start-redis PORT
#                                    stop (SHUTDOWN), crash (SIGKILL) or start a Redis node
#
# Everything lives under DTEE_CLUSTER_DIR (default /var/tmp/dtee-cluster). The system's own
# RabbitMQ (5672) and Redis (6379) are left alone.
set -euo pipefail

DIR=${DTEE_CLUSTER_DIR:-/var/tmp/dtee-cluster}
REPO=$(cd "$(dirname "$0")/../.." && pwd)
RABBIT_NODES=(1 2 3)
REDIS_PORTS=(7001 7002 7003 7004 7005 7006)
log() { printf '[cluster] %s\n' "$*" >&2; }

[ "$(id -u)" = 0 ] || { echo "cluster.sh must run as root" >&2; exit 1; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

rabbit_node() { echo "dtee-c$1@localhost"; }
rabbit_port() { echo $((5680 + $1)); }
# rabbitmqctl through Debian's wrapper, as the rabbitmq user (whose Erlang cookie the nodes share).
rmqctl() { rabbitmqctl -q "$@"; }

certs() {
  local tls=$DIR/tls
  [ -f "$tls/client.key" ] && return 0
  log "making a CA, a server certificate (localhost, 127.0.0.1) and a client certificate in $tls"
  bash "$REPO/deploy/tls/make-certs.sh" "$tls" DNS:localhost,IP:127.0.0.1 30
  # RabbitMQ runs as the rabbitmq user and must read the server's key.
  chown -R rabbitmq: "$tls"
  chmod 0750 "$tls"
}

rabbit_env() { # node number: the environment of one node
  local n=$1 base=$DIR/rabbit$1
  echo "RABBITMQ_NODENAME=$(rabbit_node "$n") RABBITMQ_DIST_PORT=$((25680 + n))" \
    "RABBITMQ_CONFIG_FILE=$base/rabbitmq.conf RABBITMQ_MNESIA_BASE=$base/mnesia" \
    "RABBITMQ_LOG_BASE=$base/log RABBITMQ_ENABLED_PLUGINS_FILE=$base/enabled_plugins" \
    "RABBITMQ_PID_FILE=$base/pid RABBITMQ_ADVANCED_CONFIG_FILE=$base/advanced.config"
}

start_rabbit() {
  local n=$1 base=$DIR/rabbit$1 tls=$DIR/tls
  if rmqctl -n "$(rabbit_node "$n")" ping >/dev/null 2>&1; then return 0; fi
  mkdir -p "$base/mnesia" "$base/log"
  cat >"$base/rabbitmq.conf" <<EOF
listeners.tcp = none
listeners.ssl.default = $(rabbit_port "$n")
ssl_options.cacertfile = $tls/ca.pem
ssl_options.certfile = $tls/server.pem
ssl_options.keyfile = $tls/server.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = true
EOF
  echo '[].' >"$base/enabled_plugins"
  # Three replicas per quorum queue, as in every deployment of deploy/.
  cp "$REPO/deploy/rabbitmq/advanced.config" "$base/advanced.config"
  chown -R rabbitmq: "$base"
  log "starting RabbitMQ node $(rabbit_node "$n") (amqps 127.0.0.1:$(rabbit_port "$n"))"
  # shellcheck disable=SC2046
  setsid su rabbitmq -s /bin/sh -c "cd /var/lib/rabbitmq && env HOME=/var/lib/rabbitmq $(rabbit_env "$n") /usr/lib/rabbitmq/bin/rabbitmq-server" \
    >"$base/log/console.log" 2>&1 </dev/null &
  for _ in $(seq 1 240); do
    rmqctl -n "$(rabbit_node "$n")" await_startup --timeout 60 >/dev/null 2>&1 && return 0
    if grep -q "Kernel pid terminated" "$base/log/console.log" 2>/dev/null; then break; fi
    sleep 0.5
  done
  echo "RabbitMQ node $(rabbit_node "$n") did not start; see $base/log/" >&2
  return 1
}

stop_rabbit() {
  local node
  node=$(rabbit_node "$1")
  rmqctl -n "$node" ping >/dev/null 2>&1 || return 0
  log "stopping RabbitMQ node $node"
  rmqctl -n "$node" stop >/dev/null 2>&1 || true
}

cluster_rabbit() {
  for n in "${RABBIT_NODES[@]}"; do start_rabbit "$n"; done
  for n in 2 3; do
    local node
    node=$(rabbit_node "$n")
    if ! rmqctl -n "$node" cluster_status --formatter json 2>/dev/null | grep -q "$(rabbit_node 1)"; then
      log "joining $node to $(rabbit_node 1)"
      rmqctl -n "$node" stop_app
      rmqctl -n "$node" join_cluster "$(rabbit_node 1)"
      rmqctl -n "$node" start_app
    fi
  done
}

redis_tls() {
  echo "--tls --cacert $DIR/tls/ca.pem --cert $DIR/tls/client.pem --key $DIR/tls/client.key"
}

start_redis() {
  local port=$1 base=$DIR/redis$1 tls=$DIR/tls
  # shellcheck disable=SC2046
  if redis-cli -p "$port" $(redis_tls) ping >/dev/null 2>&1; then return 0; fi
  mkdir -p "$base"
  cat >"$base/redis.conf" <<EOF
bind 127.0.0.1
port 0
tls-port $port
tls-cert-file $tls/server.pem
tls-key-file $tls/server.key
tls-ca-cert-file $tls/ca.pem
tls-auth-clients yes
tls-replication yes
tls-cluster yes
cluster-enabled yes
cluster-config-file $base/nodes.conf
cluster-node-timeout 2000
appendonly yes
appendfsync everysec
dir $base
daemonize yes
pidfile $base/redis.pid
logfile $base/redis.log
EOF
  log "starting Redis node 127.0.0.1:$port"
  redis-server "$base/redis.conf"
  for _ in $(seq 1 100); do
    # shellcheck disable=SC2046
    redis-cli -p "$port" $(redis_tls) ping >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "Redis on $port did not start; see $base/redis.log" >&2
  return 1
}

kill_redis() { # a crash: SIGKILL, no shutdown, nothing flushed
  local pid
  pid=$(cat "$DIR/redis$1/redis.pid" 2>/dev/null) || return 0
  log "killing Redis node 127.0.0.1:$1 (pid $pid)"
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$DIR/redis$1/redis.pid"
}

stop_redis() {
  local port=$1
  # shellcheck disable=SC2046
  redis-cli -p "$port" $(redis_tls) shutdown nosave >/dev/null 2>&1 || true
}

cluster_redis() {
  for port in "${REDIS_PORTS[@]}"; do start_redis "$port"; done
  # shellcheck disable=SC2046
  if ! redis-cli -p 7001 $(redis_tls) cluster info 2>/dev/null | grep -q 'cluster_state:ok'; then
    log "creating the Redis Cluster (3 primaries, 3 replicas)"
    local nodes=()
    for port in "${REDIS_PORTS[@]}"; do nodes+=("127.0.0.1:$port"); done
    # shellcheck disable=SC2046
    redis-cli $(redis_tls) --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >/dev/null
    for _ in $(seq 1 100); do
      # shellcheck disable=SC2046
      redis-cli -p 7001 $(redis_tls) cluster info | grep -q 'cluster_state:ok' && return 0
      sleep 0.2
    done
    echo "the Redis Cluster did not become ready" >&2
    return 1
  fi
}

print_env() {
  local amqp=() port
  for n in "${RABBIT_NODES[@]}"; do amqp+=("amqps://guest:guest@127.0.0.1:$(rabbit_port "$n")/%2f"); done
  local joined
  joined=$(IFS=,; echo "${amqp[*]}")
  cat <<EOF
export DTEE_AMQP_URL='$joined'
export DTEE_REDIS_URL='rediss+cluster://127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003'
export DTEE_TLS_CA_FILE='$DIR/tls/ca.pem'
export DTEE_TLS_CERT_FILE='$DIR/tls/client.pem'
export DTEE_TLS_KEY_FILE='$DIR/tls/client.key'
export DTEE_TEST_AMQP_URL="\$DTEE_AMQP_URL"
export DTEE_TEST_REDIS_URL="\$DTEE_REDIS_URL"
export DTEE_TEST_RABBITMQ_NODE='$(rabbit_node 1)'
EOF
}

case "${1:-}" in
  up)
    command -v openssl >/dev/null || { echo "openssl is missing: run deploy/local/setup.sh" >&2; exit 1; }
    certs
    cluster_rabbit
    cluster_redis
    log "ready: RabbitMQ amqps 127.0.0.1:5681-5683, Redis Cluster tls 127.0.0.1:7001-7006"
    print_env
    ;;
  env) print_env ;;
  down)
    for n in "${RABBIT_NODES[@]}"; do stop_rabbit "$n"; done
    if [ -d "$DIR/tls" ]; then for port in "${REDIS_PORTS[@]}"; do stop_redis "$port"; done; fi
    rm -rf "$DIR"
    log "stopped and removed $DIR"
    ;;
  stop-rabbit) stop_rabbit "$2" ;;
  start-rabbit) start_rabbit "$2" ;;
  stop-redis) stop_redis "$2" ;;
  kill-redis) kill_redis "$2" ;;
  start-redis) start_redis "$2" ;;
  *)
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
    exit 64
    ;;
esac
