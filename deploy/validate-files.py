#!/usr/bin/env python3
"""Checks the operator files under deploy/ against each other and against the code.

Run by deploy/validate.sh, which runs the tools (promtool, Docker Compose, rabbitmqctl,
redis-server, systemd-analyze) on the same files. This script needs only Python 3.11 and
PyYAML (Debian: python3-yaml), and does no I/O beyond reading the repository and writing
into the folder it is given.

    validate-files.py [-v] OUT_DIR     checks everything; writes for validate.sh:
                                       OUT_DIR/dashboard-rules.yml (the dashboard's queries as
                                       recording rules, for `promtool check rules`) and
                                       OUT_DIR/kubernetes-prometheus.yml (for `promtool check
                                       config` with a promtool built without Kubernetes
                                       discovery, as Debian's is)
    validate-files.py --metrics FILE   checks that every dtee_ metric the alerts and the
                                       dashboard use is in FILE, a scrape of a worker's /metrics

Prints one line per group of checks and one per failure (-v: one per check), and exits 1 if
any check failed.
"""

import json
import re
import sys
import tomllib
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import validate_cluster  # noqa: E402 - deploy/validate_cluster.py, beside this file

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
NAMESPACE = "dtee"
VHOST = "dtee"
# Routing keys with a queue in definitions.json: what a software worker serves (`wasm`), and
# what TPM and SNP workers add (schemas/src/protocol.rs, served_routing_keys).
ROUTING_KEYS = ["wasm", "wasm.tpm", "wasm.snp", "wasm.any-hardware"]
# Per-queue metrics of RabbitMQ's rabbitmq_prometheus plugin that the files may use.
RABBITMQ_METRICS = {
    "rabbitmq_queue_messages_ready",
    "rabbitmq_queue_messages_unacked",
    "rabbitmq_queue_messages",
    "rabbitmq_queue_consumers",
}
# Kubernetes slack between the worker's grace period and the kill (README, "Operating dtee").
GRACE_SLACK_SECS = 15

failures = 0
# `-v` prints every check; otherwise one line per section and every failure.
VERBOSE = False
section_state = {"name": None, "ok": 0}


def section(name):
    """Starts a group of checks, and reports how many of the previous group passed."""
    if section_state["name"] is not None and not VERBOSE:
        print(f"   ok: {section_state['name']}: {section_state['ok']} checks")
    section_state.update(name=name, ok=0)
    if VERBOSE and name is not None:
        print(f"-- {name}")


def ok(message):
    section_state["ok"] += 1
    if VERBOSE:
        print(f"   ok: {message}")


def fail(message):
    global failures
    failures += 1
    print(f"   FAIL: {message}")


def check(condition, message, why=""):
    if condition:
        ok(message)
    else:
        fail(f"{message}{': ' + why if why else ''}")
    return condition


def rel(path):
    return path.relative_to(ROOT)


# --- Parsing ---------------------------------------------------------------------------------

def parse_all():
    """Every YAML, JSON and TOML file under deploy/ parses."""
    section("parsing")
    parsed = {}
    for path in sorted(DEPLOY.rglob("*")):
        if not path.is_file():
            continue
        suffix = path.suffix
        try:
            if suffix in (".yml", ".yaml"):
                docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
                if not docs:
                    raise ValueError("no document")
                parsed[path] = docs
            elif suffix == ".json":
                parsed[path] = [json.loads(path.read_text())]
            elif suffix == ".toml":
                parsed[path] = [tomllib.loads(path.read_text())]
            else:
                continue
        except Exception as error:  # noqa: BLE001 - any parse error is a failure to report
            fail(f"{rel(path)} does not parse: {error}")
            continue
    check(not failures, f"{len(parsed)} YAML, JSON and TOML files under deploy/ parse")
    return parsed


def doc(parsed, relative):
    path = ROOT / relative
    if path not in parsed:
        raise LookupError(f"{relative} is missing or does not parse")
    return parsed[path]


# --- What the code says ------------------------------------------------------------------------

def code_facts():
    """Reads, from the Rust sources, what the operator files must agree with."""
    facts = {}
    protocol = (ROOT / "schemas/src/protocol.rs").read_text()
    match = re.search(r"pub const DEFAULT_DELIVERY_LIMIT: u32 = (\d+);", protocol)
    if not match:
        raise SystemExit("FAIL: DEFAULT_DELIVERY_LIMIT not found in schemas/src/protocol.rs; "
                         "update deploy/validate-files.py")
    facts["delivery_limit"] = int(match.group(1))

    broker = (ROOT / "worker/src/broker/topology.rs").read_text()
    body = re.search(r"pub(?:\(crate\))? fn job_queue_arguments\(.*?\n}\n", broker, re.S)
    if not body:
        raise SystemExit("FAIL: job_queue_arguments not found in worker/src/broker/topology.rs; "
                         "update deploy/validate-files.py")
    arguments = {}
    for name, kind, value in re.findall(
        r'"(x-[a-z-]+)"\.into\(\),\s*AMQPValue::(\w+)\((.*?)\),\s*\);', body.group(0), re.S
    ):
        literal = re.fullmatch(r'LongString::from\("([^"]*)"\)', value.strip())
        if literal:
            arguments[name] = literal.group(1)
        elif "dead_letter_exchange()" in value:
            arguments[name] = f"{NAMESPACE}.dead"
        elif kind == "LongLongInt" and "delivery_limit" in value:
            arguments[name] = facts["delivery_limit"]
        else:
            raise SystemExit(f"FAIL: cannot read the value of {name} in job_queue_arguments; "
                             "update deploy/validate-files.py")
    if not arguments:
        raise SystemExit("FAIL: no arguments read from job_queue_arguments; "
                         "update deploy/validate-files.py")
    facts["job_queue_arguments"] = arguments

    config = (ROOT / "worker/src/config.rs").read_text() + \
        (ROOT / "worker/src/config/args.rs").read_text()
    main = (ROOT / "worker/src/main.rs").read_text()
    # The connection settings shared by the binaries (schemas/src/cli.rs, ConnectionArgs).
    cli = (ROOT / "schemas/src/cli.rs").read_text()
    facts["settings"] = set(re.findall(r'env = "(DTEE_[A-Z_]+)"', config)) | \
        set(re.findall(r'pub const \w+_ENV: &str = "(DTEE_[A-Z_]+)";', cli)) | \
        set(re.findall(r'from_env\("(DTEE_[A-Z_]+)"\)', main))

    metrics = (ROOT / "worker/src/metrics.rs").read_text()
    facts["metrics"] = set(re.findall(r'"(dtee_[a-z_]+)"', metrics))
    facts["histograms"] = set(re.findall(r'histogram\(\s*"(dtee_[a-z_]+)"', metrics))

    # Redis commands the worker sends: redis::cmd("X"), AsyncCommands methods on a key of
    # the namespace (`.get(self.namespace.blob_key(..))`), commands inside Lua scripts, and
    # redis::Script or dtee_net::Lua, which send EVALSHA and, after NOSCRIPT, SCRIPT LOAD (one node)
    # (on a cluster, on the primary of the keys' slot).
    commands = set()
    for path in (ROOT / "worker/src").rglob("*.rs"):
        source = path.read_text()
        commands |= {c.lower() for c in re.findall(r'(?:redis::|pipe\.)cmd\("([A-Za-z]+)"\)', source)}
        commands |= {c.lower() for c in re.findall(r"redis\.call\('([A-Za-z]+)'", source)}
        commands |= {c.lower() for c in re.findall(r"\.(\w+)\(\s*self\.namespace\.\w+_key\(", source)
                     if c not in ("arg", "key")}
        if "Script::new(" in source or "Lua::new(" in source:
            commands |= {"evalsha", "script|load"}
        if re.search(r"redis::pipe\(\)\s*\.atomic\(\)", source):
            commands |= {"multi", "exec"}
    # CONFIG GET proto-max-bulk-len is optional (worker/src/state.rs): where the ACL refuses it,
    # the worker keeps DTEE_MAX_STATE_VALUE_BYTES. The shipped ACL refuses it on purpose: CONFIG
    # GET would show the worker every setting of the server.
    commands.discard("config")
    facts["worker_redis_commands"] = commands

    health = (ROOT / "worker/src/health.rs").read_text()
    facts["paths"] = set(re.findall(r'^\s*"(/[a-z]+)" =>', health, re.M))
    return facts


# --- RabbitMQ ----------------------------------------------------------------------------------

def check_definitions(parsed, facts):
    section("deploy/rabbitmq/definitions.json")
    d = doc(parsed, "deploy/rabbitmq/definitions.json")[0]
    check(any(v["name"] == VHOST for v in d["vhosts"]), f"vhost {VHOST}")
    users = {u["name"]: u for u in d["users"]}
    for name in ("dtee-worker", "dtee-submitter", "dtee-keeper", "dtee-monitor", "dtee-admin"):
        check(name in users, f"user {name}")
    for name, user in users.items():
        check(user.get("password_hash", "") == "", f"{name} has no password in the file",
              "password hashes do not belong in the repository")
        check("impersonator" not in user.get("tags", []), f"{name} cannot impersonate",
              "the impersonator tag lets a user publish as any tenant")

    expected = facts["job_queue_arguments"]
    exchanges = {(e["vhost"], e["name"]): e for e in d["exchanges"]}
    for name, kind in ((f"{NAMESPACE}.jobs", "topic"), (f"{NAMESPACE}.intake", "topic"),
                       (f"{NAMESPACE}.results", "topic"), (f"{NAMESPACE}.dead", "fanout")):
        e = exchanges.get((VHOST, name))
        check(e is not None and e["type"] == kind and e["durable"] and not e["auto_delete"],
              f"exchange {name}: durable {kind}")
    jobs = exchanges.get((VHOST, f"{NAMESPACE}.jobs")) or {}
    check(jobs.get("arguments") == {"alternate-exchange": f"{NAMESPACE}.intake"},
          f"{NAMESPACE}.jobs has {NAMESPACE}.intake as its alternate exchange",
          "jobs of tenants without a queue of their own reach the shared queues through it "
          "(worker/src/broker/topology.rs)")
    queues = {(q["vhost"], q["name"]): q for q in d["queues"]}
    bindings = {(b["vhost"], b["source"], b["destination"], b["routing_key"])
                for b in d["bindings"] if b["destination_type"] == "queue"}
    for key in ROUTING_KEYS:
        name = f"{NAMESPACE}.jobs.{key}"
        q = queues.get((VHOST, name))
        if not check(q is not None, f"queue {name}"):
            continue
        check(q["durable"] and not q["auto_delete"], f"{name} is durable")
        check(q["arguments"] == expected, f"{name} has exactly the worker's arguments",
              f"{q['arguments']} != {expected} (worker/src/broker/topology.rs job_queue_arguments)")
        check((VHOST, f"{NAMESPACE}.intake", name, f"*.{key}") in bindings,
              f"{name} is bound to {NAMESPACE}.intake with routing key *.{key}")
    dead = queues.get((VHOST, f"{NAMESPACE}.dead"))
    check(dead is not None and dead["arguments"] == {"x-queue-type": "quorum"},
          f"queue {NAMESPACE}.dead: quorum, no other arguments")
    check((VHOST, f"{NAMESPACE}.dead", f"{NAMESPACE}.dead", "") in bindings,
          f"{NAMESPACE}.dead is bound to its exchange")
    tenants = queues.get((VHOST, f"{NAMESPACE}.tenants"))
    check(tenants is not None and tenants["arguments"] == {"x-queue-type": "stream"}
          and (VHOST, f"{NAMESPACE}.tenants", f"{NAMESPACE}.tenants", "") in bindings
          and exchanges.get((VHOST, f"{NAMESPACE}.tenants"), {}).get("type") == "fanout",
          f"the stream {NAMESPACE}.tenants, bound to its fanout exchange (tenant-queue announcements)")
    check(set(queues) == {(VHOST, f"{NAMESPACE}.jobs.{k}") for k in ROUTING_KEYS}
          | {(VHOST, f"{NAMESPACE}.dead"), (VHOST, f"{NAMESPACE}.tenants")}, "no other queues")
    check(not any(b["source"] == f"{NAMESPACE}.jobs" for b in d["bindings"]),
          f"nothing is bound to {NAMESPACE}.jobs",
          "its bindings are the tenants' own queues, which workers declare")

    # Quotas: a length limit on every job queue (each tenant's own), connection and queue
    # limits on the vhost, connection and channel limits on submitters.
    policies = [p for p in d.get("policies", []) if p["vhost"] == VHOST]
    length = [p for p in policies if re.search(p["pattern"], f"{NAMESPACE}.jobs.wasm/alice")
              and p["apply-to"] == "queues"]
    check(len(length) == 1 and length[0]["definition"].get("overflow") == "reject-publish"
          and isinstance(length[0]["definition"].get("max-length"), int)
          and not re.search(length[0]["pattern"], f"{NAMESPACE}.dead"),
          "a policy limits the length of every job queue (refusing publishes beyond) and not "
          "the dead-letter queue")
    # Any tenant can dead-letter its own messages at once (a per-message TTL of 0): the
    # dead-letter queue is bounded too, dropping its oldest (refusing would leave at-least-once
    # dead letters piling up in the job queues instead).
    dead = [p for p in policies if re.search(p["pattern"], f"{NAMESPACE}.dead")
            and p["apply-to"] == "queues"]
    check(len(dead) == 1 and dead[0]["definition"].get("overflow") == "drop-head"
          and isinstance(dead[0]["definition"].get("max-length"), int)
          and isinstance(dead[0]["definition"].get("max-length-bytes"), int),
          "a policy bounds the dead-letter queue in messages and bytes, dropping the oldest")
    limits = [p for p in d.get("parameters", []) if p["vhost"] == VHOST
              and p["component"] == "vhost-limits"]
    check(len(limits) == 1 and {"max-connections", "max-queues"} <= set(limits[0]["value"]),
          f"vhost {VHOST} limits connections and queues")
    check({"max-connections", "max-channels"} <= set(users["dtee-submitter"].get("limits", {})),
          "dtee-submitter's connections and channels are limited")
    # Permissions, tried as RabbitMQ does (an unanchored regular-expression search).
    perms = {p["user"]: p for p in d["permissions"] if p["vhost"] == VHOST}
    amq_gen = "amq.gen-JzTY20BRgKO-HjmUJj0wLg"
    job_queue = f"{NAMESPACE}.jobs.wasm"
    keeper = f"{NAMESPACE}.keeper"
    reply = f"{NAMESPACE}.keeper.reply.0a1b2c3d4e5f60718293a4b5"
    cases = {
        "dtee-worker": {
            "configure": ([f"{NAMESPACE}.jobs", job_queue, f"{NAMESPACE}.results", f"{NAMESPACE}.dead"],
                          [amq_gen, "other.jobs", "amq.default"]),
            "write": ([f"{NAMESPACE}.results", f"{NAMESPACE}.dead", job_queue], [amq_gen, "amq.default"]),
            "read": ([f"{NAMESPACE}.jobs", f"{NAMESPACE}.dead", job_queue], [amq_gen]),
        },
        # Submitters declare server-named queues (configure), bind them to the results
        # exchange (write on the queue, read on the exchange), consume them (read), and
        # publish jobs (write on the jobs exchange).
        # Secrets: they declare and read their keeper reply queue, and publish requests.
        "dtee-submitter": {
            "configure": ([amq_gen, reply], [f"{NAMESPACE}.jobs", job_queue, f"{NAMESPACE}.results",
                                             f"{NAMESPACE}.dead", "amq.gen", keeper]),
            "write": ([f"{NAMESPACE}.jobs", amq_gen, keeper],
                      [job_queue, f"{NAMESPACE}.results", f"{NAMESPACE}.dead",
                       f"{NAMESPACE}.jobsx", "amq.default", reply]),
            "read": ([f"{NAMESPACE}.results", amq_gen, reply],
                     [job_queue, f"{NAMESPACE}.jobs", f"{NAMESPACE}.dead", keeper]),
        },
        # The keeper declares, binds and consumes its exchange and queue, and answers on the
        # default exchange; nothing else.
        "dtee-keeper": {
            "configure": ([keeper], [reply, f"{NAMESPACE}.jobs", job_queue, amq_gen]),
            "write": ([keeper, "amq.default"], [f"{NAMESPACE}.jobs", f"{NAMESPACE}.results",
                                               job_queue, reply]),
            "read": ([keeper], [f"{NAMESPACE}.jobs", f"{NAMESPACE}.results", job_queue, reply]),
        },
        "dtee-monitor": {
            "configure": ([], [job_queue, amq_gen]),
            "write": ([], [job_queue, amq_gen, f"{NAMESPACE}.jobs"]),
            "read": ([], [job_queue, amq_gen]),
        },
    }
    for user, kinds in cases.items():
        p = perms.get(user)
        if not check(p is not None, f"{user} has permissions on vhost {VHOST}"):
            continue
        for kind, (allowed, refused) in kinds.items():
            pattern = re.compile(p[kind]) if p[kind] else re.compile("^$")
            wrong = [n for n in allowed if not pattern.search(n)] + \
                    [n for n in refused if pattern.search(n)]
            check(not wrong, f"{user} {kind} {p[kind]!r} allows exactly what it should",
                  f"wrong for {wrong}")
    topic = [t for t in d.get("topic_permissions", []) if t["user"] == "dtee-submitter"
             and t["exchange"] == f"{NAMESPACE}.results"]
    if check(len(topic) == 1, "dtee-submitter has a topic permission on the results exchange"):
        # Results are routed `<user_id>.<job id>`; RabbitMQ expands {username} (unescaped, so
        # tenant user names must not contain a dot).
        pattern = re.compile(topic[0]["read"].replace("{username}", "dtee-submitter"))
        job_id = "sha256:" + "0123456789abcdef" * 4
        refused = ("#", "*", "sha256:*", "sha256:#", "", job_id, f"alice.{job_id}",
                   f"_.{job_id}", "dtee-submitter.#", "dtee-submitter.*",
                   f"dtee-submitter.{job_id}.x", f"dtee-submitter.x.{job_id}",
                   "dtee-submitter.reply.#", "dtee-submitter.reply.*",
                   "alice.reply.amq.gen-JzTY20BRgKO", "dtee-submitter.reply.amq.gen-x.#")
        check(pattern.search(f"dtee-submitter.{job_id}")
              and pattern.search("dtee-submitter.reply.amq.gen-JzTY20BRgKO-HjmUJj0wLg")
              and not any(pattern.search(k) for k in refused),
              "submitters may bind their own <user>.<job id> and <user>.reply.<their queue>, "
              "never a wildcard or another user's",
              "the read pattern must match exactly the user's own keys")
        check(topic[0]["write"] == "^$", "submitters may not publish results")
    topic = [t for t in d.get("topic_permissions", []) if t["user"] == "dtee-submitter"
             and t["exchange"] == f"{NAMESPACE}.jobs"]
    if check(len(topic) == 1, "dtee-submitter has a topic permission on the jobs exchange"):
        # Jobs are published `<user>.<routing key>`, so that each tenant's go to its own queue.
        pattern = re.compile(topic[0]["write"].replace("{username}", "dtee-submitter"))
        refused = ("wasm", "alice.wasm", "dtee-submitterx.wasm", "dtee-submitter.",
                   "dtee-submitter.#", "dtee-submitter.*", "x.dtee-submitter.wasm")
        check(pattern.search("dtee-submitter.wasm") and pattern.search("dtee-submitter.wasm.tpm")
              and not any(pattern.search(k) for k in refused),
              "submitters may publish jobs under their own <user>.<routing key> only")
        check(topic[0]["read"] == "^$", "nobody binds to the jobs exchange under a submitter")
    return d


# --- Redis -------------------------------------------------------------------------------------

def check_redis(facts):
    section("deploy/redis")
    directives = {}
    for line in (DEPLOY / "redis/redis.conf").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            directives[key.lower()] = value.strip()
    for key, value in (("appendonly", "yes"), ("appendfsync", "always"),
                       ("maxmemory-policy", "noeviction"), ("no-appendfsync-on-rewrite", "no"),
                       ("aof-load-truncated", "yes")):
        check(directives.get(key) == value, f"redis.conf: {key} {value}")
    check("aclfile" in directives, "redis.conf names an ACL file")
    check("requirepass" not in directives, "redis.conf has no requirepass (the ACL file rules)")
    lines = (DEPLOY / "redis/users.acl").read_text().splitlines()
    check(all(line.startswith("user ") for line in lines),
          "users.acl holds only user lines", "Redis refuses comments in an ACL file")
    users = {line.split()[1]: line.split()[2:] for line in lines}
    check("off" in users.get("default", []), "the default user is off")
    allowed = {rule[1:].lower() for rule in users.get("dtee-worker", []) if rule.startswith("+")}
    missing = sorted(facts["worker_redis_commands"] - allowed)
    check(not missing and facts["worker_redis_commands"],
          f"dtee-worker may send every command the worker's code sends "
          f"({' '.join(sorted(facts['worker_redis_commands']))})",
          f"not allowed in users.acl: {missing}")
    for name, rules in users.items():
        check(not any(r.startswith((">", "#")) or r == "nopass" for r in rules),
              f"{name} has no password in the file")


# --- Consistency between files -----------------------------------------------------------------

def port_of(address):
    return int(str(address).rsplit(":", 1)[1])


def env_list(container):
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def check_kubernetes(parsed, definitions, facts):
    section("deploy/kubernetes")
    objects = {}
    for path in sorted((DEPLOY / "kubernetes").rglob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for obj in parsed.get(path, []):
            fine = isinstance(obj, dict) and obj.get("apiVersion") and obj.get("kind") \
                and obj.get("metadata", {}).get("name")
            if check(fine, f"{rel(path)}: {obj.get('kind')} {obj.get('metadata', {}).get('name')}"):
                objects[(obj["kind"], obj["metadata"]["name"])] = obj
    kustomization = doc(parsed, "deploy/kubernetes/kustomization.yaml")[0]
    for resource in kustomization["resources"]:
        check((DEPLOY / "kubernetes" / resource).is_file(), f"kustomization resource {resource} exists")

    deployment = objects[("Deployment", "dtee-worker")]
    spec = deployment["spec"]
    template = spec["template"]
    labels = template["metadata"]["labels"]
    selector = spec["selector"]["matchLabels"]
    check(selector.items() <= labels.items(), "the Deployment's selector matches its pods")
    container = template["spec"]["containers"][0]
    env = env_list(container)
    unknown = sorted(set(env) - facts["settings"])
    check(not unknown, "the Deployment sets only DTEE_* settings the worker knows", f"unknown: {unknown}")
    grace = int(env["DTEE_SHUTDOWN_GRACE_SECS"])
    check(template["spec"]["terminationGracePeriodSeconds"] == grace + GRACE_SLACK_SECS,
          f"terminationGracePeriodSeconds = DTEE_SHUTDOWN_GRACE_SECS + {GRACE_SLACK_SECS}")
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    check(ports.get("metrics") == port_of(env["DTEE_METRICS_ADDR"]),
          "containerPort `metrics` is DTEE_METRICS_ADDR's port")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"),
                        ("startupProbe", "/healthz")):
        get = container[probe]["httpGet"]
        check(get["path"] == path and get["path"] in facts["paths"] and get["port"] == "metrics",
              f"{probe} GET {path} on the metrics port")
    for kind in ("Service", "PodDisruptionBudget"):
        obj = objects[(kind, "dtee-worker")]
        sel = obj["spec"]["selector"]
        sel = sel.get("matchLabels", sel)
        check(sel.items() <= labels.items(), f"the {kind} selects the worker pods")
    service_ports = objects[("Service", "dtee-worker")]["spec"]["ports"]
    check(any(p["targetPort"] == "metrics" for p in service_ports), "the Service exposes `metrics`")
    monitor = objects[("ServiceMonitor", "dtee-worker")]
    check(monitor["spec"]["endpoints"][0]["port"] == "metrics"
          and monitor["spec"]["selector"]["matchLabels"].items()
          <= objects[("Service", "dtee-worker")]["metadata"]["labels"].items(),
          "the ServiceMonitor scrapes the Service's metrics port")
    secret = objects[("Secret", "dtee-worker")]
    refs = [e["secretRef"]["name"] for e in container.get("envFrom", []) if "secretRef" in e]
    check(secret["metadata"]["name"] in refs
          and {"DTEE_AMQP_URL", "DTEE_REDIS_URL"} <= set(secret["stringData"]),
          "the example Secret carries the URLs the Deployment reads")
    validate_cluster.check_urls(check, "the example Secret", secret["stringData"]["DTEE_AMQP_URL"],
                                secret["stringData"]["DTEE_REDIS_URL"])

    scaled = objects[("ScaledObject", "dtee-worker")]
    check(scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"],
          "the ScaledObject scales the worker Deployment")
    queues = {q["name"] for q in definitions["queues"] if q["vhost"] == VHOST}
    for trigger in scaled["spec"]["triggers"]:
        meta = trigger["metadata"]
        check(trigger["type"] == "rabbitmq" and meta["mode"] == "QueueLength",
              "KEDA trigger: rabbitmq, QueueLength")
        check(meta["queueName"] in queues and meta["vhostName"] == VHOST,
              f"KEDA watches {meta['queueName']} in vhost {meta['vhostName']}, which definitions.json declares")
        auth = trigger["authenticationRef"]["name"]
        check(("TriggerAuthentication", auth) in objects, f"TriggerAuthentication {auth} exists")
    return grace


def check_compose(parsed, facts):
    section("deploy/compose")
    compose = doc(parsed, "deploy/compose/docker-compose.yml")[0]
    services = compose["services"]
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                check((DEPLOY / "compose" / source).resolve().exists(),
                      f"{name}: mounted {source} exists")
    worker = services["worker"]
    env = worker["environment"]
    unknown = sorted(set(env) - facts["settings"])
    check(not unknown, "the workers get only DTEE_* settings the worker knows", f"unknown: {unknown}")
    grace = int(env["DTEE_SHUTDOWN_GRACE_SECS"])
    check(worker["stop_grace_period"] == f"{grace + GRACE_SLACK_SECS}s",
          f"worker stop_grace_period = DTEE_SHUTDOWN_GRACE_SECS + {GRACE_SLACK_SECS} s")
    port = port_of(env["DTEE_METRICS_ADDR"])
    check(str(port) in [str(p) for p in worker.get("expose", [])], "workers expose the metrics port")
    check("replicas" in worker.get("deploy", {}), "the worker count is deploy.replicas")
    check(env["DTEE_AMQP_URL"].startswith("amqp://dtee-worker:") and env["DTEE_AMQP_URL"].endswith(f"/{VHOST}"),
          f"workers connect to RabbitMQ as dtee-worker, vhost {VHOST}")
    check(env["DTEE_REDIS_URL"].startswith("redis://dtee-worker:"), "workers connect to Redis as dtee-worker")
    prometheus = doc(parsed, "deploy/prometheus/prometheus.yml")[0]
    jobs = {j["job_name"]: j for j in prometheus["scrape_configs"]}
    sd = jobs["dtee-worker"]["dns_sd_configs"][0]
    check(sd["names"] == ["worker"] and sd["port"] == port,
          "Prometheus finds every worker replica by the service name and metrics port")
    for job in ("rabbitmq", "rabbitmq-queues"):
        host = jobs[job]["static_configs"][0]["targets"][0].split(":")[0]
        check(host in services, f"Prometheus job {job} scrapes the Compose service {host}")
    text = (DEPLOY / "compose/docker-compose.yml").read_text()
    check("../grafana/dtee-dashboard.json:/etc/grafana/dashboards/" in text
          and doc(parsed, "deploy/grafana/provisioning/dashboards/dtee.yml")[0]["providers"][0]
          ["options"]["path"] == "/etc/grafana/dashboards",
          "Grafana's dashboard provider reads the mounted dashboard")
    return grace


def check_systemd(facts):
    section("deploy/systemd")
    unit = (DEPLOY / "systemd/dtee-worker.service").read_text()
    settings = {}
    for line in unit.splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    env = {}
    for line in (DEPLOY / "systemd/worker.env").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    unknown = sorted(set(env) - facts["settings"])
    check(not unknown, "worker.env sets only DTEE_* settings the worker knows", f"unknown: {unknown}")
    grace = int(env["DTEE_SHUTDOWN_GRACE_SECS"])
    check(settings.get("TimeoutStopSec") == [str(grace + GRACE_SLACK_SECS)],
          f"TimeoutStopSec = DTEE_SHUTDOWN_GRACE_SECS + {GRACE_SLACK_SECS}")
    check(settings.get("EnvironmentFile") == ["/etc/dtee/worker.env"], "EnvironmentFile=/etc/dtee/worker.env")
    check(settings.get("KillSignal") == ["SIGTERM"] and settings.get("Restart") == ["on-failure"],
          "KillSignal=SIGTERM, Restart=on-failure")
    check({"/dev/sev-guest rw", "/dev/tpmrm0 rw"} <= set(settings.get("DeviceAllow", [])),
          "DeviceAllow for /dev/sev-guest and /dev/tpmrm0")
    check(settings.get("MemoryDenyWriteExecute") != ["yes"],
          "MemoryDenyWriteExecute is off (Wasmtime compiles kernels at run time)")
    validate_cluster.check_urls(check, "worker.env", env["DTEE_AMQP_URL"], env["DTEE_REDIS_URL"])
    return grace


def check_dockerfile(facts):
    section("deploy/docker/Dockerfile")
    text = (DEPLOY / "docker/Dockerfile").read_text()
    logical = re.sub(r"\\\n", " ", text)
    known = {"FROM", "RUN", "COPY", "ADD", "ENV", "ARG", "WORKDIR", "USER", "EXPOSE", "ENTRYPOINT",
             "CMD", "HEALTHCHECK", "STOPSIGNAL", "LABEL", "VOLUME", "SHELL", "ONBUILD"}
    stages = []
    bad = []
    for line in logical.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word = line.split()[0].upper()
        if word not in known:
            bad.append(word)
        if word == "FROM":
            match = re.search(r"\bAS\s+(\S+)", line, re.I)
            stages.append(match.group(1) if match else None)
        if word == "COPY":
            match = re.search(r"--from=(\S+)", line)
            if match and match.group(1) not in stages:
                bad.append(f"COPY --from={match.group(1)} (no such earlier stage)")
    check(not bad, f"Dockerfile: {len(stages)} stages, known instructions", f"{bad}")
    port = re.search(r"DTEE_METRICS_ADDR=\S*:(\d+)", text)
    check(port and f"EXPOSE {port.group(1)}" in text and f"/dev/tcp/127.0.0.1/{port.group(1)}" in text,
          "EXPOSE and HEALTHCHECK use DTEE_METRICS_ADDR's port")
    check("/healthz" in facts["paths"] and "GET /healthz" in text, "HEALTHCHECK asks /healthz")
    check(re.search(r"^USER (?!0|root)", text, re.M) is not None, "the runtime user is not root")
    check('ENTRYPOINT ["/usr/local/bin/dtee-worker"]' in text, "ENTRYPOINT dtee-worker")
    packages = re.findall(r"apt-get install -y --no-install-recommends\s+((?:[a-z0-9.+-]+\s*)+)", logical)
    names = sorted({p for group in packages for p in group.split()})
    return names


# --- Metrics and queries -----------------------------------------------------------------------

def expressions(parsed):
    """Every PromQL expression of the alerts and the dashboard, with where it comes from."""
    found = []
    for group in doc(parsed, "deploy/prometheus/alerts.yml")[0]["groups"]:
        for rule in group["rules"]:
            found.append((f"alert {rule['alert']}", rule["expr"]))
    dashboard = doc(parsed, "deploy/grafana/dtee-dashboard.json")[0]
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            found.append((f"panel {panel['title']!r}", target["expr"]))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            found.append((f"variable {variable['name']}", variable["definition"]))
    return found


def metric_names(expr):
    return set(re.findall(r"\b((?:dtee|rabbitmq)_[a-z_]+)\b", expr))


def check_metric_names(parsed, facts):
    section("metric names in alerts.yml and the dashboard")
    unknown = set()
    for where, expr in expressions(parsed):
        for name in metric_names(expr):
            if name.startswith("rabbitmq_"):
                if name not in RABBITMQ_METRICS:
                    unknown.add(f"{name} ({where})")
                continue
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            if name in facts["metrics"] and name not in facts["histograms"]:
                continue
            if base in facts["histograms"] and name != base:
                continue
            unknown.add(f"{name} ({where})")
    check(not unknown, "every metric used exists (worker/src/metrics.rs, rabbitmq_prometheus)",
          ", ".join(sorted(unknown)))


def check_dashboard(parsed, out):
    section("deploy/grafana/dtee-dashboard.json")
    dashboard = doc(parsed, "deploy/grafana/dtee-dashboard.json")[0]
    ids = [p["id"] for p in dashboard["panels"]]
    check(len(ids) == len(set(ids)), f"{len(ids)} panels with unique ids")
    check(all("gridPos" in p for p in dashboard["panels"]), "every panel has a position")
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    check({"datasource", "instance"} <= variables, "variables datasource and instance")
    check(all(p.get("datasource", {}).get("uid") == "${datasource}" for p in dashboard["panels"]
              if p["type"] != "row"), "every panel uses the selected data source")
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for needed in ("throughput", "failures by code", "latency", "in flight", "limit kills",
                   "evidence age", "ready jobs by queue"):
        check(needed in titles, f"a panel for {needed}")
    rules = []
    for index, (where, expr) in enumerate(expressions(parsed)):
        if not where.startswith(("panel", "variable")):
            continue
        if where.startswith("variable"):
            expr = re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", expr)
        expr = expr.replace("$__rate_interval", "5m").replace("$instance", ".*")
        rules.append({"record": f"dashboard:query_{index}", "expr": expr})
    (out / "dashboard-rules.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, sort_keys=False))
    ok(f"{len(rules)} dashboard queries written to {out / 'dashboard-rules.yml'} for promtool")


def kubernetes_prometheus_copy(parsed, out):
    """A copy of deploy/kubernetes/prometheus.yml for a promtool without Kubernetes discovery:
    each kubernetes_sd_configs becomes a static target, the rest stays as it is."""
    config = json.loads(json.dumps(doc(parsed, "deploy/kubernetes/prometheus.yml")[0]))
    for job in config["scrape_configs"]:
        if job.pop("kubernetes_sd_configs", None) is not None:
            job["static_configs"] = [{"targets": ["kubernetes-sd-placeholder:9464"]}]
    config["rule_files"] = [str((DEPLOY / "kubernetes" / f).resolve()) for f in config.get("rule_files", [])]
    (out / "kubernetes-prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))


def check_scrape(path, parsed, facts):
    section("the metrics a worker serves")
    text = Path(path).read_text()
    served = set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    check(served, f"{len(served)} metric families served")
    missing = set()
    for where, expr in expressions(parsed):
        for name in metric_names(expr):
            if name.startswith("dtee_") and name not in served and \
                    re.sub(r"_(bucket|sum|count)$", "", name) not in served:
                missing.add(f"{name} ({where})")
    check(not missing, "the worker serves every dtee_ metric the alerts and dashboard use",
          ", ".join(sorted(missing)))
    undocumented = {n for n in served if n.startswith("dtee_")} - facts["metrics"]
    check(not undocumented, "every served dtee_ metric is registered in worker/src/metrics.rs",
          ", ".join(sorted(undocumented)))


def guarded(what, function, *args):
    """Runs one group of checks; a file without the structure it expects is a failure of that
    group, not a crash of the whole script."""
    try:
        return function(*args)
    except Exception as error:  # noqa: BLE001 - reported as a failed check
        fail(f"{what}: unexpected structure: {type(error).__name__}: {error}")
        return None


def main(argv):
    global VERBOSE
    if len(argv) > 1 and argv[1] == "-v":
        VERBOSE = True
        argv = argv[:1] + argv[2:]
    parsed = parse_all()
    facts = code_facts()
    if len(argv) == 3 and argv[1] == "--metrics":
        guarded("metrics", check_scrape, argv[2], parsed, facts)
    elif len(argv) == 2:
        out = Path(argv[1])
        # Files for validate.sh's tools first, so that a failed check below does not hide them.
        guarded("writing the Kubernetes Prometheus copy", kubernetes_prometheus_copy, parsed, out)
        definitions = guarded("definitions.json", check_definitions, parsed, facts)
        guarded("redis", check_redis, facts)
        graces = {
            "kubernetes": guarded("kubernetes", check_kubernetes, parsed, definitions, facts),
            "compose": guarded("compose", check_compose, parsed, facts),
            "systemd": guarded("systemd", check_systemd, facts),
        }
        check(len(set(graces.values())) == 1, f"one grace period everywhere: {graces}")
        packages = guarded("Dockerfile", check_dockerfile, facts)
        if packages:
            (out / "dockerfile-packages.txt").write_text("\n".join(packages) + "\n")
        guarded("clusters and TLS", validate_cluster.check_cluster, parsed, facts, ROOT, DEPLOY, doc, check, section)
        guarded("metric names", check_metric_names, parsed, facts)
        guarded("dashboard", check_dashboard, parsed, out)
    else:
        print(__doc__)
        return 2
    section(None)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
