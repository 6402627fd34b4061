"""Verifying a result's attestation against a policy (schemas/ATTESTATION.md §5, §6, §9).

:func:`verify` runs the checks of ``dtee verify``, with the same names and in the same order,
and returns a :class:`Verdict`.

**Done natively, in Python:** the DSSE envelope (payload type, PAE, the Ed25519 signature by
``identity.public_key`` under keyid ``ed25519:<hex>``, with the strict rule below), the statement
(schema, worker key, measurement, worker id and evidence time, evidence digest, platform), its
agreement with the unsigned result around it (job id, status and error code, outputs listed,
output data, state/limits/resources, execution), the policy's worker measurements and evidence
age, and the software evidence checks (``software.allowed``, ``software.measurement``).

**Strict Ed25519** (ed25519-dalek's ``verify_strict``, which the Rust verifier uses): the
signature is 64 bytes with ``S`` < L; the public key and ``R`` are canonical encodings (y < p, and
not x = 0 with the sign bit set) and not one of the eight small-order points; then the signature
must verify (``cryptography``, cofactorless).

**Delegated:** TPM and SEV-SNP evidence (quotes, AMD certificate chains) are checked by the
``dtee`` binary: ``dtee verify RESULT --policy FILE --at NOW``, found from the ``dtee_bin``
argument, else ``$DTEE_BIN``, else ``dtee`` on ``PATH``. Its platform checks (``tpm.*``,
``snp.*``) are added to the verdict with a ``delegate.dtee_verify`` check for its exit status (0
accepted, 1 rejected). Without the binary, ``delegate.dtee_verify`` fails: such a result is never
accepted by Python alone.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import shutil
import subprocess
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from . import jcs
from .errors import CanonicalizationError, PolicyError
from .result import Result

EXECUTION_PAYLOAD_TYPE = "application/vnd.dtee.execution+json"
EXECUTION_SCHEMA = "dtee.execution/v1"

#: The order of the Ed25519 group: 2^252 + 27742317777372353535851937790883648493.
GROUP_ORDER = 2**252 + 27742317777372353535851937790883648493
#: The field prime: 2^255 - 19.
FIELD_PRIME = 2**255 - 19
#: The eight encodings of points of small order (canonical ones; non-canonical encodings of these
#: points are refused by the canonical-encoding rule).
SMALL_ORDER_ENCODINGS = frozenset(
    bytes.fromhex(h)
    for h in (
        "0100000000000000000000000000000000000000000000000000000000000000",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0000000000000000000000000000000000000000000000000000000000000080",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
    )
)


# -- Ed25519 and DSSE ------------------------------------------------------------------------------


def _encoding_problem(encoding: bytes, what: str) -> Optional[str]:
    y = int.from_bytes(encoding, "little") & ((1 << 255) - 1)
    sign = encoding[31] >> 7
    if y >= FIELD_PRIME:
        return f"{what} is not a canonical encoding (y >= p)"
    if sign and y in (1, FIELD_PRIME - 1):
        return f"{what} is not a canonical encoding (x = 0 with the sign bit set)"
    if encoding in SMALL_ORDER_ENCODINGS:
        return f"{what} is a point of small order"
    return None


def ed25519_verify_strict(public_key: bytes, message: bytes, signature: bytes) -> Optional[str]:
    """Strict Ed25519 verification (see the module documentation). Returns ``None`` when the
    signature is valid, else why it is refused."""
    if len(public_key) != 32:
        return "the public key is not 32 bytes"
    if len(signature) != 64:
        return "the signature is not 64 bytes"
    if int.from_bytes(signature[32:], "little") >= GROUP_ORDER:
        return "the signature's S is not canonical (S >= L)"
    problem = _encoding_problem(public_key, "the public key") or _encoding_problem(
        signature[:32], "the signature's R"
    )
    if problem:
        return problem
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except InvalidSignature:
        return "the signature does not verify"
    except ValueError as error:
        return f"the public key is not a valid Ed25519 key: {error}"
    return None


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: ``DSSEv1 SP len(type) SP type SP len(body) SP body``."""
    kind = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def _b64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise ValueError("not a base64 string")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ValueError(f"not base64: {error}") from None
    if base64.b64encode(data).decode("ascii") != text:
        raise ValueError("not canonical padded base64")
    return data


def verify_envelope(envelope: Mapping[str, Any], public_key: bytes) -> Optional[str]:
    """Checks that some signature of a DSSE envelope whose keyid is ``ed25519:<hex of
    public_key>`` verifies strictly over the PAE. Returns ``None`` or why not."""
    try:
        payload = _b64(envelope.get("payload"))
    except ValueError as error:
        return f"payload is {error}"
    payload_type = envelope.get("payloadType")
    if not isinstance(payload_type, str):
        return "payloadType is not a string"
    message = pae(payload_type, payload)
    wanted = "ed25519:" + public_key.hex()
    reasons = []
    signatures = envelope.get("signatures")
    for signature in signatures if isinstance(signatures, list) else []:
        if not isinstance(signature, Mapping) or signature.get("keyid") != wanted:
            continue
        try:
            sig = _b64(signature.get("sig"))
        except ValueError as error:
            reasons.append(f"signature is {error}")
            continue
        why = ed25519_verify_strict(public_key, message, sig)
        if why is None:
            return None
        reasons.append(why)
    return "; ".join(reasons) if reasons else f"no signature by {wanted}"


# -- policies ------------------------------------------------------------------------------------

_POLICY_KEYS = {"allow_software", "worker_measurements", "max_evidence_age_secs", "tpm", "snp"}
_TPM_KEYS = {"allowed_aks", "pcrs", "measurement_pcr"}
_SNP_KEYS = {"allowed_measurements", "vmpl", "allow_debug", "allow_migration_agent", "min_report_version", "products", "min_tcb"}


@dataclass
class Policy:
    """What a verifier accepts (ATTESTATION.md §9, "The policy file"). Build it with
    :meth:`load` from a ``dict`` or a TOML file; unknown keys are refused."""

    allow_software: bool = False
    worker_measurements: list[str] = field(default_factory=list)
    max_evidence_age_secs: Optional[int] = None
    tpm: Optional[dict[str, Any]] = None
    snp: Optional[dict[str, Any]] = None
    #: The TOML file it was read from, if any (handed as is to ``dtee verify``).
    path: Optional[Path] = None

    @classmethod
    def load(cls, policy: "Policy | Mapping[str, Any] | str | os.PathLike[str]") -> "Policy":
        """A policy from a :class:`Policy`, a ``dict`` (the TOML's structure), or the path of a
        TOML file. Raises :class:`~dtee.errors.PolicyError` for an unreadable file, a wrong type
        or an unknown key."""
        if isinstance(policy, Policy):
            return policy
        path = None
        if isinstance(policy, (str, os.PathLike)):
            path = Path(policy)
            try:
                with open(path, "rb") as handle:
                    policy = tomllib.load(handle)
            except (OSError, tomllib.TOMLDecodeError) as error:
                raise PolicyError(f"policy {path}: {error}") from None
        if not isinstance(policy, Mapping):
            raise PolicyError("a policy is a dict or the path of a TOML file")
        _refuse_unknown(policy, _POLICY_KEYS, "policy")
        allow = policy.get("allow_software", False)
        if not isinstance(allow, bool):
            raise PolicyError("allow_software must be a boolean")
        measurements = policy.get("worker_measurements", [])
        if not isinstance(measurements, list) or not all(jcs.is_digest(m) for m in measurements):
            raise PolicyError("worker_measurements must be a list of digests (sha256:<64 hex>)")
        age = policy.get("max_evidence_age_secs")
        if age is not None and (not isinstance(age, int) or isinstance(age, bool) or age < 0):
            raise PolicyError("max_evidence_age_secs must be a non-negative integer")
        tpm = policy.get("tpm")
        if tpm is not None:
            if not isinstance(tpm, Mapping):
                raise PolicyError("[tpm] must be a table")
            _refuse_unknown(tpm, _TPM_KEYS, "[tpm]")
            if "allowed_aks" not in tpm:
                raise PolicyError("[tpm] needs allowed_aks")
            pcr = tpm.get("measurement_pcr")
            if pcr is not None and (
                not isinstance(pcr, int) or isinstance(pcr, bool) or not 0 <= pcr <= 23
            ):
                raise PolicyError("[tpm] measurement_pcr must be a PCR index, 0 to 23")
            tpm = dict(tpm)
        snp = policy.get("snp")
        if snp is not None:
            if not isinstance(snp, Mapping):
                raise PolicyError("[snp] must be a table")
            _refuse_unknown(snp, _SNP_KEYS, "[snp]")
            snp = dict(snp)
        return cls(allow, list(measurements), age, tpm, snp, path)

    def to_toml(self) -> str:
        """The policy as TOML, as ``dtee verify --policy`` reads it."""
        lines = [f"allow_software = {_toml(self.allow_software)}"]
        lines.append(f"worker_measurements = {_toml(self.worker_measurements)}")
        if self.max_evidence_age_secs is not None:
            lines.append(f"max_evidence_age_secs = {self.max_evidence_age_secs}")
        for name, table in (("tpm", self.tpm), ("snp", self.snp)):
            if table is not None:
                lines.append(f"\n[{name}]")
                lines.extend(f"{_toml_key(k)} = {_toml(v)}" for k, v in table.items())
        return "\n".join(lines) + "\n"


def _reread(path: Path) -> Optional[Policy]:
    """The policy the file holds now, or ``None`` if it cannot be read any more."""
    try:
        return Policy.load(path)
    except PolicyError:
        return None


def _refuse_unknown(table: Mapping[str, Any], known: set[str], what: str) -> None:
    unknown = set(table) - known
    if unknown:
        raise PolicyError(f"{what} has unknown key(s): {', '.join(sorted(map(str, unknown)))}")


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml(key)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        out = ['"']
        for ch in value:
            if ch in '"\\':
                out.append("\\" + ch)
            elif ord(ch) < 0x20 or ord(ch) == 0x7F:
                out.append(f"\\u{ord(ch):04x}")
            else:
                out.append(ch)
        return "".join(out) + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml(v)}" for k, v in value.items()) + "}"
    raise PolicyError(f"cannot write {value!r} in a policy")


# -- checks and verdicts -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One named check: ``passed`` is false only for a failed check; a skipped check has
    ``skipped`` set and counts as passed, as in ``dtee verify``. ``why`` explains a failure or a
    skip."""

    name: str
    passed: bool
    why: Optional[str] = None
    skipped: bool = False

    def __str__(self) -> str:
        word = "SKIP" if self.skipped else "PASS" if self.passed else "FAIL"
        return f"{word}  {self.name}" + (f": {self.why}" if self.why else "")


@dataclass
class Verdict:
    """Every check run, in order; :attr:`accepted` when none failed."""

    checks: list[Check]

    @property
    def accepted(self) -> bool:
        """No check failed (skipped checks are fine), and at least one ran."""
        return bool(self.checks) and all(check.passed for check in self.checks)

    @property
    def failed(self) -> list[Check]:
        """The failed checks."""
        return [check for check in self.checks if not check.passed]

    def check(self, name: str) -> Optional[Check]:
        """The check called ``name``, if it ran."""
        return next((c for c in self.checks if c.name == name), None)

    def __bool__(self) -> bool:
        return self.accepted

    def __str__(self) -> str:
        lines = [str(check) for check in self.checks]
        lines.append(f"verdict: {'ACCEPTED' if self.accepted else 'REJECTED'}")
        return "\n".join(lines)


class _Checks:
    def __init__(self) -> None:
        self.items: list[Check] = []

    def add(self, name: str, ok: bool, why: Callable[[], str] | str = "") -> bool:
        self.items.append(Check(name, True) if ok else Check(name, False, why() if callable(why) else why))
        return ok

    def skip(self, name: str, why: str) -> None:
        self.items.append(Check(name, True, why, skipped=True))


class _Malformed(Exception):
    pass


def _same(a: Any, b: Any) -> bool:
    """JSON equality that, unlike ``==``, tells ``true`` from ``1``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return type(a) is type(b) and a == b


def _pick(obj: Any, required: Sequence[str], defaults: Mapping[str, Any] = {}) -> dict[str, Any]:
    """The fields of a record as serde reads it: required fields, defaulted ones, nothing else."""
    if not isinstance(obj, Mapping):
        raise _Malformed(f"{obj!r} is not an object")
    out = {}
    for key in required:
        if key not in obj:
            raise _Malformed(f"a field {key!r} is missing")
        out[key] = obj[key]
    for key, default in defaults.items():
        out[key] = obj.get(key, default)
    return out


def _state(value: Any) -> Any:
    if value is None:
        return None
    report = _pick(value, (), {"read": [], "written": []})
    return {
        "read": [_pick(r, ("name", "key", "version", "digest")) for r in report["read"]],
        "written": [_pick(w, ("name", "key", "version", "digest")) for w in report["written"]],
    }


def _limits(value: Any) -> Any:
    return None if value is None else _pick(value, ("timeout_ms", "memory_bytes", "fuel", "output_bytes"))


_GPU_RESOURCES = {"device_memory_bytes": 0, "kernel_time_us": 0, "copied_bytes": 0, "copy_time_us": 0}


def _resources(value: Any) -> Any:
    if value is None:
        return None
    return _pick(value, ("fuel_consumed", "peak_memory_bytes", "wall_time_us", "output_bytes"), _GPU_RESOURCES)


_DEVICE_FIELDS = ("vendor", "name", "arch", "driver")


def _device(value: Any) -> Any:
    """A GPU device record as the Rust verifier reads it: absent and null are none; the four
    named fields and an optional ``ordinal``, and no other field."""
    if value is None:
        return None
    if not isinstance(value, Mapping) or not set(value) <= {*_DEVICE_FIELDS, "ordinal"}:
        raise _Malformed(f"{value!r} is not a GPU device record")
    return _pick(value, _DEVICE_FIELDS, {"ordinal": None})


def _parse_statement(envelope: Mapping[str, Any]) -> dict[str, Any]:
    try:
        payload = _b64(envelope.get("payload"))
    except ValueError as error:
        raise _Malformed(f"payload is {error}") from None
    try:
        statement = jcs.parse_strict(payload)
    except CanonicalizationError as error:
        raise _Malformed(f"the payload is not JSON: {error}") from None
    _pick(
        statement,
        ("schema", "job_id", "inputs", "outputs", "status", "execution_id", "started_at_unix_ms",
         "finished_at_unix_ms", "worker", "tcb"),
    )
    _pick(statement["worker"], ("worker_id", "public_key", "measurement", "platform", "evidence_digest",
                                "evidence_created_at_unix_ms"))
    problem = _statement_problem(statement)
    if problem is not None:
        raise _Malformed(problem)
    return statement


def _is_count(value: Any) -> bool:
    """A JSON integer that fits a u64 (``bool`` is not one)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 64


def _statement_problem(s: Mapping[str, Any]) -> Optional[str]:
    """Why a statement that has every required field does not have the types of
    ``dtee.execution/v1`` (as the Rust verifier reads it: a wrong type fails to parse), or
    ``None``. The same checks as the Node.js verifier's."""
    for key in ("schema", "execution_id", "status"):
        if not isinstance(s[key], str):
            return f"the statement has no string {key}"
    if not jcs.is_digest(s["job_id"]):
        return "the statement has no job_id digest"
    if not isinstance(s["inputs"], list) or not isinstance(s["outputs"], list):
        return "the statement has no inputs or outputs"
    if not _is_count(s["started_at_unix_ms"]) or not _is_count(s["finished_at_unix_ms"]):
        return "the statement has no timestamps"
    w = s["worker"]
    for key in ("worker_id", "public_key", "platform"):
        if not isinstance(w[key], str):
            return f"the statement's worker has no {key}"
    if not jcs.is_digest(w["measurement"]) or not jcs.is_digest(w["evidence_digest"]):
        return "the statement's worker has no measurement or evidence digest"
    if not _is_count(w["evidence_created_at_unix_ms"]):
        return "the statement's worker has no evidence time"
    if not isinstance(s["tcb"], Mapping):
        return "the statement has no tcb"
    # As Rust's parse reads them: three booleans and the backend's name.
    for flag in ("hardware_rooted", "memory_protected", "gpu_in_tcb"):
        if not isinstance(s["tcb"].get(flag), bool):
            return f"tcb.{flag} is not a boolean"
    if not isinstance(s["tcb"].get("backend"), str):
        return "tcb.backend is not a string"
    for o in s["outputs"]:
        if (not isinstance(o, Mapping) or not isinstance(o.get("name"), str)
                or not _is_count(o.get("size")) or not jcs.is_digest(o.get("digest"))):
            return "a statement output is malformed"
    if s.get("error_code") is not None and not isinstance(s["error_code"], str):
        return "the error code is not a string"
    return None


def verify(
    result: Result | Mapping[str, Any] | bytes | str,
    policy: Policy | Mapping[str, Any] | str | os.PathLike[str],
    *,
    now: Optional[int] = None,
    dtee_bin: Optional[str | os.PathLike[str]] = None,
) -> Verdict:
    """Checks a result's attestation against ``policy``, as ``dtee verify`` does.

    ``result`` is a :class:`~dtee.Result`, its JSON object, or its JSON text. ``policy`` is a
    :class:`Policy`, a ``dict`` or a TOML path. ``now`` is the verification time in Unix seconds
    (default: now). ``dtee_bin`` is the ``dtee`` binary for TPM and SEV-SNP evidence (default
    ``$DTEE_BIN``, else ``dtee`` on ``PATH``). An accepted verdict does not say that the result
    answers *your* job: compare ``result.job_id`` with the id you submitted.
    """
    if not isinstance(result, Result):
        result = Result.from_json(result) if isinstance(result, (bytes, str)) else Result(result)
    policy = Policy.load(policy)
    now = int(time.time()) if now is None else int(now)
    raw = result.raw
    checks = _Checks()
    attestation = raw.get("attestation")
    if not isinstance(attestation, Mapping):
        checks.add("attestation.present", False, "the result carries no attestation")
        return Verdict(checks.items)
    checks.add("attestation.present", True)
    envelope = attestation.get("envelope") if isinstance(attestation.get("envelope"), Mapping) else {}
    identity = attestation.get("identity") if isinstance(attestation.get("identity"), Mapping) else {}
    evidence = identity.get("evidence") if isinstance(identity.get("evidence"), Mapping) else {}
    payload_type = envelope.get("payloadType")
    checks.add("envelope.payload_type", payload_type == EXECUTION_PAYLOAD_TYPE,
               lambda: f"payload type is {payload_type!r}, not {EXECUTION_PAYLOAD_TYPE!r}")
    public_key_hex = identity.get("public_key")
    if not isinstance(public_key_hex, str) or not re.fullmatch(r"[0-9A-Fa-f]{64}", public_key_hex):
        checks.add("identity.public_key", False, "the worker public key is not 32 bytes of hex")
        return Verdict(checks.items)
    public_key = bytes.fromhex(public_key_hex)
    why = verify_envelope(envelope, public_key)
    if not checks.add("envelope.signature", why is None, why or ""):
        return Verdict(checks.items)
    try:
        statement = _parse_statement(envelope)
    except _Malformed as error:
        checks.add("statement.parse", False, f"the payload is not an execution statement: {error}")
        return Verdict(checks.items)
    worker = statement["worker"]

    checks.add("statement.schema", statement["schema"] == EXECUTION_SCHEMA,
               lambda: f"schema is {statement['schema']!r}")
    checks.add("statement.worker_key", _same(worker["public_key"], public_key_hex),
               "the statement names another worker key")
    checks.add("statement.worker_measurement", _same(worker["measurement"], identity.get("measurement")),
               "the statement names another measurement")
    checks.add(
        "statement.worker_identity",
        _same(worker["worker_id"], identity.get("worker_id"))
        and _same(worker["evidence_created_at_unix_ms"], identity.get("evidence_created_at_unix_ms")),
        "the statement names another worker id or evidence time",
    )
    try:
        evidence_digest = jcs.canonical_digest(evidence)
    except CanonicalizationError as error:
        evidence_digest = f"(none: {error})"
    checks.add("statement.evidence_digest", _same(worker["evidence_digest"], evidence_digest),
               lambda: f"the statement names evidence {worker['evidence_digest']}, the result carries {evidence_digest}")
    platform = evidence.get("platform")
    # The platform, and what the statement says it protected: no more than the evidence gives.
    claimed = statement["tcb"]
    tcb_honest = (
        claimed.get("hardware_rooted") is (platform in ("tpm", "snp"))
        and claimed.get("memory_protected") is (platform == "snp")
        and claimed.get("gpu_in_tcb") is False
    )
    checks.add("statement.platform", _same(worker["platform"], platform) and tcb_honest,
               lambda: f"the statement says {worker['platform']} (hardware_rooted "
                       f"{claimed.get('hardware_rooted')}, memory_protected {claimed.get('memory_protected')}, "
                       f"gpu_in_tcb {claimed.get('gpu_in_tcb')}), the evidence is {platform}")
    checks.add("result.job_id", _same(statement["job_id"], raw.get("job_id")),
               lambda: f"the statement is about {statement['job_id']}, the result about {raw.get('job_id')}")
    checks.add(
        "result.status",
        _same(statement["status"], raw.get("status"))
        and _same(statement.get("error_code"), result.error_code),
        "status or error code differ from the statement",
    )
    try:
        claimed = [_pick(o, ("name", "size", "digest")) for o in raw.get("outputs") or []]
        signed = [_pick(o, ("name", "size", "digest")) for o in statement["outputs"]]
        listed = _same(claimed, signed)
    except _Malformed:
        listed = False
    checks.add("result.outputs_listed", listed,
               "the result's outputs (names, sizes, digests) differ from the statement's")
    data_problem = None
    for output in raw.get("outputs") or []:
        name = output.get("name") if isinstance(output, Mapping) else None
        try:
            data = _b64(output.get("data"))
        except (ValueError, AttributeError) as error:
            data_problem = f"output {name!r}: not base64: {error}"
            break
        if not _same(len(data), output.get("size")) or jcs.digest(data) != output.get("digest"):
            data_problem = f"output {name!r}: its bytes do not match its size and digest"
            break
    checks.add("result.output_data", data_problem is None, data_problem or "")
    try:
        same_records = (
            _same(_state(statement.get("state")), _state(raw.get("state")))
            and _same(_limits(statement.get("limits")), _limits(raw.get("limits")))
            and _same(_resources(statement.get("resources")), _resources(raw.get("resources")))
        )
    except _Malformed:
        same_records = False
    checks.add("result.state_limits_resources", same_records,
               "state, limits or resources differ from the statement")
    execution = raw.get("execution")
    tcb = statement["tcb"] if isinstance(statement["tcb"], Mapping) else {}
    try:
        same_device = isinstance(execution, Mapping) and _same(
            _device(execution.get("device")), _device(tcb.get("device"))
        )
    except _Malformed:
        same_device = False
    checks.add(
        "result.execution",
        isinstance(execution, Mapping)
        and _same(execution.get("execution_id"), statement["execution_id"])
        and _same(execution.get("worker_id"), worker["worker_id"])
        and _same(execution.get("started_at_unix_ms"), statement["started_at_unix_ms"])
        and _same(execution.get("finished_at_unix_ms"), statement["finished_at_unix_ms"])
        and isinstance(execution.get("backend"), str)
        and _same(execution.get("backend"), tcb.get("backend"))
        and same_device,
        "the execution record (id, worker, times, backend, device) differs from the statement",
    )

    # The worker and its evidence.
    measurement = identity.get("measurement")
    if not policy.worker_measurements:
        checks.skip("policy.worker_measurement", "the policy accepts any worker measurement")
    else:
        checks.add("policy.worker_measurement", measurement in policy.worker_measurements,
                   lambda: f"worker measurement {measurement} is not allowed")
    if policy.max_evidence_age_secs is not None:
        created = identity.get("evidence_created_at_unix_ms")
        if isinstance(created, int) and not isinstance(created, bool):
            age = now - created // 1000
            if age < -300:  # evidence from the future is as suspect as old evidence
                age = None
        else:
            age = None
        checks.add(
            "policy.evidence_age",
            age is not None and age <= policy.max_evidence_age_secs,
            lambda: f"the evidence is {age if age is not None else 'of an unknown or future time, '} s old; "
            f"the policy accepts {policy.max_evidence_age_secs} s",
        )
    if platform == "software":
        checks.add("software.allowed", policy.allow_software,
                   lambda: f"the policy does not accept software evidence ({evidence.get('statement')})")
        # Exactly these fields, as the Rust verifier reads software evidence (it refuses others).
        exact = set(evidence) == {"platform", "statement", "measurement"} and isinstance(
            evidence.get("statement"), str)
        checks.add("software.measurement", exact and _same(evidence.get("measurement"), measurement),
                   "the evidence states another measurement than the identity" if exact else
                   "software evidence holds exactly platform, statement (a string) and measurement")
    elif platform in ("tpm", "snp"):
        section = policy.tpm if platform == "tpm" else policy.snp
        if section is None:
            checks.add(f"{platform}.allowed", False, f"the policy has no [{platform}] section")
        else:
            checks.add(f"{platform}.allowed", True)
            checks.items.extend(_delegate(result, policy, platform, now, dtee_bin))
    else:
        checks.add("evidence.platform", False, f"unknown evidence platform {platform!r}")
    return Verdict(checks.items)


_LINE = re.compile(r"^(PASS|FAIL|SKIP)  ([^:\s]+)(?::\s?(.*))?$")


def find_dtee_bin(dtee_bin: Optional[str | os.PathLike[str]] = None) -> Optional[str]:
    """The ``dtee`` binary: ``dtee_bin``, else ``$DTEE_BIN``, else ``dtee`` on ``PATH``."""
    if dtee_bin:
        return os.fspath(dtee_bin)
    return os.environ.get("DTEE_BIN") or shutil.which("dtee")


def _delegate(result: Result, policy: Policy, platform: str, now: int, dtee_bin: Any) -> list[Check]:
    """Runs ``dtee verify`` for TPM or SEV-SNP evidence; returns its platform checks and
    ``delegate.dtee_verify``."""
    binary = find_dtee_bin(dtee_bin)
    name = "delegate.dtee_verify"
    if not binary or not os.path.exists(binary) and not shutil.which(binary):
        return [Check(name, False, f"{platform} evidence is checked by the dtee binary, which was not "
                      "found (pass dtee_bin= or set DTEE_BIN)")]
    with tempfile.TemporaryDirectory(prefix="dtee-verify-") as tmp:
        result_path = Path(tmp, "result.json")
        result_path.write_bytes(result.to_json())
        # The file it was read from, unless the policy changed since: then what it is now.
        policy_path = policy.path
        if policy_path is None or _reread(policy_path) != policy:
            policy_path = Path(tmp, "policy.toml")
            policy_path.write_text(policy.to_toml(), encoding="utf-8")
        try:
            done = subprocess.run(
                [binary, "verify", str(result_path), "--policy", str(policy_path), "--at", str(now)],
                capture_output=True, text=True, timeout=120,
            )
        except (OSError, subprocess.SubprocessError) as error:
            return [Check(name, False, f"running {binary}: {error}")]
    checks = []
    for line in done.stdout.splitlines():
        match = _LINE.match(line)
        if match and match.group(2).startswith(platform + ".") and match.group(2) != f"{platform}.allowed":
            word, check_name, why = match.groups()
            checks.append(Check(check_name, word != "FAIL", why, skipped=word == "SKIP"))
    if done.returncode == 0:
        checks.append(Check(name, True))
    elif done.returncode == 1:
        checks.append(Check(name, False, "dtee verify rejected the result"))
    else:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
        checks.append(Check(name, False, f"dtee verify exited {done.returncode}: {tail[0]}"))
    return checks
