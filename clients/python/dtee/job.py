"""Building ``dtee.job/v1`` specs (PROTOCOL.md §3) with typed helpers.

>>> job = (Job(kernel_digest, "saxpy")
...        .input_f32("x", [1, 2, 3, 4])
...        .input_blob("y", y_digest)
...        .output("out", 16)
...        .param("a", "f32", 2.0))
>>> job.id            # "sha256:" + sha256 of job.canonical()

Buffers and parameters keep the order of the calls. Fields that are not given are left out,
exactly as the Rust builder (``dtee_submitter::builder``, serde) leaves them out: ``buffers`` and
``params`` when empty, ``limits`` when no limit is set, ``may_be_absent`` unless it is true,
``max_size`` unless set, ``attestation`` and ``nonce`` unless set. A field written with its default
value would give another job id (PROTOCOL.md §2), so this matters.
"""

from __future__ import annotations

import base64
import copy
import math
import re
import struct
from typing import Any, Iterable, Mapping, Optional, Sequence

from . import jcs
from .errors import CanonicalizationError, InvalidJobError
from .keys import PLATFORM_REQUIREMENTS, StateKey, job_routing_key

JOB_SCHEMA = "dtee.job/v1"
KERNEL_FORMATS = ("wasm", "ptx", "hsaco")
STATE_MODES = ("read_only", "write_only", "read_write", "append_only")
SCALAR_TYPES = ("i32", "u32", "i64", "u64", "f32", "f64")
LIMIT_FIELDS = ("timeout_ms", "memory_bytes", "fuel", "output_bytes")
#: How a wasm kernel runs: fuel metered and canonical NaN bits (the default), or the deadline only.
WASM_PROFILES = ("deterministic", "fast")
MAX_F32 = 3.4028234663852886e38

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
_TARGET = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_INT_RANGES = {
    "i32": (-(2**31), 2**31 - 1),
    "u32": (0, 2**32 - 1),
    "i64": (-(2**53), 2**53),
    "u64": (0, 2**53),
}


def _check_name(name: Any, what: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidJobError(f"{what} name {name!r} must match ^[A-Za-z_][A-Za-z0-9_.-]{{0,63}}$")
    return name


def _check_digest(value: Any, what: str) -> str:
    if not jcs.is_digest(value):
        raise InvalidJobError(f"{what} {value!r} is not a digest (sha256: and 64 lowercase hex)")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_count(value: Any, what: str, minimum: int = 1) -> int:
    """An integral JSON number >= minimum, returned as an int."""
    if not _is_number(value) or (isinstance(value, float) and not value.is_integer()):
        raise InvalidJobError(f"{what} must be an integer, not {value!r}")
    value = int(value)
    if value < minimum or value > 2**64 - 1:
        raise InvalidJobError(f"{what} must be at least {minimum} (and fit 64 bits): {value}")
    return value


def check_param_value(ty: str, value: Any, what: str = "param") -> int | float:
    """Checks that ``value`` fits the scalar type ``ty`` (PROTOCOL.md §3, "Parameters")."""
    if ty not in SCALAR_TYPES:
        raise InvalidJobError(f"{what}: unknown type {ty!r} (one of {', '.join(SCALAR_TYPES)})")
    if not _is_number(value):
        raise InvalidJobError(f"{what}: value {value!r} is not a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidJobError(f"{what}: value {value!r} is not finite")
    if ty in _INT_RANGES:
        if isinstance(value, float) and not value.is_integer():
            raise InvalidJobError(f"{what}: {ty} value {value!r} is not integral")
        low, high = _INT_RANGES[ty]
        if not low <= value <= high:
            raise InvalidJobError(f"{what}: {value!r} is out of range for {ty}")
    elif ty == "f32" and abs(value) > MAX_F32:
        raise InvalidJobError(f"{what}: {value!r} is beyond the largest f32")
    return value


class Job:
    """A ``dtee.job/v1`` spec under construction. Every helper returns the job, so calls chain.

    ``kernel`` is the kernel's digest (see :meth:`dtee.Client.put_blob`), ``entry`` the exported
    function to call, ``target`` the routing target (``wasm``), ``format`` the kernel format
    (``wasm``; ``ptx``/``hsaco`` for GPU kernels, which also need :meth:`launch`). ``profile``
    (wasm only) is ``"deterministic"`` (what leaving it out means, though another job id: fuel
    metered, canonical NaN bit patterns) or ``"fast"`` (the wall-clock deadline only, no fuel
    limit, NaN bit patterns as the host CPU makes them).
    """

    def __init__(
        self,
        kernel: str,
        entry: str,
        *,
        target: str = "wasm",
        format: str = "wasm",
        profile: Optional[str] = None,
    ):
        _check_digest(kernel, "kernel digest")
        if not isinstance(entry, str) or not 1 <= len(entry.encode("utf-8", "surrogatepass")) <= 128:
            raise InvalidJobError(f"kernel entry {entry!r} must be 1 to 128 bytes")
        if not isinstance(target, str) or not _TARGET.fullmatch(target):
            raise InvalidJobError(f"target {target!r} must match ^[a-z0-9][a-z0-9._-]{{0,63}}$")
        if format not in KERNEL_FORMATS:
            raise InvalidJobError(f"kernel format {format!r} is not one of {KERNEL_FORMATS}")
        self._kernel = {"digest": kernel, "format": format, "entry": entry, "target": target}
        if profile is not None:
            if profile not in WASM_PROFILES:
                raise InvalidJobError(f"kernel profile {profile!r} is not one of {WASM_PROFILES}")
            if format != "wasm":
                raise InvalidJobError("kernel profile applies to wasm kernels only")
            self._kernel["profile"] = profile
        self._buffers: list[dict[str, Any]] = []
        self._params: list[dict[str, Any]] = []
        self._launch: Optional[dict[str, Any]] = None
        self._limits: dict[str, int] = {}
        self._attestation: Optional[str] = None
        self._nonce: Optional[str] = None

    # -- buffers -------------------------------------------------------------------------------

    def _add_buffer(self, buffer: dict[str, Any]) -> "Job":
        name = _check_name(buffer["name"], "buffer")
        if any(b["name"] == name for b in self._buffers):
            raise InvalidJobError(f"buffer name {name!r} is used twice")
        self._buffers.append(buffer)
        return self

    def input_bytes(self, name: str, data: bytes) -> "Job":
        """An input buffer whose bytes travel inline in the job (standard base64)."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InvalidJobError(f"input {name!r}: bytes expected, not {type(data).__name__}")
        inline = base64.b64encode(bytes(data)).decode("ascii")
        return self._add_buffer({"kind": "input", "name": name, "inline": inline})

    def input_f32(self, name: str, values: Iterable[float]) -> "Job":
        """An inline input of little-endian f32 values (each rounded to the nearest f32)."""
        values = list(values)
        for value in values:
            if not _is_number(value):
                raise InvalidJobError(f"input {name!r}: {value!r} is not a number")
        try:
            data = struct.pack(f"<{len(values)}f", *values)
        except (OverflowError, struct.error) as error:
            raise InvalidJobError(f"input {name!r}: {error}") from None
        return self.input_bytes(name, data)

    def input_blob(self, name: str, digest: str) -> "Job":
        """An input buffer read from the blob stored under ``digest``
        (:meth:`dtee.Client.put_blob`)."""
        _check_digest(digest, f"input {name!r} blob")
        return self._add_buffer({"kind": "input", "name": name, "blob": digest})

    def output(self, name: str, size: int) -> "Job":
        """An output buffer of at most ``size`` bytes (``size`` >= 1)."""
        size = _check_count(size, f"output {name!r} size")
        return self._add_buffer({"kind": "output", "name": name, "size": size})

    def state(
        self,
        name: str,
        key: str,
        mode: str,
        may_be_absent: bool = False,
        max_size: Optional[int] = None,
    ) -> "Job":
        """A state buffer bound to the Redis state key ``key`` (``<tenant>/<path>``; the tenant
        must be the submitting AMQP user). ``mode`` is ``read_only``, ``write_only``,
        ``read_write`` or ``append_only``. ``may_be_absent`` lets an absent key read as empty
        instead of failing the job; ``max_size`` bounds what the kernel may write."""
        StateKey.parse(key)
        if any(b["kind"] == "state" and b["key"] == key for b in self._buffers):
            raise InvalidJobError(f"state key {key!r} is bound twice: bind each key once")
        if mode not in STATE_MODES:
            raise InvalidJobError(f"state {name!r}: mode {mode!r} is not one of {STATE_MODES}")
        if not isinstance(may_be_absent, bool):
            raise InvalidJobError(f"state {name!r}: may_be_absent must be a bool")
        buffer: dict[str, Any] = {"kind": "state", "name": name, "key": key, "mode": mode}
        if may_be_absent:
            buffer["may_be_absent"] = True
        if max_size is not None:
            buffer["max_size"] = _check_count(max_size, f"state {name!r} max_size")
        return self._add_buffer(buffer)

    def secret(self, name: str, tenant: str, secret: str, version: int) -> "Job":
        """A secret buffer (PROTOCOL.md §12): ``tenant``'s secret ``secret`` at ``version``,
        released by the secret keeper to the worker for this job and read by the kernel as the
        read-only input ``name``. ``tenant`` must be the submitting AMQP user."""
        if not _SECRET_NAME.fullmatch(secret):
            raise InvalidJobError(f"secret {name!r}: {secret!r} is not a secret name")
        StateKey.parse(f"{tenant}/x")  # the tenant rule
        version = _check_count(version, f"secret {name!r} version")
        return self._add_buffer(
            {"kind": "secret", "name": name, "secret": f"{tenant}/{secret}", "version": version}
        )

    # -- the rest ------------------------------------------------------------------------------

    def param(self, name: str, type: str, value: int | float) -> "Job":
        """A scalar parameter: ``type`` is ``i32``, ``u32``, ``i64``, ``u64``, ``f32`` or ``f64``,
        and ``value`` must fit it."""
        _check_name(name, "param")
        if any(p["name"] == name for p in self._params):
            raise InvalidJobError(f"param name {name!r} is used twice")
        value = check_param_value(type, value, f"param {name!r}")
        self._params.append({"name": name, "type": type, "value": value})
        return self

    def launch(
        self, grid: Sequence[int], block: Sequence[int], shared_mem_bytes: int = 0
    ) -> "Job":
        """GPU launch geometry (required for ``ptx`` and ``hsaco``, refused for ``wasm``).
        ``shared_mem_bytes`` is always written, as the Rust builder writes it."""
        def dims(value: Sequence[int], what: str) -> list[int]:
            items = list(value)
            if len(items) != 3:
                raise InvalidJobError(f"launch {what} must be three integers")
            return [_check_count(v, f"launch {what}") for v in items]

        self._launch = {
            "grid": dims(grid, "grid"),
            "block": dims(block, "block"),
            "shared_mem_bytes": _check_count(shared_mem_bytes, "launch shared_mem_bytes", 0),
        }
        return self

    def limits(
        self,
        timeout_ms: Optional[int] = None,
        memory_bytes: Optional[int] = None,
        fuel: Optional[int] = None,
        output_bytes: Optional[int] = None,
    ) -> "Job":
        """Sets the resource limits, replacing earlier ones. A limit left out takes the worker's
        default, and is not written; with no limit at all ``limits`` is left out of the job."""
        given = {
            "timeout_ms": timeout_ms,
            "memory_bytes": memory_bytes,
            "fuel": fuel,
            "output_bytes": output_bytes,
        }
        if fuel is not None and self._kernel.get("profile") == "fast":
            raise InvalidJobError("limits.fuel: the fast profile meters no fuel")
        self._limits = {k: _check_count(v, f"limits.{k}") for k, v in given.items() if v is not None}
        return self

    def attestation(self, platform: str) -> "Job":
        """Requires a platform: ``any``, ``tpm``, ``snp`` or ``any-hardware``. It is written even
        for ``any`` (another id than leaving it out), and decides the routing key."""
        if platform not in PLATFORM_REQUIREMENTS:
            raise InvalidJobError(f"attestation platform {platform!r} is not one of {PLATFORM_REQUIREMENTS}")
        self._attestation = platform
        return self

    def nonce(self, text: str) -> "Job":
        """Free text (at most 256 bytes of UTF-8) that makes otherwise identical work a new job."""
        if not isinstance(text, str):
            raise InvalidJobError(f"nonce must be a string, not {type(text).__name__}")
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError:
            raise InvalidJobError("nonce holds a lone surrogate") from None
        if size > 256:
            raise InvalidJobError(f"nonce is {size} bytes; at most 256")
        self._nonce = text
        return self

    # -- results -------------------------------------------------------------------------------

    @property
    def spec(self) -> dict[str, Any]:
        """The spec as a plain ``dict`` (a copy), fields left out as the Rust builder does."""
        spec: dict[str, Any] = {"schema": JOB_SCHEMA, "kernel": dict(self._kernel)}
        if self._buffers:
            spec["buffers"] = copy.deepcopy(self._buffers)
        if self._params:
            spec["params"] = copy.deepcopy(self._params)
        if self._launch is not None:
            spec["launch"] = copy.deepcopy(self._launch)
        if self._limits:
            spec["limits"] = dict(self._limits)
        if self._attestation is not None:
            spec["attestation"] = {"platform": self._attestation}
        if self._nonce is not None:
            spec["nonce"] = self._nonce
        return spec

    def canonical(self) -> bytes:
        """The canonical bytes of the spec: what is published, and what the id hashes."""
        return job_body(self.spec)[0]

    @property
    def id(self) -> str:
        """The job id: ``"sha256:" + hex(sha256(canonical()))``."""
        return jcs.digest(self.canonical())

    @property
    def target(self) -> str:
        """The routing target."""
        return self._kernel["target"]

    @property
    def platform(self) -> Optional[str]:
        """The platform the job requires, or ``None``."""
        return self._attestation

    def __repr__(self) -> str:
        return f"Job({self.id})"


# -- validating specs given as dicts or JSON ------------------------------------------------------

_SPEC_FIELDS = {"schema", "kernel", "buffers", "params", "launch", "limits", "attestation", "nonce"}
_SECRET_NAME = re.compile(r"(?!\.)[A-Za-z0-9_.-]{1,128}")

_BUFFER_FIELDS = {
    "input": ({"kind", "name"}, {"inline", "blob"}),
    "output": ({"kind", "name", "size"}, set()),
    "state": ({"kind", "name", "key", "mode"}, {"may_be_absent", "max_size"}),
    "secret": ({"kind", "name", "secret", "version"}, set()),
}


def _fields(obj: Any, what: str, required: set[str], optional: set[str]) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise InvalidJobError(f"{what} must be an object")
    missing = required - obj.keys()
    if missing:
        raise InvalidJobError(f"{what} lacks {', '.join(sorted(missing))}")
    unknown = obj.keys() - required - optional
    if unknown:
        raise InvalidJobError(f"{what} has unknown field(s) {', '.join(sorted(map(str, unknown)))}")
    return obj


def validate_spec(spec: Any) -> None:
    """Checks a spec given as a ``dict`` before it is sent, with the rules a worker applies that
    a client can check alone (the shape, unknown fields, names, digests, ranges, state keys, one
    tenant and hash group). Raises :class:`~dtee.errors.InvalidJobError`. The worker remains the
    judge: a spec that passes may still be refused."""
    spec = _fields(spec, "the job", {"schema", "kernel"}, _SPEC_FIELDS - {"schema", "kernel"})
    if spec["schema"] != JOB_SCHEMA:
        raise InvalidJobError(f"schema must be {JOB_SCHEMA!r}")
    kernel = _fields(spec["kernel"], "kernel", {"digest", "format", "entry", "target"}, {"profile"})
    probe = Job(
        kernel["digest"],
        kernel["entry"],
        target=kernel["target"],
        format=kernel["format"],
        profile=kernel.get("profile"),
    )
    for i, buffer in enumerate(_list(spec.get("buffers", []), "buffers")):
        kind = buffer.get("kind") if isinstance(buffer, Mapping) else None
        if kind not in _BUFFER_FIELDS:
            raise InvalidJobError(f"buffers[{i}].kind must be input, output, state or secret")
        required, optional = _BUFFER_FIELDS[kind]
        _fields(buffer, f"buffers[{i}]", required, optional)
        if kind == "input":
            if ("inline" in buffer) == ("blob" in buffer):
                raise InvalidJobError(f"buffers[{i}] needs exactly one of inline and blob")
            if "blob" in buffer:
                probe.input_blob(buffer["name"], buffer["blob"])
            else:
                inline = buffer["inline"]
                try:
                    data = base64.b64decode(inline, validate=True) if isinstance(inline, str) else None
                except ValueError:
                    data = None
                if data is None or base64.b64encode(data).decode() != inline:
                    raise InvalidJobError(f"buffers[{i}].inline is not standard padded base64")
                probe.input_bytes(buffer["name"], data)
        elif kind == "output":
            probe.output(buffer["name"], buffer["size"])
        elif kind == "secret":
            tenant, _, secret = str(buffer["secret"]).partition("/")
            probe.secret(buffer["name"], tenant, secret, buffer["version"])
        else:
            if "may_be_absent" in buffer and not isinstance(buffer["may_be_absent"], bool):
                raise InvalidJobError(f"buffers[{i}].may_be_absent must be a bool")
            probe.state(
                buffer["name"],
                buffer["key"],
                buffer["mode"],
                bool(buffer.get("may_be_absent", False)),
                buffer.get("max_size"),
            )
    for i, param in enumerate(_list(spec.get("params", []), "params")):
        _fields(param, f"params[{i}]", {"name", "type", "value"}, set())
        probe.param(param["name"], param["type"], param["value"])
    if "launch" in spec:
        launch = _fields(spec["launch"], "launch", {"grid", "block"}, {"shared_mem_bytes"})
        probe.launch(launch["grid"], launch["block"], launch.get("shared_mem_bytes", 0))
    if "limits" in spec:
        limits = _fields(spec["limits"], "limits", set(), set(LIMIT_FIELDS))
        probe.limits(**limits)
    if "attestation" in spec:
        probe.attestation(_fields(spec["attestation"], "attestation", {"platform"}, set())["platform"])
    if "nonce" in spec:
        probe.nonce(spec["nonce"])
    tags = {StateKey.parse(b["key"]).hash_tag for b in spec.get("buffers", []) if b["kind"] == "state"}
    if len(tags) > 1:
        raise InvalidJobError(
            "all state keys of one job must have the same tenant and hash group: "
            + ", ".join(sorted(tags))
        )


def _list(value: Any, what: str) -> list:
    if not isinstance(value, (list, tuple)):
        raise InvalidJobError(f"{what} must be an array")
    return list(value)


def job_body(spec: Job | Mapping[str, Any] | bytes | str) -> tuple[bytes, str, dict[str, Any]]:
    """The canonical body, the job id and the spec (as a dict) of a job given as a :class:`Job`,
    a ``dict``, or JSON text. Refuses ``null`` anywhere, and an invalid spec, with
    :class:`~dtee.errors.InvalidJobError` before anything is sent."""
    if isinstance(spec, Job):
        spec = spec.spec
    elif isinstance(spec, (bytes, bytearray, str)):
        try:
            spec = jcs.parse_strict(spec)
        except CanonicalizationError as error:
            raise InvalidJobError(f"the job is not strict JSON: {error}") from None
    try:
        body = jcs.canonicalize_job(spec)
    except CanonicalizationError as error:
        raise InvalidJobError(str(error)) from None
    # Validate the spec as the worker reads it: from its canonical form.
    value = jcs.parse_strict(body)
    validate_spec(value)
    return body, jcs.digest(body), value


def routing_key_of(spec: Mapping[str, Any]) -> str:
    """The job routing key of a (valid) spec: target plus platform suffix."""
    platform = (spec.get("attestation") or {}).get("platform")
    return job_routing_key(spec["kernel"]["target"], platform)
