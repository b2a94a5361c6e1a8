"""JSON for envelopes: orjson first, a careful fallback when orjson refuses.

``dumps`` never raises. orjson serializes the common case (str, int, float,
dict, list, datetime, UUID, enum, dataclass) in well under a microsecond for a
log-sized document. What it refuses, the fallback rewrites into plain JSON
values and serializes again:

- a value orjson does not know (bytes, Decimal, set, exception, any object)
  goes through ``_default``, which always returns a string or a list;
- a string with lone surrogates, an integer beyond 64 bits, a dict key that
  is not a string, a cycle or a nesting deeper than orjson's limit make
  orjson raise; ``to_plain`` then rebuilds the whole value, replacing what
  cannot be written with a readable stand-in.

Keys that are not strings take the slow path on purpose: ``{1: "a", "1":
"b"}`` would otherwise be written with the name ``"1"`` twice, and a reader
keeps only one of the values. ``named_keys`` gives the second the name
``"1 (str)"``; the envelope builder applies it to every context dict with
such keys, so an event's context rarely reaches the slow path.

A stand-in always says what it replaced (``"<circular>"``, ``"<unrepresentable
Foo>"``), so a reader of the envelope sees that something was lost.
"""

from __future__ import annotations

import datetime
import decimal
import enum
import uuid
from typing import Any

import orjson

__all__ = ["CIRCULAR", "dumps", "key_name", "named_keys", "safe_repr", "to_plain"]

CIRCULAR = "<circular>"

# orjson's own nesting limit is 254; the fallback cuts a little earlier so the
# rebuilt value is always accepted.
_MAX_PLAIN_DEPTH = 200

_SCALARS = (str, int, float, bool, type(None))


def safe_repr(value: Any) -> str:
    """``repr(value)``, or a stand-in naming the type when ``repr`` raises."""
    try:
        return repr(value)
    except Exception:
        return f"<unrepresentable {type(value).__name__}>"


def _safe_str(value: Any) -> str:
    try:
        return str(value)
    except Exception:
        return safe_repr(value)


def _exception_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {_safe_str(exc)}"


def _default(value: Any) -> Any:
    """Turn a value orjson does not serialize into one it does; never raises."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, set | frozenset):
        return list(value)
    if isinstance(value, BaseException):
        return _exception_text(value)

    return safe_repr(value)


def _clean_str(text: str) -> str:
    # Lone surrogates cannot be encoded as UTF-8; write them escaped instead.
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def key_name(key: Any) -> str:
    """The JSON name a dict key is written under; never raises."""
    if isinstance(key, str):
        return _clean_str(key)
    if isinstance(key, enum.Enum):
        return key_name(key.value)
    if isinstance(key, datetime.date | datetime.time):
        return key.isoformat()
    if isinstance(key, uuid.UUID | int | float | bool) or key is None:
        return _safe_str(key)

    return _clean_str(_safe_str(_default(key)))


def _free_name(taken: dict, name: str, key: Any) -> str:
    """A name for ``key`` that no earlier key of the same dict was given."""
    candidate = f"{name} ({type(key).__name__})"
    number = 2
    while candidate in taken:
        candidate = f"{name} ({type(key).__name__} {number})"
        number += 1

    return candidate


def named_keys(value: dict) -> dict:
    """``value`` keyed by the names its keys are written under, none twice."""
    named = {}
    for key, item in value.items():
        name = key_name(key)
        if name in named:
            name = _free_name(named, name, key)
        named[name] = item

    return named


def to_plain(value: Any, *, _depth: int = 0, _path: set[int] | None = None) -> Any:
    """A copy of ``value`` made of JSON types only, with cycles cut; never raises."""
    path = set() if _path is None else _path
    if isinstance(value, str):
        return _clean_str(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value if -(2**63) <= value < 2**64 else str(value)
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, enum.Enum):
        return to_plain(value.value, _depth=_depth, _path=path)
    if _depth >= _MAX_PLAIN_DEPTH:
        return "<nested too deep>"
    if id(value) in path:
        return CIRCULAR
    path.add(id(value))
    try:
        return _plain_container(value, _depth, path)
    finally:
        path.discard(id(value))


def _plain_container(value: Any, depth: int, path: set[int]) -> Any:
    if isinstance(value, dict):
        try:
            named = named_keys(value)
        except Exception:
            return safe_repr(value)
        return {k: to_plain(v, _depth=depth + 1, _path=path) for k, v in named.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_plain(v, _depth=depth + 1, _path=path) for v in value]

    return to_plain(_default(value), _depth=depth + 1, _path=path)


def dumps(value: Any) -> bytes:
    """Serialize ``value`` as UTF-8 JSON; whatever it holds, this does not raise."""
    try:
        return orjson.dumps(value, default=_default)
    except Exception:
        pass
    try:
        return orjson.dumps(to_plain(value))
    except Exception as exc:
        # Only a bug in to_plain lands here; keep the caller alive regardless.
        return orjson.dumps({"zlog_encode_error": _exception_text(exc)})
