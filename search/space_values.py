"""How a search-space file's keys and values are read: one-line errors naming the file, the key
and the fix (:class:`Reporter`), unknown-key checks with a suggestion, and scalar values coerced
with :mod:`trainables.config`'s own rules. Used by :mod:`search.space`."""
from __future__ import annotations

import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any, Mapping, NoReturn

from trainables.errors import InputError


class SpaceError(InputError):
    """A search-space file that cannot be used; the one-line message names file, problem and fix."""


class Reporter:
    """Builds one-line SpaceErrors for one file, marking keys that came from ``--set``."""

    def __init__(self, source: Path) -> None:
        self.source = source
        self.overridden: set[str] = set()

    def fail(self, where: str, problem: str, fix: str) -> NoReturn:
        origin = " (from --set)" if where in self.overridden else ""
        where = f"{where}{origin}: " if where else ""
        message = f"{self.source}: {where}{problem}; fix: {fix}"
        raise SpaceError(" ".join(message.splitlines()))


def known(keys: typing.Iterable[Any], valid: typing.Iterable[str], where: str, what: str,
           rep: Reporter) -> None:
    """Fail on the first key not in ``valid``, suggesting the closest valid one."""
    unknown, valid = sorted(str(k) for k in set(keys) - set(valid)), sorted(valid)
    if unknown:
        close = difflib.get_close_matches(unknown[0], valid, n=1)
        rep.fail(where + unknown[0], f"unknown {what}: {unknown}",
                 (f"did you mean {close[0]!r}? " if close else "") + f"valid keys are {valid}")


def base_type(annotation: Any) -> tuple[Any, bool]:
    """(the non-None type, whether None is allowed) of a field annotation."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0], len(args) < len(typing.get_args(annotation))
    return annotation, False


def as_number(value: Any) -> int | float | None:
    """``value`` as a number (numeric strings such as YAML's ``'1e-5'`` converted), else None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    for convert in (int, float) if isinstance(value, str) else ():
        try:
            return convert(value)
        except ValueError:
            pass
    return None


def field_value(value: Any, where: str, annotation: Any, rep: Reporter) -> Any:
    """The value for the field at ``where`` (``params.lr``), type-checked and coerced."""
    from trainables.config import ConfigError, _coerce

    name = where.rpartition(".")[2]
    base, optional = base_type(annotation)
    if value is None:
        if optional:
            return None
        rep.fail(where, "null is not a value of this parameter", "give a value or remove the key")
    if isinstance(value, (Mapping, list)):
        rep.fail(where, f"{value!r} is not a {getattr(base, '__name__', base)} value",
                 "write {choice: [...]} for several values, or a single scalar")
    strict = {bool: ("true or false", "write true or false"), str: ("a string", "quote the value")}
    if base in strict and not isinstance(value, base):
        rep.fail(where, f"expected {strict[base][0]}, got {value!r}", strict[base][1])
    if base in (int, float):
        number = as_number(value)
        if number is None:
            rep.fail(where, f"expected a number ({base.__name__}), got {value!r}",
                     "write a number, floats with a dot (1.0e-5)")
        if not math.isfinite(number):   # .nan / .inf: no sampler or trainable can use them
            rep.fail(where, f"{value!r} is not a finite number", "write a finite number")
        value = number
    try:
        return _coerce(value, annotation, name)
    except ConfigError as exc:
        rep.fail(where, str(exc).removeprefix(f"{name}: "),
                 "write a whole number" if base is int else f"write a {base.__name__} value")
