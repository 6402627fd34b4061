#!/usr/bin/env bash
# The RabbitMQ container's command: starts the broker through the image's entry point, then
# gives the users that deploy/rabbitmq/definitions.json creates (without passwords) their
# passwords from the environment, and marks the container ready for its health check.
#
# Environment: DTEE_RABBITMQ_WORKER_PASSWORD, DTEE_RABBITMQ_SUBMITTER_PASSWORD,
# DTEE_RABBITMQ_ADMIN_PASSWORD (required), DTEE_RABBITMQ_KEEPER_PASSWORD (optional: without it
# dtee-keeper cannot log in), DTEE_RABBITMQ_MONITOR_PASSWORD (optional: without
# it dtee-monitor cannot log in).
#
# Cluster (deploy/compose/docker-compose.cluster.yml): DTEE_RABBITMQ_COOKIE_FILE names the
# Erlang cookie that every node of the cluster shares, installed as the rabbitmq user's cookie;
# DTEE_TLS_DIR names a folder with ca.pem, server.pem and server.key (deploy/tls/make-certs.sh),
# copied to /etc/rabbitmq/tls for the rabbitmq user, where the cluster's configuration reads it.
set -euo pipefail

ready=/tmp/dtee-passwords-set
rm -f "$ready"

if [ -n "${DTEE_RABBITMQ_COOKIE_FILE:-}" ]; then
  install -o rabbitmq -g rabbitmq -m 0400 "$DTEE_RABBITMQ_COOKIE_FILE" /var/lib/rabbitmq/.erlang.cookie
fi
if [ -n "${DTEE_TLS_DIR:-}" ]; then
  install -d -o rabbitmq -g rabbitmq -m 0750 /etc/rabbitmq/tls
  install -o rabbitmq -g rabbitmq -m 0644 "$DTEE_TLS_DIR/ca.pem" "$DTEE_TLS_DIR/server.pem" /etc/rabbitmq/tls/
  install -o rabbitmq -g rabbitmq -m 0600 "$DTEE_TLS_DIR/server.key" /etc/rabbitmq/tls/
fi

docker-entrypoint.sh rabbitmq-server &
server=$!
trap 'kill -TERM "$server" 2>/dev/null || true' TERM INT

# The server writes the Erlang cookie on its first start. A CLI started before that would
# write its own, owned by root, and the server could then not read it.
for _ in $(seq 1 120); do
  [ -s /var/lib/rabbitmq/.erlang.cookie ] && break
  sleep 1
done
ctl() { gosu rabbitmq rabbitmqctl --quiet "$@"; }
ctl await_startup --timeout 180

# Definitions are imported during boot, before await_startup returns.
set_password() { # user, password
  if [ -n "$2" ]; then
    ctl change_password "$1" "$2"
  fi
}
set_password dtee-worker "${DTEE_RABBITMQ_WORKER_PASSWORD:?}"
set_password dtee-submitter "${DTEE_RABBITMQ_SUBMITTER_PASSWORD:?}"
set_password dtee-admin "${DTEE_RABBITMQ_ADMIN_PASSWORD:?}"
set_password dtee-monitor "${DTEE_RABBITMQ_MONITOR_PASSWORD:-}"
set_password dtee-keeper "${DTEE_RABBITMQ_KEEPER_PASSWORD:-}"
# A node that imports definitions at boot creates no `guest`; remove one left by an earlier
# set-up all the same (the image lets guest log in from anywhere).
if ctl list_users --silent | awk '{print $1}' | grep -x guest >/dev/null; then
  ctl delete_user guest
fi
touch "$ready"
echo "dtee: passwords set for the users of deploy/rabbitmq/definitions.json" >&2

status=0
wait "$server" || status=$?
# A signal interrupts `wait`; wait again for the broker to finish stopping.
if kill -0 "$server" 2>/dev/null; then
  status=0
  wait "$server" || status=$?
fi
exit "$status"
