#!/usr/bin/env bash
# Makes a private CA, a server certificate and a client certificate (ECDSA P-256, PEM) for a
# dtee deployment with TLS everywhere:
#
#   deploy/tls/make-certs.sh DIR SUBJECT_ALT_NAMES [DAYS]
#   deploy/tls/make-certs.sh deploy/compose/tls DNS:rabbitmq-1,DNS:rabbitmq-2,DNS:redis-1 365
#
# DIR gets ca.pem, ca.key, server.pem, server.key (for RabbitMQ and Redis: its subjectAltName
# lists every host name clients use, since clients verify host names), client.pem and
# client.key (for workers, dtee and the clients: RabbitMQ and Redis can require one). Nothing
# is overwritten: an existing DIR/client.key means the set is complete. For production, use
# your organisation's CA or cert-manager (deploy/kubernetes/cluster/) instead.
set -euo pipefail

dir=${1:?usage: make-certs.sh DIR SUBJECT_ALT_NAMES [DAYS]}
sans=${2:?usage: make-certs.sh DIR SUBJECT_ALT_NAMES [DAYS]}
days=${3:-30}
[ -f "$dir/client.key" ] && exit 0
mkdir -p "$dir"
umask 077
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days "$days" \
  -subj "/CN=dtee CA" -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null
for who in server client; do
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -subj "/CN=dtee $who" -keyout "$dir/$who.key" -out "$dir/$who.csr" 2>/dev/null
done
printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$sans" >"$dir/server.ext"
printf 'extendedKeyUsage=clientAuth\n' >"$dir/client.ext"
for who in server client; do
  openssl x509 -req -in "$dir/$who.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
    -CAcreateserial -days "$days" -extfile "$dir/$who.ext" -out "$dir/$who.pem" 2>/dev/null
done
rm -f "$dir"/*.csr "$dir"/*.ext "$dir"/ca.srl
chmod 0644 "$dir"/*.pem
