#!/bin/sh
# The Redis container's command: writes deploy/redis/users.acl with each user's password (as
# its SHA-256, `#<hex>`) from the environment, then starts Redis with deploy/redis/redis.conf
# through the image's entry point (which drops to the redis user).
#
# Environment: DTEE_REDIS_WORKER_PASSWORD, DTEE_REDIS_SUBMITTER_PASSWORD,
# DTEE_REDIS_ADMIN_PASSWORD (required), DTEE_REDIS_OPERATOR_PASSWORD and
# DTEE_REDIS_KEEPER_PASSWORD (optional: without one, that user cannot log in), DTEE_REDIS_MAXMEMORY (default 1gb).
#
# Cluster (deploy/compose/docker-compose.cluster.yml): with DTEE_REDIS_CLUSTER=yes the node
# joins a Redis Cluster over TLS only: DTEE_TLS_DIR names a folder with ca.pem, server.pem and
# server.key (deploy/tls/make-certs.sh), copied under /data for the redis user; clients,
# replication and the cluster bus use TLS, clients must present a certificate of the CA, the
# node announces DTEE_REDIS_ANNOUNCE_HOSTNAME (clients verify it against the certificate), and
# replicas authenticate to their primary as dtee-admin.
#
# `redis-start.sh --acl-only` writes the ACL file and stops (deploy/validate.sh uses it, with
# DTEE_REDIS_ACL_TEMPLATE and DTEE_REDIS_ACL naming the template and the file to write).
set -eu

template=${DTEE_REDIS_ACL_TEMPLATE:-/usr/local/etc/redis/users.acl}
acl=${DTEE_REDIS_ACL:-/data/users.acl}
: "${DTEE_REDIS_WORKER_PASSWORD:?}" "${DTEE_REDIS_SUBMITTER_PASSWORD:?}" "${DTEE_REDIS_ADMIN_PASSWORD:?}"

hash() { printf %s "$1" | sha256sum | cut -d' ' -f1; }

# Each user line of the template gets its password hash appended (after its `resetpass`).
umask 077
: > "$acl.new"
while IFS= read -r line; do
  password=
  case "$line" in
    "user dtee-worker "*) password=$DTEE_REDIS_WORKER_PASSWORD ;;
    "user dtee-submitter "*) password=$DTEE_REDIS_SUBMITTER_PASSWORD ;;
    "user dtee-operator "*) password=${DTEE_REDIS_OPERATOR_PASSWORD:-} ;;
    "user dtee-keeper "*) password=${DTEE_REDIS_KEEPER_PASSWORD:-} ;;
    "user dtee-admin "*) password=$DTEE_REDIS_ADMIN_PASSWORD ;;
  esac
  if [ -n "$password" ]; then
    line="$line #$(hash "$password")"
  fi
  printf '%s\n' "$line" >> "$acl.new"
done < "$template"
mv "$acl.new" "$acl"

if [ "${1:-}" = --acl-only ]; then
  exit 0
fi
set --
if [ "${DTEE_REDIS_CLUSTER:-no}" = yes ]; then
  : "${DTEE_TLS_DIR:?}" "${DTEE_REDIS_ANNOUNCE_HOSTNAME:?}"
  mkdir -p /data/tls
  cp "$DTEE_TLS_DIR/ca.pem" "$DTEE_TLS_DIR/server.pem" "$DTEE_TLS_DIR/server.key" /data/tls/
  # The entry point gives /data to the redis user before it drops to it.
  cat > /data/cluster.conf <<EOF
port 0
tls-port 6379
tls-cert-file /data/tls/server.pem
tls-key-file /data/tls/server.key
tls-ca-cert-file /data/tls/ca.pem
tls-auth-clients yes
tls-replication yes
tls-cluster yes
cluster-enabled yes
cluster-config-file /data/nodes.conf
cluster-announce-hostname $DTEE_REDIS_ANNOUNCE_HOSTNAME
cluster-preferred-endpoint-type hostname
masteruser dtee-admin
masterauth $DTEE_REDIS_ADMIN_PASSWORD
EOF
  chmod 0600 /data/cluster.conf
  set -- --include /data/cluster.conf
fi
exec docker-entrypoint.sh redis-server /usr/local/etc/redis/redis.conf \
  --dir /data --aclfile "$acl" --maxmemory "${DTEE_REDIS_MAXMEMORY:-1gb}" "$@"
