"""Consistency checks of the clustered, TLS deployments under deploy/ (used by
validate-files.py): deploy/compose/docker-compose.cluster.yml, deploy/kubernetes-cluster/ and
deploy/rabbitmq/advanced.config. Names that clients connect to must be names the certificates
vouch for, every node must be listed where the worker reads its settings, and every quorum
queue must get three replicas."""

from __future__ import annotations

import re
from fnmatch import fnmatchcase

QUORUM_SIZE = re.compile(r"\{\s*quorum_cluster_size\s*,\s*3\s*\}")


def amqp_hosts(setting: str) -> list[tuple[str, str, int, str]]:
    """(scheme, user, port, host) of each URL of an AMQP setting, as the worker splits it."""
    out = []
    for url in filter(None, (u.strip() for u in setting.split(","))):
        match = re.fullmatch(r"(amqps?)://([^:@/]+)(?::[^@]*)?@([^:/]+):(\d+)/([^/]*)", url)
        if not match:
            raise ValueError(f"{url!r} is not amqp[s]://user:password@host:port/vhost")
        out.append((match[1], match[2], int(match[4]), match[3]))
    return out


def redis_hosts(url: str) -> tuple[str, str, list[str]]:
    """(scheme, user, [host:port, ...]) of a Redis URL (one node or a cluster)."""
    match = re.fullmatch(r"(rediss?(?:\+cluster)?)://([^:@/]+)(?::[^@]*)?@([^/]+)/?", url.strip())
    if not match:
        raise ValueError(f"{url!r} is not redis[s][+cluster]://user:password@host:port[,host:port]/")
    return match[1], match[2], match[3].split(",")


def check_urls(check, where: str, amqp: str, redis: str) -> None:
    """The URL settings parse as the worker reads them (node lists, TLS or not)."""
    try:
        amqp_hosts(amqp)
        redis_hosts(redis)
        check(True, f"{where}: the AMQP and Redis URLs are settings the worker accepts")
    except ValueError as error:
        check(False, f"{where}: the AMQP and Redis URLs are settings the worker accepts", str(error))


def covered(host: str, names: list[str]) -> bool:
    """Whether a certificate with DNS names `names` vouches for `host` (one-label wildcards)."""
    return any(fnmatchcase(host, name) and host.count(".") == name.count(".") for name in names)


def check_cluster(parsed, facts, root, deploy, doc, check, section) -> None:
    section("clusters and TLS")
    advanced = (deploy / "rabbitmq/advanced.config").read_text()
    check(bool(QUORUM_SIZE.search(advanced)), "advanced.config gives every quorum queue three replicas")
    check('cp "$REPO/deploy/rabbitmq/advanced.config"' in (deploy / "local/cluster.sh").read_text(),
          "deploy/local/cluster.sh (tested in CI) runs its nodes with advanced.config")

    # Compose.
    compose = doc(parsed, "deploy/compose/docker-compose.cluster.yml")[0]
    services = compose["services"]
    rabbits = sorted(name for name in services if name.startswith("rabbitmq-"))
    redises = sorted(name for name in services if re.fullmatch(r"redis-\d+", name))
    check(len(rabbits) == 3 and len(redises) == 6, "Compose: three RabbitMQ nodes and six Redis nodes")
    generated = (deploy / "compose/.gitignore").read_text().split()
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith(".") and source.lstrip("./") not in ("tls", "erlang-cookie"):
                check((deploy / "compose" / source).resolve().exists(), f"Compose cluster, {name}: mounted {source} exists")
    check({"tls/", "erlang-cookie"} <= set(generated), "the generated TLS files and cookie are kept out of git")
    for name in rabbits:
        check(any(v.startswith("../rabbitmq/advanced.config:/etc/rabbitmq/advanced.config") for v in services[name]["volumes"]),
              f"{name} runs with advanced.config")
    conf = (deploy / "compose/rabbitmq/cluster.conf").read_text()
    listed = set(re.findall(r"classic_config\.nodes\.\d+\s*=\s*rabbit@(\S+)", conf))
    check(listed == set(rabbits), "cluster.conf lists every RabbitMQ node", f"{listed} vs {rabbits}")
    worker = services["worker"]["environment"]
    unknown = sorted(set(worker) - facts["settings"])
    check(not unknown, "Compose cluster: the workers get only settings the worker knows", f"unknown: {unknown}")
    try:
        nodes = amqp_hosts(worker["DTEE_AMQP_URL"])
        scheme, user, seeds = redis_hosts(worker["DTEE_REDIS_URL"])
    except ValueError as error:
        check(False, "Compose cluster: the worker's URLs parse", str(error))
        return
    port = re.search(r"listeners\.ssl\.default\s*=\s*(\d+)", conf)
    check(sorted(host for *_, host in nodes) == rabbits
          and all(s == "amqps" and u == "dtee-worker" and p == int(port[1]) for s, u, p, _ in nodes),
          "Compose cluster: workers list every RabbitMQ node, amqps as dtee-worker on the TLS listener")
    check(scheme == "rediss+cluster" and user == "dtee-worker"
          and all(seed.split(":")[0] in redises for seed in seeds),
          "Compose cluster: workers reach Redis Cluster over TLS as dtee-worker through its nodes")
    header = (deploy / "compose/docker-compose.cluster.yml").read_text()
    sans = re.search(r"make-certs\.sh tls \\\n#\s+(\S+)", header)
    names = [n.split(":", 1)[1] for n in sans[1].split(",")] if sans else []
    check(set(rabbits + redises) <= set(names), "Compose cluster: the certificate made as shown names every node")
    check(all(worker[f"DTEE_TLS_{k}_FILE"].startswith("/run/dtee/tls/") for k in ("CA", "CERT", "KEY")),
          "Compose cluster: the workers' TLS files are in the mounted tls folder")

    # Kubernetes.
    objects = {}
    for path, docs in parsed.items():
        if path.parent == deploy / "kubernetes-cluster":
            for item in docs:
                if isinstance(item, dict) and "metadata" in item:  # not the kustomization or patch
                    objects[(item["kind"], item["metadata"]["name"])] = item
    certs = {name: o["spec"] for (kind, name), o in objects.items() if kind == "Certificate"}
    secrets = {spec["secretName"]: spec for spec in certs.values()}
    rabbit = objects[("RabbitmqCluster", "dtee-rabbitmq")]["spec"]
    check(rabbit["replicas"] == 3 and rabbit["tls"]["secretName"] in secrets
          and rabbit["tls"]["caSecretName"] in secrets and rabbit["tls"]["disableNonTLSListeners"],
          "Kubernetes: three RabbitMQ nodes, TLS only, with cert-manager's certificates")
    check(bool(QUORUM_SIZE.search(rabbit["rabbitmq"]["advancedConfig"])),
          "Kubernetes: the RabbitMQ cluster's advancedConfig gives quorum queues three replicas")
    redis = objects[("StatefulSet", "dtee-redis")]["spec"]
    pod = redis["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    tls_volume = next(v for v in pod["volumes"] if v["name"] == "tls")
    check(redis["replicas"] == 6 and tls_volume["secret"]["secretName"] in secrets,
          "Kubernetes: six Redis nodes with cert-manager's certificate")
    announced = env["DTEE_REDIS_ANNOUNCE_HOSTNAME"].replace("$(POD_NAME)", "dtee-redis-0")
    redis_names = secrets[tls_volume["secret"]["secretName"]]["dnsNames"]
    check(covered(announced, redis_names), "Kubernetes: the Redis certificate names what the nodes announce")
    patch = (deploy / "kubernetes-cluster/tls-patch.yaml").read_text()
    client = re.search(r"secretName:\s*(\S+)", patch)[1]
    check(client in secrets and "client auth" in secrets[client]["usages"],
          "Kubernetes: workers and the keeper present cert-manager's client certificate")
    example = doc(parsed, "deploy/kubernetes-cluster/secret.example.yaml")[0]["stringData"]
    try:
        nodes = amqp_hosts(example["DTEE_AMQP_URL"])
        scheme, user, seeds = redis_hosts(example["DTEE_REDIS_URL"])
    except ValueError as error:
        check(False, "Kubernetes cluster example: the URLs parse", str(error))
        return
    rabbit_names = secrets[rabbit["tls"]["secretName"]]["dnsNames"]
    check(len(nodes) == 3 and all(s == "amqps" and covered(h, rabbit_names) for s, _, _, h in nodes),
          "Kubernetes example: every RabbitMQ node, amqps, names its certificate vouches for")
    check(scheme == "rediss+cluster" and all(covered(seed.split(":")[0], redis_names) for seed in seeds),
          "Kubernetes example: Redis Cluster over TLS, names its certificate vouches for")
