#!/usr/bin/env bash
# Validates the operator files under deploy/, and exits non-zero if anything is wrong:
#
# - every YAML, JSON and TOML file parses, and the files agree with each other and with the
#   code: queue arguments, permissions, grace periods, ports, probes, metric names
#   (deploy/validate-files.py);
# - Prometheus: `promtool check config` (Compose and Kubernetes configurations), `promtool
#   check rules` and `promtool test rules` for the alerts, and every dashboard query;
# - Docker Compose: `docker compose config` (or docker-compose) with .env.example; no Docker
#   engine is needed, none is used, and the Dockerfile is checked for syntax only;
# - Kubernetes: `kubectl kustomize`, when kubectl is installed;
# - systemd: `systemd-analyze verify` and its offline security score;
# - Redis: a throwaway redis-server started with redis.conf and the ACL file that
#   deploy/compose/redis-start.sh writes, its settings read back, and what each user may and
#   may not do tried;
# - RabbitMQ: deploy/rabbitmq/definitions.json imported into the running broker, then the vhost,
#   queues (with their arguments), users and permissions read back. The import only adds or
#   updates the `dtee` vhost's objects and the dtee-* users; it deletes nothing and does not
#   touch other vhosts, so it is harmless to the test suite, and running it again changes
#   nothing (it does reset passwords set on the dtee-* users of this broker).
#
#   --live   also runs a real worker and the `dtee` command line (from target/debug or
#            target/release; DTEE_BIN_DIR to choose) as the least-privilege users, against the
#            imported vhost and the throwaway Redis: jobs, state, a refused foreign key, the
#            health endpoints, the metric names, and a graceful stop; then the same users
#            against a one-node Redis Cluster (deploy/validate-live-cluster.sh). Temporary passwords are
#            set on the RabbitMQ users for the run and removed afterwards.
#   -v       prints every check.
#
# Needs: python3 with PyYAML, promtool, Docker Compose (v2 plugin or v1), redis-server,
# rabbitmqctl and a running RabbitMQ (deploy/local/setup.sh), systemd-analyze. As root, missing
# Debian packages are installed (python3-yaml, docker-compose, systemd) and promtool is taken
# from Debian's `prometheus` package without installing it (no Prometheus server is started).
set -euo pipefail
cd "$(dirname "$0")/.."

live=0
verbose=()
for arg in "$@"; do
  case "$arg" in
    --live) live=1 ;;
    -v) verbose=(-v) ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "validate.sh: unknown argument $arg (try --help)" >&2; exit 2 ;;
  esac
done

started=$(date +%s)
failures=0
step() { printf '== %s\n' "$*"; }
ok() { printf '   ok: %s\n' "$*"; }
fail() { printf '   FAIL: %s\n' "$*"; failures=$((failures + 1)); }
# Runs a command; on failure shows its output and counts a failure.
run() { # description, command...
  local description=$1 output
  shift
  if output=$("$@" 2>&1); then
    ok "$description"
    if [ ${#verbose[@]} -gt 0 ] && [ -n "$output" ]; then printf '%s\n' "$output" | sed 's/^/      /'; fi
  else
    fail "$description"
    printf '%s\n' "$output" | sed 's/^/      /'
  fi
}

tmp=$(mktemp -d)
redis_pid=
worker_pid=
keeper_pid=
rabbit_passwords_set=0
# Stops a process this script started, and waits for it: SIGTERM, then SIGKILL after 10 s.
stop() { # pid
  kill -TERM "$1" 2>/dev/null || return 0
  for _ in $(seq 1 100); do
    kill -0 "$1" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}
cleanup() {
  if [ -n "$worker_pid" ]; then stop "$worker_pid"; fi
  if [ -n "$keeper_pid" ]; then stop "$keeper_pid"; fi
  # Redis saves its snapshot on SIGTERM; it must finish before its folder goes.
  if [ -n "$redis_pid" ]; then stop "$redis_pid"; fi
  if [ "$rabbit_passwords_set" = 1 ]; then
    for user in dtee-worker dtee-submitter dtee-keeper; do rabbitmqctl -q clear_password "$user" >/dev/null 2>&1 || true; done
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

# --- Tools ------------------------------------------------------------------------------------
step "tools"
is_root() { [ "$(id -u)" = 0 ]; }
apt_updated=0
apt_install() { # packages...
  if ! is_root; then
    fail "missing: $* (run as root once to install, or install the Debian packages: $*)"
    return 1
  fi
  if [ "$apt_updated" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

python3 -c 'import yaml' 2>/dev/null || apt_install python3-yaml || true

# promtool: from PATH, else from Debian's prometheus package, unpacked into a cache folder
# (installing the package would start a Prometheus server).
promtool=$(command -v promtool || true)
cache=${XDG_CACHE_HOME:-$HOME/.cache}/dtee-validate
if [ -z "$promtool" ] && [ -x "$cache/usr/bin/promtool" ]; then promtool=$cache/usr/bin/promtool; fi
if [ -z "$promtool" ]; then
  mkdir -p "$cache"
  if ! (cd "$cache" && apt-get download prometheus >/dev/null 2>&1); then
    if is_root; then DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null; apt_updated=1; fi
    (cd "$cache" && apt-get download prometheus >/dev/null 2>&1) || true
  fi
  deb=$(ls "$cache"/prometheus_*.deb 2>/dev/null | head -n 1 || true)
  if [ -n "$deb" ]; then
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$cache" ./usr/bin/promtool
    rm -f "$cache"/prometheus_*.deb
    promtool=$cache/usr/bin/promtool
  else
    fail "promtool not found, and Debian's prometheus package could not be downloaded"
  fi
fi

compose=()
if docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
elif command -v docker-compose >/dev/null 2>&1 || apt_install docker-compose; then
  compose=(docker-compose)
fi
command -v systemd-analyze >/dev/null 2>&1 || apt_install systemd || true
for tool in redis-server redis-cli rabbitmqctl; do
  command -v "$tool" >/dev/null 2>&1 || fail "$tool not found (deploy/local/setup.sh installs it)"
done
[ "$failures" = 0 ] && ok "python3 + PyYAML, promtool ($("$promtool" --version 2>&1 | head -n 1 | awk '{print $3}')), ${compose[*]}, systemd-analyze, redis-server, rabbitmqctl"

# --- Files against each other and against the code ----------------------------------------------
step "files (deploy/validate-files.py)"
if python3 deploy/validate-files.py "${verbose[@]}" "$tmp"; then :; else fail "deploy/validate-files.py"; fi

# --- Prometheus -------------------------------------------------------------------------------
step "prometheus"
if [ -n "$promtool" ]; then
  run "promtool check config deploy/prometheus/prometheus.yml" "$promtool" check config deploy/prometheus/prometheus.yml
  run "promtool check rules deploy/prometheus/alerts.yml" "$promtool" check rules deploy/prometheus/alerts.yml
  run "promtool test rules deploy/prometheus/alerts_test.yml" "$promtool" test rules deploy/prometheus/alerts_test.yml
  if [ -f "$tmp/dashboard-rules.yml" ]; then
    run "promtool check rules: every query of deploy/grafana/dtee-dashboard.json" "$promtool" check rules "$tmp/dashboard-rules.yml"
  fi
  # Debian's promtool is built without Kubernetes discovery; check a copy whose
  # kubernetes_sd_configs are static targets when it is.
  if "$promtool" check config deploy/kubernetes/prometheus.yml >"$tmp/k8s-promtool.log" 2>&1; then
    ok "promtool check config deploy/kubernetes/prometheus.yml"
  elif grep -q 'field kubernetes_sd_configs not found' "$tmp/k8s-promtool.log" && [ -f "$tmp/kubernetes-prometheus.yml" ]; then
    run "promtool check config deploy/kubernetes/prometheus.yml (this promtool lacks Kubernetes discovery: checked with static targets in its place)" \
      "$promtool" check config "$tmp/kubernetes-prometheus.yml"
  else
    fail "promtool check config deploy/kubernetes/prometheus.yml"
    sed 's/^/      /' "$tmp/k8s-promtool.log"
  fi
fi

# --- Compose, Dockerfile, Kubernetes, systemd, scripts -----------------------------------------
step "compose, docker, kubernetes, systemd, scripts"
if [ ${#compose[@]} -gt 0 ]; then
  : > "$tmp/empty.env"
  for file in docker-compose.yml docker-compose.cluster.yml; do
    run "${compose[*]} config: deploy/compose/$file with .env.example" \
      "${compose[@]}" --env-file deploy/compose/.env.example -f "deploy/compose/$file" config -q
    if "${compose[@]}" --env-file "$tmp/empty.env" -f "deploy/compose/$file" config -q >/dev/null 2>&1; then
      fail "deploy/compose/$file must refuse to start without the passwords of .env"
    else
      ok "deploy/compose/$file refuses to start without the passwords of .env"
    fi
  done
fi
if [ -s "$tmp/dockerfile-packages.txt" ]; then
  if compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
    missing=$(while read -r package; do
      policy=$(apt-cache policy "$package" 2>/dev/null || true)
      case "$policy" in *"Candidate: (none)"* | "") echo "$package" ;; esac
    done < "$tmp/dockerfile-packages.txt")
    if [ -z "$missing" ]; then
      ok "the Dockerfile's Debian packages exist in bookworm: $(tr '\n' ' ' < "$tmp/dockerfile-packages.txt")"
    else
      fail "the Dockerfile installs packages apt does not know: $missing"
    fi
  else
    ok "the Dockerfile's Debian packages: not checked (no apt lists here; run apt-get update)"
  fi
fi
if command -v kubectl >/dev/null 2>&1; then
  run "kubectl kustomize deploy/kubernetes" kubectl kustomize deploy/kubernetes
  run "kubectl kustomize deploy/kubernetes-cluster" kubectl kustomize deploy/kubernetes-cluster
else
  ok "kubectl not installed: Kubernetes manifests checked by validate-files.py only"
fi
if command -v systemd-analyze >/dev/null 2>&1; then
  # verify insists that ExecStart exists; check a copy that runs /bin/true. It reports unknown
  # keys and bad values on stderr without failing, so any output is a failure.
  mkdir -p "$tmp/systemd"
  sed 's#^ExecStart=/usr/local/bin/dtee-worker#ExecStart=/bin/true#' deploy/systemd/dtee-worker.service > "$tmp/systemd/dtee-worker.service"
  if output=$(systemd-analyze verify --man=no "$tmp/systemd/dtee-worker.service" 2>&1) && [ -z "$output" ]; then
    ok "systemd-analyze verify deploy/systemd/dtee-worker.service"
  else
    fail "systemd-analyze verify deploy/systemd/dtee-worker.service"
    printf '%s\n' "$output" | sed 's/^/      /'
  fi
  exposure=$(systemd-analyze security --offline=true "$tmp/systemd/dtee-worker.service" 2>/dev/null | grep -o 'Overall exposure level for [^:]*: [0-9.]* [A-Z]*' || true)
  exposure_score=$(printf '%s' "$exposure" | awk '{print $(NF-1)}')
  if [ -n "$exposure_score" ] && awk -v s="$exposure_score" 'BEGIN { exit !(s <= 2.5) }'; then
    ok "systemd-analyze security --offline: exposure $exposure_score (at most 2.5)"
  else
    fail "systemd-analyze security --offline: exposure ${exposure_score:-unknown}, more than 2.5"
  fi
fi
run "bash -n deploy/compose/rabbitmq/rabbitmq-start.sh" bash -n deploy/compose/rabbitmq/rabbitmq-start.sh
run "sh -n deploy/compose/redis-start.sh" sh -n deploy/compose/redis-start.sh
run "bash -n deploy/validate.sh" bash -n deploy/validate.sh
run "bash -n deploy/validate-live-cluster.sh" bash -n deploy/validate-live-cluster.sh
run "bash -n deploy/tls/make-certs.sh" bash -n deploy/tls/make-certs.sh
if command -v erl >/dev/null; then
  run "deploy/rabbitmq/advanced.config holds Erlang terms (consumer_timeout among them)" \
    erl -noshell -eval '{ok, [[{rabbit, S}]]} = file:consult("deploy/rabbitmq/advanced.config"), 86400000 = proplists:get_value(consumer_timeout, S), halt().'
fi

# --- Redis ------------------------------------------------------------------------------------
step "redis: redis.conf and users.acl in a throwaway redis-server"
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
pw_worker=worker-$RANDOM$RANDOM pw_submitter=submitter-$RANDOM$RANDOM pw_admin=admin-$RANDOM$RANDOM
pw_keeper=keeper-$RANDOM$RANDOM
redis_port=$(free_port)
mkdir -p "$tmp/redis"
if DTEE_REDIS_ACL_TEMPLATE=deploy/redis/users.acl DTEE_REDIS_ACL="$tmp/redis/users.acl" \
    DTEE_REDIS_WORKER_PASSWORD=$pw_worker DTEE_REDIS_SUBMITTER_PASSWORD=$pw_submitter \
    DTEE_REDIS_ADMIN_PASSWORD=$pw_admin DTEE_REDIS_KEEPER_PASSWORD=$pw_keeper \
    sh deploy/compose/redis-start.sh --acl-only; then
  ok "deploy/compose/redis-start.sh writes the ACL file with password hashes"
else
  fail "deploy/compose/redis-start.sh --acl-only"
fi
# Command-line settings override the file: a free port on loopback, a scratch folder.
redis-server deploy/redis/redis.conf --port "$redis_port" --bind 127.0.0.1 --dir "$tmp/redis" \
  --aclfile "$tmp/redis/users.acl" --logfile "$tmp/redis/redis.log" --daemonize no \
  </dev/null >/dev/null 2>&1 &
redis_pid=$!
rcli() { # user, password, command...
  local user=$1 password=$2
  shift 2
  REDISCLI_AUTH=$password redis-cli -p "$redis_port" --user "$user" "$@" 2>&1
}
for _ in $(seq 1 50); do
  [ "$(rcli dtee-admin "$pw_admin" PING 2>/dev/null)" = PONG ] && break
  kill -0 "$redis_pid" 2>/dev/null || break
  sleep 0.1
done
if [ "$(rcli dtee-admin "$pw_admin" PING)" = PONG ]; then
  ok "redis-server $(redis-server --version | awk '{print $3}') starts with redis.conf and users.acl"
  for setting in "appendonly yes" "appendfsync always" "maxmemory-policy noeviction"; do
    set -- $setting
    value=$(rcli dtee-admin "$pw_admin" CONFIG GET "$1" | sed -n 2p)
    [ "$value" = "$2" ] && ok "CONFIG GET $1: $2" || fail "CONFIG GET $1: $value, expected $2"
  done
  expect() { # allowed|denied, user, password, command...
    local want=$1 user=$2 password=$3 reply
    shift 3
    reply=$(rcli "$user" "$password" "$@")
    case "$want:$reply" in
      denied:NOPERM* | denied:NOAUTH* | denied:*WRONGPASS*) return 0 ;;
      denied:*) echo "$user may $*: $reply"; return 1 ;;
      allowed:NOPERM* | allowed:NOAUTH* | allowed:*WRONGPASS* | allowed:ERR*) echo "$user may not $*: $reply"; return 1 ;;
      allowed:*) return 0 ;;
    esac
  }
  acl_errors=$(
    w=(dtee-worker "$pw_worker") s=(dtee-submitter "$pw_submitter")
    sha=$(rcli dtee-worker "$pw_worker" SCRIPT LOAD "return redis.call('GET', KEYS[1])")
    {
      expect denied default "" PING
      # The worker: its commands on dtee:* keys, scripts by hash, nothing else.
      expect allowed "${w[@]}" SET 'dtee:result:sha256:00' r NX EX 60
      expect allowed "${w[@]}" MGET 'dtee:blob:sha256:00' 'dtee:result:sha256:00'
      expect allowed "${w[@]}" EXISTS 'dtee:revoked:alice:sha256:00'
      expect allowed "${w[@]}" INCR 'dtee:ver:{alice}:x'
      expect allowed "${w[@]}" APPEND 'dtee:state:{alice}:x' y
      expect allowed "${w[@]}" EVALSHA "$sha" 1 'dtee:state:{alice}:x'
      expect allowed "${w[@]}" DEL 'dtee:worker:validate'
      expect allowed "${w[@]}" SET 'dtee:applied:{alice}:sha256:00' r NX EX 60
      expect allowed "${w[@]}" SET 'dtee:failure:sha256:00' f EX 60
      expect allowed "${w[@]}" GET 'dtee:blob:sha256:00'
      # Revocations are read-only to it, and the keeper's keys (release policies, sealed
      # values, the keeper's public key, which clients may read to seal puts) are not its at
      # all: a worker's login must not be able to choose who gets a tenant's secrets. (Blobs it
      # reads through a script, which needs write access to the keys it names; a blob written
      # by anyone is checked against its digest before use.)
      expect denied "${w[@]}" SET 'dtee:revoked:alice:sha256:00' 1
      expect denied "${w[@]}" SET 'dtee:secret-policy:{alice}' 'allow_software = true'
      expect denied "${w[@]}" SET 'dtee:keeper:public-key' forged
      expect denied "${w[@]}" GET 'dtee:keeper:public-key'
      expect denied "${w[@]}" GET 'dtee:secrets:{alice}'
      expect denied "${w[@]}" SET 'other:key' x
      expect denied "${w[@]}" EVAL 'return 1' 0
      expect denied "${w[@]}" KEYS '*'
      expect denied "${w[@]}" FLUSHALL
      expect denied "${w[@]}" CONFIG GET dir
      expect denied "${w[@]}" SCAN 0
      expect denied "${w[@]}" ACL LIST
      # The submitter (tenant dtee-submitter): blobs write-only, results and failures
      # read-only, its own state read-only, nothing else.
      expect allowed "${s[@]}" SET 'dtee:blob:sha256:01' b NX
      expect denied "${s[@]}" GET 'dtee:blob:sha256:01'
      expect allowed "${s[@]}" MGET 'dtee:result:sha256:00' 'dtee:failure:sha256:00'
      expect denied "${s[@]}" SET 'dtee:result:sha256:02' forged
      expect allowed "${s[@]}" MGET 'dtee:state:{dtee-submitter}:x' 'dtee:ver:{dtee-submitter}:x'
      expect allowed "${s[@]}" MGET 'dtee:state:{dtee-submitter/g}:{g}/x' 'dtee:ver:{dtee-submitter/g}:{g}/x'
      expect denied "${s[@]}" MGET 'dtee:state:{alice}:x' 'dtee:ver:{alice}:x'
      expect denied "${s[@]}" GET 'dtee:state:{dtee-submitter2}:x'
      expect denied "${s[@]}" SET 'dtee:state:{dtee-submitter}:x' forged
      # Revocations: its own tenant's prefix only (another tenant's job is not its to cancel).
      expect allowed "${s[@]}" SET 'dtee:revoked:dtee-submitter:sha256:03' 1 EX 60
      expect denied "${s[@]}" SET 'dtee:revoked:alice:sha256:03' 1 EX 60
      expect denied "${s[@]}" SET 'dtee:revoked:sha256:03' 1 EX 60
      expect denied "${s[@]}" SCAN 0
      expect denied "${s[@]}" EVALSHA "$sha" 1 'dtee:result:sha256:00'
      expect denied "${s[@]}" SCRIPT LOAD 'return 1'
      expect denied "${s[@]}" KEYS '*'
      expect denied "${s[@]}" DEL 'dtee:blob:sha256:01'
      expect denied "${s[@]}" INCR 'dtee:ver:{dtee-submitter}:x'
      expect denied "${s[@]}" SET 'other:key' x
      expect denied "${s[@]}" FLUSHALL
      expect denied "${s[@]}" CONFIG GET dir
      expect denied dtee-operator "" PING
      # Redis Cluster clients (redis-rs, redis-py, node-redis) read the slot map and follow ASK
      # redirections; redis-py also reads COMMAND. Asked with ACL DRYRUN: this server is no
      # cluster.
      for user in dtee-worker dtee-submitter dtee-keeper dtee-operator; do
        for command in "CLUSTER SLOTS" ASKING "CLUSTER RESET" "CLUSTER FAILOVER"; do
          # shellcheck disable=SC2086
          reply=$(rcli dtee-admin "$pw_admin" ACL DRYRUN "$user" $command)
          case "$command:$reply" in
            CLUSTER\ SLOTS:OK | ASKING:OK | CLUSTER\ RESET:*"no permissions"* | CLUSTER\ FAILOVER:*"no permissions"*) ;;
            *) echo "ACL DRYRUN $user $command: $reply" ;;
          esac
        done
      done
    } 2>&1
  ) || true
  if [ -z "$acl_errors" ]; then
    ok "ACL: default, dtee-worker, dtee-submitter and dtee-operator may do what they need and nothing tried beyond it"
  else
    fail "ACL"
    printf '%s\n' "$acl_errors" | sed 's/^/      /'
  fi
else
  fail "redis-server does not start with deploy/redis/redis.conf and users.acl"
  sed 's/^/      /' "$tmp/redis/redis.log" 2>/dev/null | tail -n 5
fi

# --- RabbitMQ ---------------------------------------------------------------------------------
step "rabbitmq: import deploy/rabbitmq/definitions.json into the running broker"
rabbit_ok=0
if ! rabbitmqctl -q await_startup --timeout 30 >/dev/null 2>&1; then
  fail "RabbitMQ is not running (deploy/local/setup.sh starts it), or rabbitmqctl cannot reach it (run as root)"
else
  # Upgrade: the definitions of a dtee before per-tenant queues had a direct jobs exchange,
  # which an import cannot turn into a topic exchange. This vhost is the validation's own.
  if rabbitmqctl -s list_exchanges -p dtee name type 2>/dev/null | grep -x 'dtee.jobs	direct' >/dev/null; then
    rabbitmqctl -q delete_vhost dtee >/dev/null 2>&1 || true
    ok "vhost dtee had an earlier dtee's direct jobs exchange: deleted, to be imported afresh"
  fi
  # The file goes through standard input: the broker, not this process, would read a path.
  imported=0
  for _ in 1 2 3; do
    if rabbitmqctl -q import_definitions --format json < deploy/rabbitmq/definitions.json >"$tmp/import.log" 2>&1; then
      imported=1
      break
    fi
    sleep 2
  done
  if [ "$imported" = 1 ]; then
    ok "rabbitmqctl import_definitions"
    # The import runs asynchronously: wait for its objects.
    want_queues="dtee.dead dtee.jobs.wasm dtee.jobs.wasm.any-hardware dtee.jobs.wasm.snp dtee.jobs.wasm.tpm dtee.tenants"
    queues=
    for _ in $(seq 1 60); do
      # Tenant queues (`dtee.jobs.<key>/<tenant>`) are the workers' own, and dtee.keeper the
      # keeper's, from earlier --live runs.
      queues=$(rabbitmqctl -s list_queues -p dtee name 2>/dev/null | grep -v / | grep -vx dtee.keeper | sort | tr '\n' ' ' | sed 's/ $//' || true)
      [ "$queues" = "$want_queues" ] && break
      sleep 0.5
    done
    if rabbitmqctl -s list_vhosts 2>/dev/null | grep -x dtee >/dev/null; then ok "vhost dtee exists"; else fail "vhost dtee missing after the import"; fi
    [ "$queues" = "$want_queues" ] && ok "queues: $queues" || fail "queues in vhost dtee: '$queues', expected '$want_queues'"
    arguments=$(rabbitmqctl -s list_queues -p dtee name arguments 2>/dev/null | grep '^dtee.jobs.wasm	' || true)
    missing_args=
    for argument in '{"x-queue-type","quorum"}' '{"x-delivery-limit",5}' '{"x-dead-letter-exchange","dtee.dead"}' \
        '{"x-dead-letter-strategy","at-least-once"}' '{"x-overflow","reject-publish"}'; do
      case "$arguments" in *"$argument"*) ;; *) missing_args="$missing_args $argument" ;; esac
    done
    [ -z "$missing_args" ] && ok "dtee.jobs.wasm has the worker's queue arguments" || fail "dtee.jobs.wasm lacks:$missing_args"
    permissions=$(rabbitmqctl -s list_permissions -p dtee 2>/dev/null | sort || true)
    expected_permissions=$(printf '%s\n' \
      'dtee-admin	.*	.*	.*' \
      'dtee-keeper	^dtee\.keeper$	^(dtee\.keeper|amq\.default)$	^dtee\.keeper$' \
      'dtee-monitor	^$	^$	^$' \
      'dtee-submitter	^(amq\.gen-|dtee\.keeper\.reply\.)	^(dtee\.jobs|dtee\.keeper|amq\.gen-.*)$	^(dtee\.results|amq\.gen-.*|dtee\.keeper\.reply\..*)$' \
      'dtee-worker	^dtee\.	^dtee\.	^dtee\.(?!keeper$)' | sort)
    [ "$permissions" = "$expected_permissions" ] && ok "permissions on vhost dtee" || { fail "permissions on vhost dtee"; printf '%s\n' "$permissions" | sed 's/^/      /'; }
    if rabbitmqctl -s list_topic_permissions -p dtee 2>/dev/null | grep '^dtee-submitter	dtee.results	^\$	^{username}\\\.(sha256:\[0-9a-f\]{64}|reply\\\.amq\\\.gen-\[A-Za-z0-9_-\]{1,64})\$$' >/dev/null; then
      ok "topic permission: submitters bind only their own <user>.<job id> and <user>.reply.<queue> on dtee.results"
    else
      fail "topic permission of dtee-submitter on dtee.results"
    fi
    if rabbitmqctl -s list_exchanges -p dtee name type arguments 2>/dev/null | grep -x 'dtee.jobs	topic	\[{"alternate-exchange","dtee.intake"}\]' >/dev/null; then
      ok "dtee.jobs: a topic exchange whose alternate exchange is dtee.intake"
    else
      fail "dtee.jobs is not a topic exchange with the alternate exchange dtee.intake"
    fi
    if rabbitmqctl -s list_topic_permissions -p dtee 2>/dev/null | grep '^dtee-submitter	dtee.jobs	^{username}\\\.' >/dev/null; then
      ok "topic permission: submitters publish jobs only under their own <user>.<routing key>"
    else
      fail "topic permission of dtee-submitter on dtee.jobs"
    fi
    if rabbitmqctl -s list_queues -p dtee name policy 2>/dev/null | grep -x 'dtee.jobs.wasm	dtee-job-queue-length' >/dev/null; then
      ok "quota: the job queue length policy applies to dtee.jobs.wasm"
    else
      fail "the job queue length policy does not apply to dtee.jobs.wasm"
    fi
    if rabbitmqctl -s list_vhost_limits -p dtee 2>/dev/null | grep max-queues >/dev/null \
      && rabbitmqctl -s list_user_limits --user dtee-submitter 2>/dev/null | grep max-connections >/dev/null; then
      ok "quota: vhost and submitter limits are set"
    else
      fail "vhost dtee or user dtee-submitter has no limits after the import"
    fi
    if rabbitmqctl -q import_definitions --format json < deploy/rabbitmq/definitions.json >/dev/null 2>&1; then
      ok "importing again is accepted (nothing changes)"
      rabbit_ok=1
    else
      fail "importing the definitions a second time"
    fi
  else
    fail "rabbitmqctl import_definitions"
    sed 's/^/      /' "$tmp/import.log"
  fi
fi

# --- Live -------------------------------------------------------------------------------------
if [ "$live" = 1 ]; then
  step "live: a worker and the dtee command line as the least-privilege users"
  bin=${DTEE_BIN_DIR:-}
  if [ -z "$bin" ]; then
    for candidate in target/debug target/release; do
      if [ -x "$candidate/dtee-worker" ] && [ -x "$candidate/dtee" ] && [ -x "$candidate/dtee-keeper" ]; then
        if [ -z "$bin" ] || [ "$candidate/dtee-worker" -nt "$bin/dtee-worker" ]; then bin=$candidate; fi
      fi
    done
  fi
  if [ -z "$bin" ] || [ ! -x "$bin/dtee-worker" ] || [ ! -x "$bin/dtee" ]; then
    fail "no dtee-worker and dtee binaries (cargo build --workspace --bins, or set DTEE_BIN_DIR)"
  elif [ "$rabbit_ok" != 1 ] || [ -z "$redis_pid" ] || ! kill -0 "$redis_pid" 2>/dev/null; then
    fail "the live run needs the imported definitions and the throwaway Redis above"
  else
    # Start from the imported definitions alone: tenant queues (`dtee.jobs.<key>/<tenant>`)
    # that earlier live runs' workers declared are this validation's own.
    for queue in $(rabbitmqctl -s list_queues -p dtee name 2>/dev/null | grep / || true); do
      rabbitmqctl -q delete_queue -p dtee "$queue" >/dev/null 2>&1 || true
    done
    rpw_worker=rw-$RANDOM$RANDOM$RANDOM rpw_submitter=rs-$RANDOM$RANDOM$RANDOM
    rabbit_passwords_set=1
    rabbitmqctl -q change_password dtee-worker "$rpw_worker" >/dev/null
    rabbitmqctl -q change_password dtee-submitter "$rpw_submitter" >/dev/null
    rpw_keeper=rk-$RANDOM$RANDOM$RANDOM
    rabbitmqctl -q change_password dtee-keeper "$rpw_keeper" >/dev/null
    metrics_port=$(free_port)
    worker_env=(env -i PATH="$PATH" HOME="$tmp"
      DTEE_AMQP_URL="amqp://dtee-worker:$rpw_worker@127.0.0.1:5672/dtee"
      DTEE_REDIS_URL="redis://dtee-worker:$pw_worker@127.0.0.1:$redis_port/"
      DTEE_ATTESTATION=software DTEE_METRICS_ADDR="127.0.0.1:$metrics_port" DTEE_CONCURRENCY=1
      DTEE_LOG_FORMAT=json DTEE_WORKER_ID="validate-$$" DTEE_SHUTDOWN_GRACE_SECS=5)
    client=(env -i PATH="$PATH" HOME="$tmp"
      DTEE_AMQP_URL="amqp://dtee-submitter:$rpw_submitter@127.0.0.1:5672/dtee"
      DTEE_REDIS_URL="redis://dtee-submitter:$pw_submitter@127.0.0.1:$redis_port/" "$bin/dtee")
    "${worker_env[@]}" "$bin/dtee-worker" </dev/null > "$tmp/worker.log" 2>&1 &
    worker_pid=$!
    for _ in $(seq 1 100); do
      curl -fsS "http://127.0.0.1:$metrics_port/readyz" >/dev/null 2>&1 && break
      kill -0 "$worker_pid" 2>/dev/null || break
      sleep 0.2
    done
    if curl -fsS "http://127.0.0.1:$metrics_port/readyz" >/dev/null 2>&1; then
      ok "$bin/dtee-worker starts as dtee-worker (RabbitMQ vhost dtee, Redis ACL) and is ready"
      curl -fsS "http://127.0.0.1:$metrics_port/healthz" >/dev/null && ok "/healthz answers 200" || fail "/healthz"
      nonce=validate-$$-$RANDOM
      if "${client[@]}" run --kernel kernels/wasm/echo.wasm --entry echo --input in=text:hello \
          --output out:64 --nonce "$nonce" --timeout 30 > "$tmp/echo.json" 2>"$tmp/echo.err" \
          && grep -q '"status": "succeeded"' "$tmp/echo.json"; then
        ok "dtee run as dtee-submitter: a job succeeds (kernel stored, job published, result bound and received)"
      else
        fail "dtee run as dtee-submitter"; sed 's/^/      /' "$tmp/echo.err" | tail -n 5
      fi
      if "${client[@]}" run --kernel kernels/wasm/increment.wasm --entry increment \
          --state "counter=read_write?:dtee-submitter/validate/$nonce" --nonce "$nonce" --timeout 30 \
          > "$tmp/state.json" 2>"$tmp/state.err" && grep -q '"status": "succeeded"' "$tmp/state.json" \
          && "${client[@]}" state get "dtee-submitter/validate/$nonce" > "$tmp/state-get.json" 2>&1 && grep -q '"version": 1' "$tmp/state-get.json"; then
        ok "a job commits state under the worker's ACL, and its tenant reads it back"
      else
        fail "a state job and dtee state get as dtee-submitter"; sed 's/^/      /' "$tmp/state.err" | tail -n 5
        grep -E '"(status|code|message)"' "$tmp/state.json" 2>/dev/null | sed 's/^/      /' | head -n 5
        sed 's/^/      /' "$tmp/state-get.json" 2>/dev/null | head -n 8
      fi
      if "${client[@]}" state get "alice/validate/$nonce" > /dev/null 2>&1; then
        fail "dtee-submitter could read the state of tenant alice"
      else
        ok "dtee-submitter cannot read another tenant's state"
      fi
      # Secrets: a keeper as dtee-keeper, a tenant's secret and policy, a job that reads it.
      head -c 32 /dev/urandom > "$tmp/kek"
      env -i PATH="$PATH" HOME="$tmp" DTEE_KEEPER_KEK_FILE="$tmp/kek" \
        DTEE_AMQP_URL="amqp://dtee-keeper:$rpw_keeper@127.0.0.1:5672/dtee" \
        DTEE_REDIS_URL="redis://dtee-keeper:$pw_keeper@127.0.0.1:$redis_port/" \
        "$bin/dtee-keeper" </dev/null > "$tmp/keeper.log" 2>&1 &
      keeper_pid=$!
      for _ in $(seq 1 100); do
        rabbitmqctl -s list_queues -p dtee name 2>/dev/null | grep -qx dtee.keeper && break
        kill -0 "$keeper_pid" 2>/dev/null || break
        sleep 0.2
      done
      printf 'validate-%s' "$nonce" > "$tmp/secret.value"
      if "${client[@]}" secret put data --from-file "$tmp/secret.value" > "$tmp/secret.out" 2>&1 \
          && "${client[@]}" secret policy set deploy/policies/software-dev.toml >> "$tmp/secret.out" 2>&1 \
          && "${client[@]}" run --kernel kernels/wasm/sha256.wasm --entry sha256 --secret data \
            --output digest:32 --timeout 30 > "$tmp/secret.json" 2>>"$tmp/secret.out" \
          && grep -q '"status": "succeeded"' "$tmp/secret.json"; then
        ok "secrets as dtee-keeper and dtee-submitter: put, policy set, and a job that reads the secret"
        # A worker's login may publish requests to the keeper but not read them: the keeper's
        # queue (and exchange, so no queue of its own bound to it) refuses it.
        if [ -x clients/python/.venv/bin/python ]; then
          if clients/python/.venv/bin/python - "$rpw_worker" <<'PY'
import sys, pika
params = pika.URLParameters(f"amqp://dtee-worker:{sys.argv[1]}@127.0.0.1:5672/dtee")
with pika.BlockingConnection(params) as connection:
    for attempt in ("consume", "bind"):
        channel = connection.channel()
        try:
            if attempt == "consume":
                channel.basic_consume("dtee.keeper", lambda *a: None)
            else:
                queue = channel.queue_declare("dtee.validate-keeper-tap", exclusive=True).method.queue
                channel.queue_bind(queue, "dtee.keeper", "tenant")
        except pika.exceptions.ChannelClosedByBroker as error:
            if error.reply_code != 403:
                sys.exit(f"{attempt}: {error}")
        else:
            sys.exit(f"a worker may {attempt} the keeper's requests")
PY
          then ok "dtee-worker can neither consume dtee.keeper nor bind a queue to it (ACCESS_REFUSED)"
          else fail "dtee-worker reads the keeper's requests"; fi
        fi
      else
        fail "secrets under the least-privilege users"; tail -n 5 "$tmp/secret.out" | sed 's/^/      /'
        tail -n 5 "$tmp/keeper.log" | sed 's/^/      /'
      fi
      stop "$keeper_pid"; keeper_pid=
      curl -fsS "http://127.0.0.1:$metrics_port/metrics" > "$tmp/metrics.txt"
      if python3 deploy/validate-files.py "${verbose[@]}" --metrics "$tmp/metrics.txt"; then :; else fail "metric names served by the worker"; fi
      kill -TERM "$worker_pid"
      status=0
      wait "$worker_pid" || status=$?
      worker_pid=
      [ "$status" = 0 ] && ok "SIGTERM: the worker stops gracefully (exit 0)" || fail "SIGTERM: the worker exited $status"
      # The same users against Redis in cluster mode (after this worker stopped: it would take
      # the jobs, and it reads another Redis).
      cluster_failures=0
      BIN=$bin TMP=$tmp RABBIT_WORKER_URL="amqp://dtee-worker:$rpw_worker@127.0.0.1:5672/dtee" \
        RABBIT_SUBMITTER_URL="amqp://dtee-submitter:$rpw_submitter@127.0.0.1:5672/dtee" \
        bash deploy/validate-live-cluster.sh || cluster_failures=$?
      failures=$((failures + cluster_failures))
    else
      fail "$bin/dtee-worker did not become ready"
      tail -n 5 "$tmp/worker.log" | sed 's/^/      /'
    fi
  fi
fi

elapsed=$(( $(date +%s) - started ))
if [ "$failures" -gt 0 ]; then
  echo "deploy/validate.sh: $failures failure(s) in ${elapsed} s"
  exit 1
fi
echo "deploy/validate.sh: all checks passed in ${elapsed} s"
