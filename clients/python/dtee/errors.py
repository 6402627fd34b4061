"""Typed errors raised by the dtee client.

Every error the package raises on purpose derives from :class:`DteeError`. Errors about values
the caller passed (an invalid job, JSON that cannot be canonicalized) also derive from
:class:`ValueError`, and the waiting timeout also derives from the built-in
:class:`TimeoutError`, so callers may catch either family.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:  # pragma: no cover
    from .result import Result


class DteeError(Exception):
    """Base class of every error raised by this package."""


class CanonicalizationError(DteeError, ValueError):
    """The JSON text or value has no canonical form (PROTOCOL.md §2): not strict JSON, a
    duplicate object name, an integer beyond ±2^53 that is not in canonical form, NaN, a lone
    surrogate, and so on."""


class InvalidJobError(DteeError, ValueError):
    """The job is not a valid ``dtee.job/v1`` spec (a ``null``, a bad name, an unknown field,
    ...). Nothing was sent."""


class InvalidStateKeyError(InvalidJobError):
    """A state key is not ``<tenant>/<path>`` as PROTOCOL.md §3 defines it."""


class UnroutableUserError(DteeError, ValueError):
    """The AMQP user name cannot carry jobs: a dtee user name is 1 to 64 of letters, digits,
    ``_``, ``@`` and ``-`` (no ``.``, and not ``_``), since jobs are published under
    ``<user>.<routing key>``."""


class BrokerError(DteeError):
    """RabbitMQ failed or refused an operation."""


class NoRouteError(BrokerError):
    """The broker returned the job (``basic.return``, 312 NO_ROUTE): no queue serves its routing
    key, because no worker that serves the target (with the platform the job requires) has ever
    started in the namespace. The job was not accepted."""

    def __init__(self, routing_key: str, namespace: str):
        self.routing_key = routing_key
        self.namespace = namespace
        super().__init__(
            f"no queue serves routing key {routing_key!r} in namespace {namespace!r}: start a "
            "worker that serves this target (with the attestation platform the job requires) first"
        )


class BrokerRefusedError(BrokerError):
    """The broker did not accept the job: a ``nack`` (say the tenant's queue is at its length
    limit), or the channel was closed by the broker (a ``user_id`` that is not the connection's
    user, an exchange that does not exist, ...). The job was not accepted; publishing it again
    later is safe."""

    def __init__(self, message: str, reply_code: Optional[int] = None):
        self.reply_code = reply_code
        super().__init__(message)


class NamespaceNotFoundError(BrokerRefusedError):
    """The namespace's exchanges do not exist (``NOT_FOUND``): no worker has ever started in it."""


class WaitTimeoutError(DteeError, TimeoutError):
    """No result arrived in time. The job may still run: waiting again (``Client.wait``) or
    publishing it again is safe."""

    def __init__(self, job_ids: list[str], timeout_s: float):
        self.job_ids = list(job_ids)
        self.timeout_s = timeout_s
        shown = ", ".join(self.job_ids[:3]) + (" ..." if len(self.job_ids) > 3 else "")
        super().__init__(f"no result for {shown} within {timeout_s:g} s")


class MalformedResultError(DteeError, ValueError):
    """A message or cached value that should be a ``dtee.result/v1`` is not one."""


class JobFailedError(DteeError):
    """The job ran (or was refused) and its result says ``failed``.

    ``code`` is the error code (PROTOCOL.md §6; branch on it), ``message`` the human-readable
    text (not stable), ``result`` the whole :class:`dtee.Result`.
    """

    def __init__(self, code: str, message: str, result: "Result"):
        self.code = code
        self.message = message
        self.result = result
        super().__init__(f"job {result.job_id} failed: {code}: {message}")


class PolicyError(DteeError, ValueError):
    """A verification policy cannot be read, or has an unknown key."""
