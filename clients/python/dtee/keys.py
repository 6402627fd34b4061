"""Names: namespaces, tenants, state keys, and the Redis keys and routing keys built from them
(PROTOCOL.md §4, §5, §7)."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Optional

from .errors import InvalidJobError, InvalidStateKeyError

_NAMESPACE = re.compile(r"[a-z0-9][a-z0-9_-]{0,47}")
_TENANT = re.compile(r"[A-Za-z0-9_.@-]{1,64}")

#: Every routing-key suffix of an ``attestation.platform`` requirement (PROTOCOL.md §5).
PLATFORM_REQUIREMENTS = ("any", "tpm", "snp", "any-hardware")


def check_namespace(namespace: str) -> str:
    """Returns ``namespace`` if it is 1 to 48 of ``a-z 0-9 _ -`` starting with a letter or digit;
    raises :class:`ValueError` otherwise."""
    if not isinstance(namespace, str) or not _NAMESPACE.fullmatch(namespace):
        raise ValueError(
            f"namespace {namespace!r} must be 1 to 48 of a-z, 0-9, '_' and '-', "
            "starting with a letter or a digit"
        )
    return namespace


def is_valid_tenant(tenant: str) -> bool:
    """Whether ``tenant`` can name a tenant: 1 to 64 of ``A-Z a-z 0-9 _ . @ -``."""
    return isinstance(tenant, str) and _TENANT.fullmatch(tenant) is not None


def is_routable_tenant(tenant: str) -> bool:
    """Whether an AMQP user may submit jobs: a valid tenant without ``.``, and not ``_``."""
    return is_valid_tenant(tenant) and "." not in tenant and tenant != "_"


def job_routing_key(target: str, platform: Optional[str] = None) -> str:
    """The job routing key: the target, with ``.tpm``, ``.snp`` or ``.any-hardware`` when the job
    requires that platform (nothing for ``any`` or no requirement)."""
    if platform in (None, "any"):
        return target
    if platform not in PLATFORM_REQUIREMENTS:
        raise InvalidJobError(f"unknown attestation platform {platform!r}")
    return f"{target}.{platform}"


def submit_routing_key(user: str, target: str, platform: Optional[str] = None) -> str:
    """``<user>.<target>[.<platform>]``: what a job is published under on ``<ns>.jobs``."""
    return f"{user}.{job_routing_key(target, platform)}"


def result_routing_key(user: str, job_id: str) -> str:
    """``<user>.<job id>``: what a job's answers to ``user`` are published under on
    ``<ns>.results``."""
    return f"{user}.{job_id}"


def blob_key(namespace: str, digest: str) -> str:
    """``<ns>:blob:<digest>``."""
    return f"{namespace}:blob:{digest}"


def result_key(namespace: str, job_id: str) -> str:
    """``<ns>:result:<job id>``: a success or final failure."""
    return f"{namespace}:result:{job_id}"


def failure_key(namespace: str, job_id: str) -> str:
    """``<ns>:failure:<job id>``: the latest failure that is not final."""
    return f"{namespace}:failure:{job_id}"


def revoked_key(namespace: str, tenant: str, job_id: str) -> str:
    """``<ns>:revoked:<tenant>:<job id>``: the tenant cancelled its job."""
    return f"{namespace}:revoked:{tenant}:{job_id}"


@dataclass(frozen=True)
class StateKey:
    """A state key ``<tenant>/<path>`` (PROTOCOL.md §3), parsed by :meth:`parse`."""

    tenant: str
    path: str
    group: Optional[str]

    @classmethod
    def parse(cls, key: str) -> "StateKey":
        """Parses ``<tenant>/<path>``; raises :class:`~dtee.errors.InvalidStateKeyError` when the
        key is not 1 to 256 bytes, holds a control character, has no ``/``, an invalid tenant,
        an empty path, or a hash group (the first non-empty ``{...}``) containing ``/``."""

        def bad(why: str) -> InvalidStateKeyError:
            return InvalidStateKeyError(f"state key {key[:80]!r} {why}")

        if not isinstance(key, str):
            raise InvalidStateKeyError(f"state key {key!r} is not a string")
        try:
            size = len(key.encode("utf-8"))
        except UnicodeEncodeError:
            raise bad("is not valid Unicode") from None
        if size == 0 or size > 256:
            raise bad("must be 1 to 256 bytes")
        if any(unicodedata.category(ch) == "Cc" for ch in key):
            raise bad("must not contain control characters")
        tenant, slash, path = key.partition("/")
        if not slash:
            raise bad("must be written <tenant>/<path>")
        if not is_valid_tenant(tenant):
            raise bad("must start with a tenant of 1 to 64 letters, digits, '_', '.', '@', '-'")
        if not path:
            raise bad("has an empty path")
        group = None
        open_at = path.find("{")
        if open_at >= 0:
            close_at = path.find("}", open_at + 1)
            if close_at > open_at + 1:
                group = path[open_at + 1 : close_at]
        if group is not None and "/" in group:
            raise bad("has a hash group containing '/'")
        return cls(tenant, path, group)

    @property
    def hash_tag(self) -> str:
        """The Redis hash tag, without braces: ``<tenant>`` or ``<tenant>/<group>``."""
        return self.tenant if self.group is None else f"{self.tenant}/{self.group}"

    def value_key(self, namespace: str) -> str:
        """``<ns>:state:{tag}:<path>``: the Redis key of the value."""
        return f"{namespace}:state:{{{self.hash_tag}}}:{self.path}"

    def version_key(self, namespace: str) -> str:
        """``<ns>:ver:{tag}:<path>``: the Redis key of the version."""
        return f"{namespace}:ver:{{{self.hash_tag}}}:{self.path}"

    def __str__(self) -> str:
        return f"{self.tenant}/{self.path}"
