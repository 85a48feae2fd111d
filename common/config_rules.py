"""Checking a config tree: the one walk every config takes before anything runs on it.

Each config class states what its fields may hold beside them, in two class attributes:
``RULES`` maps a field name to a rule (a function of the value that says what is wrong with
it, or None), and ``CHECKS`` lists the checks that span fields (functions of the section and
its dotted prefix that say what is wrong, or None). ``validate`` walks the tree and, for every
field, checks its type (an enum field holds a member, an int field no bool), its rule, and
that a float is finite; then each section's ``CHECKS``. Errors name the dotted key and the
value: ``learner.td3.gamma (nan) must be in (0, 1]``.

The rule makers below are named apart from every config field (``tcp_port``, ``host_or_ip``):
in a class body a field named ``port`` would hide a rule maker of that name.
"""
from __future__ import annotations

import dataclasses
import enum
import ipaddress
import math
import re
import typing
from typing import Any, Callable

from common.errors import ConfigError

Rule = Callable[[Any], "str | None"]
Check = Callable[[Any, str], "str | None"]


def _num(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def _because(text: str, why: str) -> str:
    return f"{text}: {why}" if why else text


def at_least(low: float, why: str = "") -> Rule:
    """The value is >= ``low`` (NaN fails); ``why`` is appended to the message."""
    text = _because(f"must be >= {_num(low)}", why)
    return lambda v: None if v >= low else text


def above(low: float, why: str = "") -> Rule:
    """The value is > ``low`` (NaN fails); ``why`` is appended to the message."""
    text = _because(f"must be > {_num(low)}", why)
    return lambda v: None if v > low else text


def in_range(low: float, high: float, *, low_open: bool = False, high_open: bool = False,
             why: str = "") -> Rule:
    """The value is between ``low`` and ``high``, each end closed unless said open (NaN fails).

    Args:
        why: appended to the message.
    """
    text = _because(f"must be in {'(' if low_open else '['}{_num(low)}, {_num(high)}"
                    f"{')' if high_open else ']'}", why)

    def rule(v: float) -> str | None:
        ok_low = v > low if low_open else v >= low
        ok_high = v < high if high_open else v <= high
        return None if ok_low and ok_high else text
    return rule


def tcp_port(*, zero: str = "") -> Rule:
    """A TCP port, 1..65535; with ``zero`` (what 0 means) 0..65535."""
    return in_range(0 if zero else 1, 65535, why=f"0 {zero}" if zero else "")


def matches(pattern: str, what: str) -> Rule:
    """A string that fully matches ``pattern``, described as ``what``."""
    compiled = re.compile(pattern)
    return lambda v: None if compiled.fullmatch(v) else f"must be {what}"


def non_empty(v: str) -> str | None:
    """A string with a printable character, and no control character (NUL included)."""
    return None if v.strip() and v.isprintable() else "must be a non-empty printable string"


_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_NAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*")


def host_or_ip(v: str) -> str | None:
    """An IP address or a host name (letters, digits, '-', '.')."""
    try:
        ipaddress.ip_address(v)
        return None
    except ValueError:
        pass
    return None if _HOST_NAME.fullmatch(v) else "must be an IP address or a host name"


def endpoint(v: str) -> str | None:
    """HOST:PORT with 0 < PORT < 65536 (a CARLA server)."""
    name, sep, number = v.rpartition(":")
    valid_port = number.isascii() and number.isdigit() and 0 < int(number) < 65536
    if sep and not host_or_ip(name) and valid_port:
        return None
    return "must look like HOST:PORT with 0 < PORT < 65536"


def each(rule: Rule) -> Rule:
    """Every item of a tuple passes ``rule``; the message names the first that does not."""
    def check(items: tuple) -> str | None:
        for i, item in enumerate(items):
            problem = rule(item)
            if problem:
                return f"item {i} ({item!r}) {problem}"
        return None
    return check


def unbounded(v: Any) -> str | None:
    """Any value of the field's type (a float still has to be finite)."""
    return None


def validate(cfg: Any, prefix: str = "") -> Any:
    """Checks every field of the config tree ``cfg``; returns ``cfg`` unchanged.

    Args:
        cfg: a config dataclass (the root, or a section).
        prefix: the dotted path of ``cfg`` in its root, ending in "." ("" for the root).

    Raises:
        ConfigError: naming the first bad key and its value.
    """
    cls = type(cfg)
    hints = typing.get_type_hints(cls)
    rules: dict[str, Rule] = getattr(cls, "RULES", {})
    for f in dataclasses.fields(cfg):
        value, path, tp = getattr(cfg, f.name), prefix + f.name, hints[f.name]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, tp):
                raise ConfigError(f"{path} ({value!r}) must be a {tp.__name__} section")
            validate(value, path + ".")
            continue
        problem = _type_problem(tp, value)
        if problem is None and f.name in rules:
            problem = rules[f.name](value)
        if problem is None and isinstance(value, float) and not math.isfinite(value):
            problem = "must be a finite number"
        if problem:
            raise ConfigError(f"{path} ({_show(value)}) {problem}")
    for check in getattr(cls, "CHECKS", ()):
        problem = check(cfg, prefix)
        if problem:
            raise ConfigError(problem)
    return cfg


def _show(value: Any) -> str:
    return repr(value.value) if isinstance(value, enum.Enum) else repr(value)


def _type_problem(tp: Any, value: Any) -> str | None:
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return None if isinstance(value, tp) else f"must be one of {[m.value for m in tp]}"
    if tp is bool:
        return None if isinstance(value, bool) else "must be a boolean"
    if tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else "must be an integer"
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if ok else "must be a number"
    if tp is str:
        return None if isinstance(value, str) else "must be a string"
    if typing.get_origin(tp) is tuple:
        if not isinstance(value, tuple):
            return "must be a list"
        (item_tp, *_rest) = typing.get_args(tp)
        for i, item in enumerate(value):
            problem = _type_problem(item_tp, item)
            if problem:
                return f"item {i} ({item!r}) {problem}"
    return None
