"""The dtee client: blobs in Redis, jobs to RabbitMQ, results back (PROTOCOL.md §1-§9)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import pika
import pika.exceptions

from . import jcs
from .connect import Tls, amqp_parameters, get_many, redis_client
from .errors import (
    BrokerError,
    BrokerRefusedError,
    NamespaceNotFoundError,
    NoRouteError,
    UnroutableUserError,
)
from .job import Job, job_body, routing_key_of
from .keys import (
    StateKey,
    blob_key,
    check_namespace,
    is_routable_tenant,
    result_key,
    revoked_key,
)
from .result import Result
from .waiter import ResultWaiter, Watch

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2f"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379"
JOB_MESSAGE_TYPE = "dtee.job/v1"
HEADER_SUBMITTED_AT = "dtee-submitted-unix-ms"
#: How many times :meth:`Client.submit` publishes a nacked job again by default.
DEFAULT_NACK_RETRIES = 2


def nack_backoff(attempt: int) -> float:
    """The pause, in seconds, before the ``attempt``-th resend of a nacked job: 0.1, 0.4, 1.6
    and so on, capped at 5."""
    return min(0.1 * 4 ** (attempt - 1), 5.0)

JobLike = Job | Mapping[str, Any] | bytes | str


class Client:
    """A connection to a dtee deployment: one ``pika.BlockingConnection`` (a channel in confirm
    mode to publish, and one result queue, :attr:`waiter`, for every wait) and one Redis client.

    ``amqp_url``'s user name is the tenant: it is sent as ``user_id`` on every job, prefixes the
    routing keys, and owns the state keys a job may bind. It may list several nodes of a
    RabbitMQ cluster (comma-separated, or a sequence): the first that answers is used.
    ``redis_url`` must reach the Redis primary; ``redis+cluster://`` or ``rediss+cluster://``
    with seed nodes (``host:port,host:port``) selects Redis Cluster. ``amqps://`` and
    ``rediss://`` use TLS with ``tls`` (:class:`~dtee.connect.Tls`: a CA file, a client
    certificate and key; host names are verified). ``namespace`` names the deployment's
    exchanges and keys (default ``dtee``).

    Use it as a context manager, or call :meth:`close`. Not thread safe (pika is not): use one
    client per thread.
    """

    def __init__(
        self,
        amqp_url: str | Sequence[str] = DEFAULT_AMQP_URL,
        redis_url: str = DEFAULT_REDIS_URL,
        namespace: str = "dtee",
        *,
        connection_name: str = "dtee python client",
        tls: Optional[Tls] = None,
        nack_retries: int = DEFAULT_NACK_RETRIES,
    ):
        self.namespace = check_namespace(namespace)
        #: How many times a job the broker nacks is published again (after 0.1 s, then 0.4 s)
        #: before :class:`~dtee.errors.BrokerRefusedError`. A queue at its length limit refuses
        #: every resend too, but a quorum queue also nacks when it could not register the
        #: publisher in time on a busy broker, and a resend then goes through. A resend of a job
        #: the broker kept after all is a duplicate the workers answer once. ``0``: no resend.
        self.nack_retries = nack_retries
        tls = tls or Tls()
        parameters = amqp_parameters(amqp_url, tls, connection_name)
        #: The AMQP user: the tenant of every job this client submits.
        self.user: str = parameters[0].credentials.username
        #: A ``redis.Redis`` (one node) or ``redis.cluster.RedisCluster``.
        self.redis = redis_client(redis_url, tls)
        self._waiter: Optional[ResultWaiter] = None
        self._channel = None
        try:
            self._connection = pika.BlockingConnection(parameters)
        except (pika.exceptions.AMQPError, OSError) as error:  # OSError: TLS verification
            self.redis.close()
            raise BrokerError(f"cannot connect to RabbitMQ: {error!r}") from error

    # -- life ----------------------------------------------------------------------------------

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the AMQP connection (the broker deletes the result queue) and Redis."""
        try:
            if self._connection.is_open:
                self._connection.close()
        except pika.exceptions.AMQPError:
            pass
        self.redis.close()

    @property
    def waiter(self) -> ResultWaiter:
        """The result queue (created on first use, again after a channel failure)."""
        if self._waiter is None or self._waiter.closed:
            self._waiter = ResultWaiter(self)
        return self._waiter

    def _publish_channel(self):
        if self._channel is None or not self._channel.is_open:
            try:
                self._channel = self._connection.channel()
                self._channel.confirm_delivery()
            except pika.exceptions.AMQPError as error:
                self._channel = None
                raise self._broker_error(error, "opening a channel") from error
        return self._channel

    def _broker_error(self, error: BaseException, doing: str) -> BrokerError:
        """Maps a pika exception to this package's errors."""
        if isinstance(error, pika.exceptions.ChannelClosedByBroker):
            if error.reply_code == 404:
                return NamespaceNotFoundError(
                    f"{doing}: {error.reply_text} (has a worker ever started in namespace "
                    f"{self.namespace!r}?)",
                    error.reply_code,
                )
            return BrokerRefusedError(f"{doing}: the broker closed the channel: {error.reply_code} {error.reply_text}", error.reply_code)
        if isinstance(error, (pika.exceptions.ChannelClosed, pika.exceptions.ChannelWrongStateError)):
            return BrokerRefusedError(f"{doing}: the channel is closed: {error!r}")
        return BrokerError(f"{doing}: {error!r}")

    # -- blobs and state -----------------------------------------------------------------------

    def put_blob(self, data: bytes) -> str:
        """Stores ``data`` under its digest (``SET <ns>:blob:<digest> data NX``: only if absent)
        and returns the digest. Kernels and large inputs are blobs."""
        data = bytes(data)
        digest = jcs.digest(data)
        self.redis.set(blob_key(self.namespace, digest), data, nx=True)
        return digest

    def put_file(self, path: str | Path) -> str:
        """:meth:`put_blob` of a file's bytes (a kernel, say)."""
        return self.put_blob(Path(path).read_bytes())

    def state_get(self, key: str) -> tuple[Optional[bytes], int]:
        """A state key's value (``None`` when absent) and version (0 when never written), read
        with one ``MGET``. For operators and tests; jobs read state through their bindings."""
        parsed = StateKey.parse(key)
        value, version = get_many(
            self.redis, [parsed.value_key(self.namespace), parsed.version_key(self.namespace)]
        )
        return value, int(version) if version is not None else 0

    def state_put(self, key: str, value: bytes) -> int:
        """Replaces a state key's value and bumps its version atomically (``MULTI; SET; INCR;
        EXEC``); returns the new version. Jobs that read the old value will conflict and rerun."""
        parsed = StateKey.parse(key)
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(parsed.value_key(self.namespace), bytes(value))
        pipe.incr(parsed.version_key(self.namespace))
        return int(pipe.execute()[1])

    def cancel(self, job_id: str, ttl_secs: int = 604800) -> None:
        """Revokes this tenant's job for ``ttl_secs``: ``SET <ns>:revoked:<user>:<job id> 1 EX
        ttl``. A worker that receives the job from this tenant afterwards answers ``cancelled``
        without running it; a job that already has a final result keeps it."""
        if not jcs.is_digest(job_id):
            raise ValueError(f"{job_id!r} is not a job id")
        self.redis.set(revoked_key(self.namespace, self.user, job_id), b"1", ex=max(int(ttl_secs), 1))

    def cached_result(self, job_id: str) -> Optional[Result]:
        """The cached success or final failure of a job, if any (no waiting)."""
        value = self.redis.get(result_key(self.namespace, job_id))
        return Result.stored_for(job_id, value) if value is not None else None

    def check_topology(self) -> None:
        """Raises :class:`~dtee.errors.NamespaceNotFoundError` unless ``<ns>.jobs`` exists (a
        worker declared it): a passive declaration on a channel of its own."""
        try:
            channel = self._connection.channel()
            channel.exchange_declare(f"{self.namespace}.jobs", exchange_type="topic", passive=True)
            channel.close()
        except pika.exceptions.AMQPError as error:
            raise self._broker_error(error, f"looking for exchange {self.namespace}.jobs") from error

    # -- submitting ----------------------------------------------------------------------------

    def submit(self, job: JobLike) -> str:
        """Publishes a job and returns its id once the broker confirmed it.

        ``job`` is a :class:`~dtee.job.Job`, a spec ``dict``, or JSON text; it is validated and
        sent in canonical form (a ``null`` anywhere is refused before anything is sent).

        Raises :class:`~dtee.errors.NoRouteError` when no queue serves the job's routing key,
        :class:`~dtee.errors.BrokerRefusedError` on a nack (one that lasted through
        :attr:`nack_retries` resends) or a closed channel. Publishing the same job again is
        always safe.
        """
        body, job_id, spec = job_body(job)
        self._publish(body, job_id, routing_key_of(spec))
        return job_id

    def _publish(self, body: bytes, job_id: str, job_routing_key: str) -> None:
        if not is_routable_tenant(self.user):
            raise UnroutableUserError(
                f"AMQP user {self.user!r} cannot submit jobs: a dtee user name is 1 to 64 of "
                "letters, digits, '_', '@' and '-' (no '.')"
            )
        routing_key = f"{self.user}.{job_routing_key}"
        properties = pika.BasicProperties(
            message_id=job_id,
            user_id=self.user,
            content_type="application/json",
            type=JOB_MESSAGE_TYPE,
            delivery_mode=2,
            headers={HEADER_SUBMITTED_AT: int(time.time() * 1000)},
        )
        attempt = 0
        while True:
            channel = self._publish_channel()
            try:
                channel.basic_publish(
                    exchange=f"{self.namespace}.jobs",
                    routing_key=routing_key,
                    body=body,
                    properties=properties,
                    mandatory=True,
                )
                return
            except pika.exceptions.UnroutableError:
                raise NoRouteError(routing_key, self.namespace) from None
            except pika.exceptions.NackError:
                if attempt < self.nack_retries:
                    attempt += 1
                    time.sleep(nack_backoff(attempt))
                    continue
                raise BrokerRefusedError(
                    "the broker did not confirm the job (nack), nor any resend the client made: "
                    "the tenant's job queue is full or the broker could not store it; it was not "
                    "accepted"
                ) from None
            except pika.exceptions.AMQPError as error:
                self._channel = None
                raise self._broker_error(error, "publishing the job") from error

    # -- waiting -------------------------------------------------------------------------------

    def wait(self, job_id: str, timeout: float = 60.0, *, check: bool = False) -> Result:
        """Waits for the result of a job published elsewhere (or earlier): binds its id, then
        reads the result and failure keys (``MGET``), then waits on the queue. With ``check``,
        a failed result raises :class:`~dtee.errors.JobFailedError`."""
        return self.wait_many([job_id], timeout, check=check)[0]

    def wait_many(self, job_ids: Iterable[str], timeout: float = 60.0, *, check: bool = False) -> list[Result]:
        """:meth:`wait` for many ids on the one queue; results in the order of ``job_ids``."""
        waiter = self.waiter
        watches = waiter.watch_many(job_ids, accept_failure=True)
        return _checked(waiter.wait(watches, timeout), check)

    def run(self, job: JobLike, timeout: float = 60.0, *, check: bool = False) -> Result:
        """Submits a job and waits for its result, without a race: binds its id, reads only the
        result key, publishes (if nothing was cached), waits. With ``check``, a failed result
        raises :class:`~dtee.errors.JobFailedError`."""
        return self.run_many([job], timeout, check=check)[0]

    def run_many(self, jobs: Sequence[JobLike], timeout: float = 60.0, *, check: bool = False) -> list[Result]:
        """:meth:`run` for many jobs on one connection and one queue: all are bound and looked up,
        then every job without a cached result is published (each once, with its confirm), then
        all are awaited, ``timeout`` seconds in all. Results are in the order of ``jobs``."""
        prepared = [job_body(job) for job in jobs]
        waiter = self.waiter
        watches = waiter.watch_many([job_id for _, job_id, _ in prepared], accept_failure=False)
        try:
            published: set[str] = set()
            for (body, job_id, spec), watch in zip(prepared, watches):
                if watch.result is None and job_id not in published:
                    self._publish(body, job_id, routing_key_of(spec))
                    published.add(job_id)
        except BaseException:
            waiter.withdraw(watches)
            raise
        return _checked(waiter.wait(watches, timeout), check)

    def watch(self, job_id: str, accept_failure: bool = True) -> Watch:
        """Low level: starts watching ``job_id`` on :attr:`waiter` (see
        :meth:`dtee.waiter.ResultWaiter.watch`); finish with ``client.waiter.wait([watch], t)``."""
        return self.waiter.watch(job_id, accept_failure)


def _checked(results: list[Result], check: bool) -> list[Result]:
    if check:
        for result in results:
            result.raise_for_status()
    return results
