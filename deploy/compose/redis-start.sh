#!/bin/sh
# The Redis container's command: writes deploy/redis/users.acl with each user's password (as
# its SHA-256, `#<hex>`) from the environment, then starts Redis with deploy/redis/redis.conf
# through the image's entry point (which drops to the redis user).
#
# Environment: DTEE_REDIS_WORKER_PASSWORD, DTEE_REDIS_SUBMITTER_PASSWORD,
# DTEE_REDIS_ADMIN_PASSWORD (required), DTEE_REDIS_OPERATOR_PASSWORD and
# DTEE_REDIS_KEEPER_PASSWORD (optional: without one, that user cannot log in), DTEE_REDIS_MAXMEMORY (default 1gb).
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
exec docker-entrypoint.sh redis-server /usr/local/etc/redis/redis.conf \
  --dir /data --aclfile "$acl" --maxmemory "${DTEE_REDIS_MAXMEMORY:-1gb}"
