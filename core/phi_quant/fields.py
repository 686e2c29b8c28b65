"""Typed reads of the JSON files a checkpoint carries, one field at a time.

A checkpoint from the Hub is untrusted input: ``config.json``, the shard index and the tokenizer
files may hold any JSON value anywhere. Every field phi-quant uses is read through a
:class:`Fields` accessor that checks its type and range and, when it is wrong, raises one
:class:`~phi_quant.errors.CheckpointError` naming the file, the field, what was found and what
was expected (``config.json: num_hidden_layers must be an integer from 1 to 4096, found the
string 'abc'``). Architecture modules read their config only through this module, so no bad value
reaches arithmetic, an allocation or a backend.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from .errors import CheckpointError, PhiQuantError

__all__ = ["Fields", "describe", "REQUIRED"]


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


#: Default meaning "the field must be present (and not null)".
REQUIRED: Any = _Required()


def describe(value: object, limit: int = 60) -> str:
    """A short phrase naming a JSON value's kind and value: ``the string 'abc'``, ``a list [256]``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        kind = "the number"
    elif isinstance(value, str):
        kind = "the string"
    elif isinstance(value, list):
        kind = "a list"
    elif isinstance(value, dict):
        kind = "an object"
    else:
        kind = f"a {type(value).__name__}"
    text = repr(value)
    if len(text) > limit:
        text = text[:limit] + "..."
    return f"{kind} {text}"


def _range_text(lo: float | None, hi: float | None, lo_open: bool = False) -> str:
    if lo is not None and hi is not None:
        return f" from {lo} to {hi}" if not lo_open else f" above {lo} and at most {hi}"
    if lo is not None:
        return f" {'above' if lo_open else 'of at least'} {lo}"
    if hi is not None:
        return f" of at most {hi}"
    return ""


class Fields:
    """One JSON object from one file, read with type and range checks.

    :param data: the parsed JSON value (must be an object).
    :param file: how messages name the file (usually its path).
    :param prefix: the path of this object inside the file (``"rope_scaling."``), for nested reads.
    :param missing: error type for an absent required field (e.g. ``UnsupportedModelError`` for a
        config that is not a Phi config at all); malformed values are always ``CheckpointError``.
    :param hint: appended to the message of a missing field.
    """

    def __init__(self, data: Any, file: str, prefix: str = "", *,
                 missing: type[PhiQuantError] = CheckpointError, hint: str = ""):
        self.file, self.prefix, self._missing, self._hint = str(file), prefix, missing, hint
        if not isinstance(data, dict):
            where = f"{prefix.rstrip('.')} must be" if prefix else "must hold"
            raise CheckpointError(f"{self.file} {where} a JSON object, found {describe(data)}")
        self.data: dict[str, Any] = data

    # -- plumbing ----------------------------------------------------------------------------
    def error(self, key: str, expected: str, value: Any) -> CheckpointError:
        """The one-line refusal of field ``key``: file, field, what was expected and found."""
        return CheckpointError(f"{self.file}: {self.prefix}{key} must be {expected}, found {describe(value)}")

    def has(self, key: str) -> bool:
        """True when ``key`` is present and not null."""
        return self.data.get(key) is not None

    def raw(self, key: str, default: Any = None) -> Any:
        """The unchecked value (for fields only passed on, never computed with)."""
        value = self.data.get(key)
        return default if value is None else value

    def _get(self, key: str, default: Any) -> tuple[bool, Any]:
        value = self.data.get(key)
        if value is None:
            if default is REQUIRED:
                hint = f"; {self._hint}" if self._hint else ""
                raise self._missing(f"{self.file} has no {self.prefix}{key}{hint}")
            return False, default
        return True, value

    # -- scalars -----------------------------------------------------------------------------
    def int(self, key: str, default: Any = REQUIRED, *, min: int | None = None, max: int | None = None) -> Any:
        """An integer (never a bool or a float) within ``[min, max]``."""
        present, value = self._get(key, default)
        if not present:
            return value
        if type(value) is not int or (min is not None and value < min) or (max is not None and value > max):
            raise self.error(key, f"an integer{_range_text(min, max)}", value)
        return value

    def float(self, key: str, default: Any = REQUIRED, *, min: float | None = None, max: float | None = None,
              min_open: bool = False) -> Any:
        """A finite number (integers accepted) within the range; ``min_open`` excludes ``min`` itself."""
        present, value = self._get(key, default)
        if not present:
            return value
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if ok and min is not None:
            ok = value > min if min_open else value >= min
        if ok and max is not None:
            ok = value <= max
        if not ok:
            raise self.error(key, f"a finite number{_range_text(min, max, min_open)}", value)
        return float(value)

    def bool(self, key: str, default: Any = REQUIRED) -> Any:
        present, value = self._get(key, default)
        if not present:
            return value
        if not isinstance(value, bool):
            raise self.error(key, "true or false", value)
        return value

    def str(self, key: str, default: Any = REQUIRED, *, choices: tuple[str, ...] | None = None) -> Any:
        present, value = self._get(key, default)
        if not present:
            return value
        if not isinstance(value, str) or (choices is not None and value not in choices):
            expected = f"one of {', '.join(repr(c) for c in choices)}" if choices is not None else "a string"
            raise self.error(key, expected, value)
        return value

    # -- containers --------------------------------------------------------------------------
    def list(self, key: str, default: Any = REQUIRED, *, item: str = "", check: Callable[[Any], bool] | None = None,
             length: int | None = None) -> Any:
        """A list whose items all pass ``check`` (described by ``item``, e.g. "integers")."""
        present, value = self._get(key, default)
        if not present:
            return value
        ok = isinstance(value, list)
        ok = ok and (length is None or len(value) == length)
        ok = ok and (check is None or all(check(v) for v in value))
        if not ok:
            size = f" of {length}" if length is not None else ""
            raise self.error(key, f"a list{size}{' ' + item if item else ''}", value)
        return value

    def float_list(self, key: str, default: Any = REQUIRED, *, length: int | None = None,
                   min: float | None = None, min_open: bool = False) -> Any:
        """A list of finite numbers, optionally of a given ``length`` and above ``min``."""
        def check(v: Any) -> bool:
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                return False
            return min is None or (v > min if min_open else v >= min)

        got = self.list(key, default, item=f"of finite numbers{_range_text(min, None, min_open)}", check=check,
                        length=length)
        return [float(v) for v in got] if isinstance(got, list) else got

    def object(self, key: str, default: Any = REQUIRED) -> Any:
        """A nested object as :class:`Fields` (messages name ``key.field``)."""
        present, value = self._get(key, default)
        if not present:
            return value
        if not isinstance(value, dict):
            raise self.error(key, "a JSON object", value)
        return Fields(value, self.file, f"{self.prefix}{key}.", missing=self._missing, hint=self._hint)

    def mapping(self, key: str, default: Any = REQUIRED, *, value: str = "",
                check: Callable[[Any], bool] | None = None) -> Any:
        """An object whose values all pass ``check`` (keys are JSON strings already)."""
        present, got = self._get(key, default)
        if not present:
            return got
        ok = isinstance(got, dict) and (check is None or all(check(v) for v in got.values()))
        if not ok:
            raise self.error(key, f"an object{' of ' + value if value else ''}", got)
        return got
