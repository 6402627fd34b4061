"""Canonical JSON (RFC 8785, JCS) and the strict parser of PROTOCOL.md §2.

A job id is ``"sha256:" + hex(sha256(canonicalize(spec)))``, so every client must produce the
same bytes as the worker, byte for byte. This module passes every case of
``schemas/vectors/jcs/`` (see ``tests/test_conformance.py``, ``test_jcs_vectors``).

- :func:`parse_strict` reads JSON text the way dtee's parser does: it refuses duplicate object
  names (also after unescaping), integers beyond ±2^53 that are not in canonical form, NaN and
  infinities, numbers that overflow a double, lone surrogates, invalid UTF-8, a byte-order mark,
  and everything JSON itself forbids.
- :func:`canonicalize` writes the canonical bytes of a value built from ``dict``, ``list``,
  ``tuple``, ``str``, ``int``, ``float``, ``bool`` and ``None``. Integers beyond ±2^53 are refused
  unless they are written exactly as ECMAScript prints their nearest double (so canonical output
  always parses back). The serialization itself is done by the ``rfc8785`` package, after this
  module has checked the value and turned every integer into the double it denotes (``rfc8785``
  alone refuses ±2^53 and beyond).
- :func:`canonicalize_job` is :func:`canonicalize` with ``null`` refused anywhere (PROTOCOL.md §2:
  a worker answers a job holding ``null`` with ``invalid_job``).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Any

import rfc8785

from .errors import CanonicalizationError

#: 2^53: the largest integer magnitude an IEEE 754 double holds exactly.
MAX_SAFE_INTEGER = 2**53

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


def digest(data: bytes) -> str:
    """The dtee digest of ``data``: ``"sha256:"`` + 64 lowercase hex digits."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def is_digest(text: Any) -> bool:
    """Whether ``text`` is a well-formed digest (``sha256:`` and 64 *lowercase* hex digits)."""
    return isinstance(text, str) and _DIGEST.fullmatch(text) is not None


def ecmascript_number(value: float) -> str:
    """``value`` as ECMAScript's ``Number.prototype.toString`` writes it (RFC 8785 §3.2.2.3)."""
    if not math.isfinite(value):
        raise CanonicalizationError(f"number {value!r} is not finite")
    return rfc8785.dumps(float(value)).decode("ascii")


def _integer_as_double(value: int) -> float:
    """The double an integer denotes, refusing integers beyond ±2^53 that are not in canonical
    form (the way ECMAScript prints their nearest double)."""
    if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
        return float(value)
    try:
        nearest = float(value)
    except OverflowError:
        raise CanonicalizationError(f"integer {value} overflows a double") from None
    if ecmascript_number(nearest) != str(value):
        raise CanonicalizationError(
            f"integer {value} is outside ±2^53 and has no exact canonical form "
            "(send wider values as strings or bytes)"
        )
    return nearest


def _check_string(text: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise CanonicalizationError(f"{what} holds a lone surrogate: {text[:40]!r}") from None


def _prepare(value: Any, refuse_null: bool, path: str) -> Any:
    """Checks ``value`` and returns a copy that ``rfc8785`` serializes canonically: every integer
    becomes the double it denotes."""
    if value is None:
        if refuse_null:
            raise CanonicalizationError(f"{path or 'the job'} is null: leave an absent field out instead")
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return _integer_as_double(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CanonicalizationError(f"{path or 'the value'}: {value!r} is not a JSON number")
        return value
    if isinstance(value, str):
        _check_string(value, path or "the value")
        return value
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise CanonicalizationError(f"{path or 'the value'}: object key {key!r} is not a string")
            _check_string(key, f"a key of {path or 'the value'}")
            out[key] = _prepare(item, refuse_null, f"{path}.{key}" if path else key)
        return out
    if isinstance(value, (list, tuple)):
        return [_prepare(item, refuse_null, f"{path}[{i}]") for i, item in enumerate(value)]
    raise CanonicalizationError(f"{path or 'the value'}: {type(value).__name__} is not JSON")


def canonicalize(value: Any) -> bytes:
    """The RFC 8785 canonical bytes of ``value`` (``dict``/``list``/``tuple``/``str``/``int``/
    ``float``/``bool``/``None``).

    Raises :class:`~dtee.errors.CanonicalizationError` for a value without a canonical form: a
    non-finite float, an integer beyond ±2^53 not in canonical form, a lone surrogate, a
    non-string key, or any other type.
    """
    prepared = _prepare(value, False, "")
    try:
        return rfc8785.dumps(prepared)
    except rfc8785.CanonicalizationError as error:  # pragma: no cover - _prepare checks first
        raise CanonicalizationError(str(error)) from error


def canonicalize_job(spec: Any) -> bytes:
    """:func:`canonicalize` for a job spec: also refuses ``null`` anywhere in it."""
    prepared = _prepare(spec, True, "")
    try:
        return rfc8785.dumps(prepared)
    except rfc8785.CanonicalizationError as error:  # pragma: no cover
        raise CanonicalizationError(str(error)) from error


def canonical_digest(value: Any) -> str:
    """``digest(canonicalize(value))``: the id of a job spec, the digest of evidence."""
    return digest(canonicalize(value))


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in pairs:
        if key in out:
            raise CanonicalizationError(f"duplicate object name {key!r}")
        out[key] = item
    return out


def _constant(name: str) -> Any:
    raise CanonicalizationError(f"{name} is not JSON")


def _integer(text: str) -> int:
    try:
        value = int(text)
    except ValueError:  # more digits than Python converts (sys.get_int_max_str_digits)
        raise CanonicalizationError(f"integer of {len(text)} digits is out of range") from None
    _integer_as_double(value)  # refuses integers beyond ±2^53 not in canonical form
    return value


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise CanonicalizationError(f"number {text[:40]} overflows a double")
    return value


def _no_surrogates(value: Any) -> None:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            _check_string(item, "a string")
        elif isinstance(item, dict):
            for key, child in item.items():
                _check_string(key, "an object name")
                stack.append(child)
        elif isinstance(item, list):
            stack.extend(item)


def parse_strict(data: bytes | str) -> Any:
    """Parses JSON text as strictly as dtee's worker does (PROTOCOL.md §2).

    ``data`` is UTF-8 bytes (or an already decoded ``str``). Returns plain Python values: objects
    as ``dict``, arrays as ``list``, integers as ``int`` and other numbers as ``float``. Raises
    :class:`~dtee.errors.CanonicalizationError` for anything the worker refuses.
    """
    if isinstance(data, (bytes, bytearray, memoryview)):
        data = bytes(data)
        if data.startswith(b"\xef\xbb\xbf"):
            raise CanonicalizationError("a byte-order mark is not allowed")
        try:
            text = data.decode("utf-8")  # strict: refuses invalid UTF-8 and encoded surrogates
        except UnicodeDecodeError as error:
            raise CanonicalizationError(f"invalid UTF-8: {error}") from None
    elif isinstance(data, str):
        text = data
    else:
        raise TypeError("parse_strict takes bytes or str")
    if text.startswith("\ufeff"):
        raise CanonicalizationError("a byte-order mark is not allowed")
    try:
        value = json.loads(
            text,
            object_pairs_hook=_pairs,
            parse_constant=_constant,
            parse_int=_integer,
            parse_float=_float,
        )
    except CanonicalizationError:
        raise
    except (ValueError, RecursionError) as error:
        raise CanonicalizationError(f"not strict JSON: {error}") from None
    _no_surrogates(value)
    return value


def recanonicalize(data: bytes | str) -> bytes:
    """``canonicalize(parse_strict(data))``: the canonical form of JSON text."""
    return canonicalize(parse_strict(data))
