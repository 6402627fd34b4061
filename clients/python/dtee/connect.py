"""Connection settings, as the Rust worker and `dtee` read them (README.md, "Clusters and TLS").

- AMQP: one URL or several (a comma-separated string or a sequence), ``amqp://`` or ``amqps://``;
  the client connects to the first node that answers, in order (pika tries each in turn).
- Redis: ``redis://`` or ``rediss://`` for one node; ``redis+cluster://`` or
  ``rediss+cluster://u:p@host:port,host:port/`` for Redis Cluster (the hosts are seed nodes; the
  rest is discovered). Cluster reads go to primaries (never to replicas), as the waiting
  procedure of PROTOCOL.md §9 requires.
- TLS: a CA file (the system's roots without one), and a client certificate and key (both or
  neither). Host names are verified.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any, Optional, Sequence
from urllib.parse import unquote

import pika
import redis
from redis.cluster import ClusterNode, RedisCluster


@dataclass(frozen=True)
class Tls:
    """TLS files for ``amqps://``, ``rediss://`` and ``rediss+cluster://`` (PEM)."""

    ca_file: Optional[str] = None
    cert_file: Optional[str] = None
    key_file: Optional[str] = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("a TLS client certificate needs its key, and a key its certificate")

    def context(self) -> ssl.SSLContext:
        """A client context: the CA file (or the system's roots), the client certificate if
        any, host names verified."""
        context = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file is not None:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context


def amqp_urls(setting: str | Sequence[str]) -> list[str]:
    """The AMQP URLs of a setting: a comma-separated string or a sequence of URLs."""
    parts = setting.split(",") if isinstance(setting, str) else list(setting)
    urls = [url.strip() for url in parts if url and url.strip()]
    if not urls:
        raise ValueError("no AMQP URL given")
    for url in urls:
        if not url.lower().startswith(("amqp://", "amqps://")):
            raise ValueError(f"{_redact(url)} is not an amqp:// or amqps:// URL")
    return urls


def amqp_parameters(setting: str | Sequence[str], tls: Tls, connection_name: str) -> list[pika.URLParameters]:
    """pika parameters for each URL of ``setting``; every URL must name the same user (the
    tenant)."""
    result = []
    for url in amqp_urls(setting):
        parameters = pika.URLParameters(url)
        parameters.client_properties = {"connection_name": connection_name}
        if url.lower().startswith("amqps://"):
            parameters.ssl_options = pika.SSLOptions(tls.context(), server_hostname=parameters.host)
        result.append(parameters)
    users = {parameters.credentials.username for parameters in result}
    if len(users) != 1:
        raise ValueError(f"the AMQP URLs name different users ({', '.join(sorted(users))}): the user is the tenant")
    return result


def is_cluster_url(url: str) -> bool:
    """Whether ``url`` asks for Redis Cluster (``redis+cluster://``, ``rediss+cluster://``)."""
    return url.strip().lower().startswith(("redis+cluster://", "rediss+cluster://"))


@dataclass(frozen=True)
class ClusterUrl:
    """A parsed cluster URL: its seed nodes, credentials and whether it uses TLS."""

    nodes: list[tuple[str, int]]
    username: Optional[str]
    password: Optional[str]
    tls: bool


def parse_cluster_url(url: str) -> ClusterUrl:
    """``rediss+cluster://u:p@a:1,b:2/`` → nodes ``[(a, 1), (b, 2)]``, user ``u``, password
    ``p``, TLS. A node without a port gets 6379."""
    scheme, sep, rest = url.strip().partition("://")
    if not sep or scheme.lower() not in ("redis+cluster", "rediss+cluster"):
        raise ValueError(f"{_redact(url)} is not a redis+cluster:// or rediss+cluster:// URL")
    authority = rest.split("/", 1)[0].split("?", 1)[0]
    userinfo, at, hosts = authority.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    nodes = []
    for host in hosts.split(","):
        host = host.strip()
        if not host:
            continue
        if host.startswith("["):  # [v6]:port
            address, _, port = host[1:].partition("]")
            port = port.lstrip(":")
        else:
            address, _, port = host.rpartition(":") if ":" in host else (host, "", "")
        try:
            number = int(port) if port else 6379
        except ValueError:
            raise ValueError(f"{_redact(url)}: {host!r} has no valid port") from None
        if not address or not 0 < number < 65536:
            raise ValueError(f"{_redact(url)}: {host!r} is not host:port")
        nodes.append((address, number))
    if not nodes:
        raise ValueError(f"{_redact(url)} names no node")
    return ClusterUrl(nodes, username, password, scheme.lower() == "rediss+cluster")


def redis_client(url: str, tls: Tls) -> Any:
    """A ``redis.Redis`` for one node, or a ``redis.cluster.RedisCluster`` for a cluster URL
    (reads from primaries only)."""
    files = {}
    if tls.ca_file is not None:
        files["ssl_ca_certs"] = tls.ca_file
    if tls.cert_file is not None:
        files.update(ssl_certfile=tls.cert_file, ssl_keyfile=tls.key_file)
    if is_cluster_url(url):
        parsed = parse_cluster_url(url)
        options: dict[str, Any] = {}
        if parsed.tls:
            options = dict(files, ssl=True, ssl_cert_reqs="required", ssl_check_hostname=True)
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in parsed.nodes],
            username=parsed.username,
            password=parsed.password,
            **options,  # no load balancing strategy: every command goes to a primary
        )
    if url.strip().lower().startswith("rediss://"):
        return redis.Redis.from_url(url, ssl_cert_reqs="required", ssl_check_hostname=True, **files)
    return redis.Redis.from_url(url)


def get_many(client: Any, keys: list[str]) -> list[Optional[bytes]]:
    """The values of ``keys`` in order: one ``MGET`` on a single node; on a cluster, keys of
    several slots are read per slot (``MGET`` refuses to cross slots)."""
    if not keys:
        return []
    if isinstance(client, RedisCluster):
        return client.mget_nonatomic(keys)
    return client.mget(keys)


def _redact(url: str) -> str:
    """``url`` without its password."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.partition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{host}"
