"""``dtee.result/v1`` (PROTOCOL.md §6) as a small read-only wrapper around the JSON."""

from __future__ import annotations

import base64
import binascii
import json
import struct
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from .errors import JobFailedError, MalformedResultError
from .jcs import digest as digest_of


@dataclass(frozen=True)
class Output:
    """One output buffer of a result: its name, size, digest, and base64 data."""

    name: str
    size: int
    digest: str
    data: str

    @property
    def bytes(self) -> bytes:
        """The output's bytes (its ``data``, decoded)."""
        try:
            return base64.b64decode(self.data, validate=True)
        except (binascii.Error, ValueError) as error:
            raise MalformedResultError(f"output {self.name!r}: data is not base64: {error}") from None

    def f32(self) -> list[float]:
        """The bytes read as little-endian f32 values."""
        data = self.bytes
        if len(data) % 4:
            raise MalformedResultError(f"output {self.name!r}: {len(data)} bytes is not a multiple of 4")
        return list(struct.unpack(f"<{len(data) // 4}f", data))

    def matches_digest(self) -> bool:
        """Whether the data is ``size`` bytes whose digest is ``digest``."""
        data = self.bytes
        return len(data) == self.size and digest_of(data) == self.digest


class Result:
    """A job's result. ``raw`` is the JSON object as received; ``body`` the exact bytes (as
    published and cached), when known.

    ``from_cache`` tells where this copy came from: ``True`` for a value read from Redis or a
    message with the ``dtee-cached`` header set, ``False`` for a fresh execution's message.
    """

    def __init__(self, raw: Mapping[str, Any], body: Optional[bytes] = None, from_cache: Optional[bool] = None):
        if not isinstance(raw, Mapping) or not isinstance(raw.get("job_id"), str):
            raise MalformedResultError("a result is a JSON object with a job_id")
        self.raw: dict[str, Any] = dict(raw)
        self.body = body
        self.from_cache = from_cache

    @classmethod
    def from_json(cls, body: bytes | str, from_cache: Optional[bool] = None) -> "Result":
        """Parses a result message or cached value."""
        if isinstance(body, str):
            body = body.encode("utf-8")
        try:
            raw = json.loads(body)
        except ValueError as error:
            raise MalformedResultError(f"a result that is not JSON: {error}") from None
        except RecursionError:
            raise MalformedResultError("a result nested deeper than Python parses") from None
        return cls(raw, bytes(body), from_cache)

    @classmethod
    def stored_for(cls, job_id: str, body: bytes | str) -> "Result":
        """Parses what Redis holds as ``job_id``'s result, refusing one that names another job:
        a result stands only for the job it names (whoever can write the result key could
        otherwise pass one job's genuine result off as another's)."""
        result = cls.from_json(body, from_cache=True)
        if result.job_id != job_id:
            raise MalformedResultError(
                f"the result stored for {job_id} is the result of another job, {result.job_id}: refused"
            )
        return result

    # -- fields --------------------------------------------------------------------------------

    @property
    def job_id(self) -> str:
        """The job this result answers."""
        return self.raw["job_id"]

    @property
    def status(self) -> str:
        """``succeeded`` or ``failed`` (treat anything else as a failure)."""
        return self.raw.get("status", "")

    @property
    def succeeded(self) -> bool:
        """Whether the status is ``succeeded``."""
        return self.status == "succeeded"

    @property
    def error(self) -> Optional[dict[str, Any]]:
        """``{"code", "message"}`` of a failure, else ``None``."""
        return self.raw.get("error")

    @property
    def error_code(self) -> Optional[str]:
        """The error code of a failure (PROTOCOL.md §6), else ``None``."""
        error = self.error
        return error.get("code") if isinstance(error, Mapping) else None

    @property
    def error_message(self) -> Optional[str]:
        """The human-readable error message of a failure (not stable), else ``None``."""
        error = self.error
        return error.get("message") if isinstance(error, Mapping) else None

    @property
    def outputs(self) -> list[Output]:
        """The outputs, in job order (empty for a failure)."""
        out = []
        for item in self.raw.get("outputs") or []:
            try:
                out.append(Output(item["name"], item["size"], item["digest"], item["data"]))
            except (KeyError, TypeError):
                raise MalformedResultError(f"malformed output {item!r}") from None
        return out

    def output(self, name: str) -> Output:
        """The output called ``name``; :class:`KeyError` if there is none."""
        for output in self.outputs:
            if output.name == name:
                return output
        raise KeyError(f"result {self.job_id} has no output {name!r}")

    def output_bytes(self, name: str) -> bytes:
        """The bytes of output ``name``."""
        return self.output(name).bytes

    def output_f32(self, name: str) -> list[float]:
        """Output ``name`` as little-endian f32 values."""
        return self.output(name).f32()

    @property
    def limits(self) -> Optional[dict[str, Any]]:
        """The enforced limits, when the worker resolved them."""
        return self.raw.get("limits")

    @property
    def resources(self) -> Optional[dict[str, Any]]:
        """What the run used, when the kernel ran."""
        return self.raw.get("resources")

    @property
    def execution(self) -> Optional[dict[str, Any]]:
        """``execution_id``, ``worker_id``, ``backend``, timestamps and ``attempts``."""
        return self.raw.get("execution")

    @property
    def execution_id(self) -> Optional[str]:
        """``execution.execution_id``: equal ids mean one execution (a cached answer)."""
        execution = self.execution
        return execution.get("execution_id") if isinstance(execution, Mapping) else None

    @property
    def state(self) -> Optional[dict[str, Any]]:
        """The state read and written (successes of jobs that bind state)."""
        return self.raw.get("state")

    @property
    def attestation(self) -> Optional[dict[str, Any]]:
        """``{"envelope", "identity"}``: see :func:`dtee.verify`."""
        return self.raw.get("attestation")

    # -- helpers -------------------------------------------------------------------------------

    def raise_for_status(self) -> "Result":
        """Raises :class:`~dtee.errors.JobFailedError` unless the job succeeded; returns the
        result otherwise."""
        if not self.succeeded:
            raise JobFailedError(
                self.error_code or f"status {self.status!r}",
                self.error_message or "",
                self,
            )
        return self

    def to_json(self) -> bytes:
        """The result as JSON bytes: the exact received bytes when known."""
        if self.body is not None:
            return self.body
        return json.dumps(self.raw, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Result) and other.raw == self.raw

    def __repr__(self) -> str:
        extra = f" {self.error_code}" if not self.succeeded else ""
        return f"<Result {self.job_id} {self.status}{extra}>"
