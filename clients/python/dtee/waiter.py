"""Waiting for results without a race (PROTOCOL.md §9), on one queue for any number of jobs.

A :class:`ResultWaiter` owns one channel of the client's connection and one exclusive,
auto-deleted queue with a server-generated name, consumed from the moment it is created. For
each job id watched it binds ``<user>.<job id>`` on ``<ns>.results`` (once per id, however many
watches share it), **then** reads Redis, and only then may the caller publish. Messages are
dispatched to the watches by routing key; every message after the first for an id is ignored.
A binding is removed once no watch of its id remains.

The waiter is driven by the client's ``pika.BlockingConnection``: like pika, it is not thread
safe. Use one :class:`dtee.Client` per thread.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Iterable, Optional

import pika.exceptions

from . import jcs
from .connect import get_many
from .errors import BrokerError, MalformedResultError, WaitTimeoutError
from .keys import failure_key, result_key, result_routing_key
from .result import Result

if TYPE_CHECKING:  # pragma: no cover
    from .client import Client

HEADER_CACHED = "dtee-cached"


class Watch:
    """One watch of a job id; :attr:`result` is set once the answer is known."""

    __slots__ = ("job_id", "result")

    def __init__(self, job_id: str):
        self.job_id = job_id
        self.result: Optional[Result] = None

    @property
    def done(self) -> bool:
        """Whether the result is known."""
        return self.result is not None

    def __repr__(self) -> str:
        return f"<Watch {self.job_id} {'done' if self.done else 'waiting'}>"


class ResultWaiter:
    """The result queue of a :class:`dtee.Client`; see the module documentation. Get it from
    :attr:`dtee.Client.waiter` rather than constructing it."""

    def __init__(self, client: "Client"):
        self._client = client
        self._watches: dict[str, list[Watch]] = {}
        self._bound: set[str] = set()
        self.closed = False
        try:
            self._channel = client._connection.channel()
            declared = self._channel.queue_declare("", exclusive=True, auto_delete=True)
            self.queue: str = declared.method.queue
            self._channel.basic_consume(
                self.queue, self._on_message, auto_ack=True, exclusive=True
            )
        except pika.exceptions.AMQPError as error:
            self.closed = True
            raise client._broker_error(error, "declaring the result queue") from error

    # -- dispatch ------------------------------------------------------------------------------

    def _on_message(self, _channel, method, properties, body: bytes) -> None:
        """Hands a result message to the watches of its job id (never blocks)."""
        headers = properties.headers or {}
        cached = headers.get(HEADER_CACHED) is True
        try:
            result = Result.from_json(body, from_cache=cached)
        except MalformedResultError:
            return
        job_id = method.routing_key.rpartition(".")[2]
        if not jcs.is_digest(job_id):
            job_id = result.job_id
        elif job_id != result.job_id:
            return  # published under one job's key with another's result: not an answer
        for watch in self._watches.get(job_id, ()):
            if watch.result is None:  # the first message wins; duplicates are ignored
                watch.result = result

    # -- watching ------------------------------------------------------------------------------

    def watch(self, job_id: str, accept_failure: bool = True) -> Watch:
        """Starts watching ``job_id``: binds it, then reads Redis. Once this returns no result
        for the id can be missed, so the caller may publish the job and then :meth:`wait`.

        ``accept_failure``: read the failure key too (``MGET`` of the result and failure keys),
        for a job published elsewhere; ``False`` reads only the result key, for a caller about
        to publish the job itself (an earlier failure that is not final must not be taken).
        """
        return self.watch_many([job_id], accept_failure)[0]

    def watch_many(self, job_ids: Iterable[str], accept_failure: bool = True) -> list[Watch]:
        """:meth:`watch` for many ids: binds each, then reads all their keys in one ``MGET``."""
        self._check_open()
        ids = list(job_ids)
        for job_id in ids:
            if not jcs.is_digest(job_id):
                raise ValueError(f"{job_id!r} is not a job id (sha256: and 64 lowercase hex)")
        watches = [Watch(job_id) for job_id in ids]
        for watch in watches:
            self._watches.setdefault(watch.job_id, []).append(watch)
        try:
            exchange = f"{self._client.namespace}.results"
            for job_id in dict.fromkeys(ids):
                if job_id not in self._bound:
                    self._channel.queue_bind(
                        self.queue, exchange, routing_key=result_routing_key(self._client.user, job_id)
                    )
                    self._bound.add(job_id)
            # Bound: now read Redis (§9). The primary, never a replica.
            ns = self._client.namespace
            keys: list[str] = []
            for job_id in ids:
                keys.append(result_key(ns, job_id))
                if accept_failure:
                    keys.append(failure_key(ns, job_id))
            values = get_many(self._client.redis, keys)
            step = 2 if accept_failure else 1
            for i, watch in enumerate(watches):
                found = values[i * step]
                if found is None and accept_failure:
                    found = values[i * step + 1]
                if found is not None and watch.result is None:
                    watch.result = Result.stored_for(watch.job_id, found)
        except BaseException as error:
            self.withdraw(watches)
            if isinstance(error, pika.exceptions.AMQPError):
                self._fail()
                raise self._client._broker_error(error, "binding the result queue") from error
            raise
        return watches

    def wait(self, watches: Iterable[Watch], timeout: float) -> list[Result]:
        """Waits until every watch has its result, up to ``timeout`` seconds in all, and
        withdraws them (whatever happens). Raises :class:`~dtee.errors.WaitTimeoutError`."""
        watches = list(watches)
        deadline = time.monotonic() + timeout
        try:
            while True:
                missing = [w for w in watches if w.result is None]
                if not missing:
                    return [w.result for w in watches]  # type: ignore[misc]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise WaitTimeoutError([w.job_id for w in missing], timeout)
                self._check_open()
                try:
                    self._client._connection.process_data_events(time_limit=min(remaining, 1.0))
                except pika.exceptions.AMQPError as error:
                    self._fail()
                    raise self._client._broker_error(error, "waiting for results") from error
        finally:
            self.withdraw(watches)

    def withdraw(self, watches: Iterable[Watch]) -> None:
        """Stops watching; unbinds an id once no watch of it remains."""
        for watch in watches:
            remaining = self._watches.get(watch.job_id)
            if remaining is None:
                continue
            remaining[:] = [w for w in remaining if w is not watch]
            if remaining:
                continue
            del self._watches[watch.job_id]
            if watch.job_id in self._bound:
                self._bound.discard(watch.job_id)
                if not self.closed:
                    try:
                        self._channel.queue_unbind(
                            self.queue,
                            f"{self._client.namespace}.results",
                            routing_key=result_routing_key(self._client.user, watch.job_id),
                        )
                    except pika.exceptions.AMQPError:
                        self._fail()

    # -- life ----------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.closed or not self._channel.is_open:
            self._fail()
            raise BrokerError("the result queue's channel is closed; ask the client for a new waiter")

    def _fail(self) -> None:
        self.closed = True
        self._bound.clear()
        if self._client._waiter is self:
            self._client._waiter = None

    def close(self) -> None:
        """Closes the channel; the broker deletes the queue."""
        if not self.closed:
            self._fail()
            try:
                self._channel.close()
            except pika.exceptions.AMQPError:
                pass
