#!/usr/bin/env bash
# Deletes the RabbitMQ queues of the namespaces given (every queue whose name starts with
# "<namespace>."), after a load test run whose workers have stopped: each run declares its own
# quorum queues and stream, and hundreds left behind slow the broker down.
# Usage: loadtest/forget.sh NAMESPACE...   (needs rabbitmqctl, as root on the broker's machine)
set -euo pipefail
[ $# -gt 0 ] || exit 0
queues=$(rabbitmqctl list_queues name -q --no-table-headers 2>/dev/null || true)
for namespace in "$@"; do
  while IFS= read -r queue; do
    [ -n "$queue" ] && rabbitmqctl delete_queue -q "$queue" </dev/null >/dev/null 2>&1 || true
  done < <(grep -F "$namespace." <<<"$queues" | grep "^$namespace\." || true)
done
