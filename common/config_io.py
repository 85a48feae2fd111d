"""Building config dataclasses from data (files, the command line, checkpoints) and back.

Unknown keys and values of the wrong type are errors that name the full dotted path.
``with_overrides`` and ``loads`` also validate the config they build (common/config_rules.py).

A section may list keys that moved (``MOVED``: old key -> new dotted key within the section,
e.g. LearnerConfig's ``device`` -> ``execution.device``): ``from_dict`` reads saved data that
still has an old key at its new place, with one log line, so configs of older runs
load; an override (``with_overrides``, ``check_overrides``: the command line) that names an old
key is a ConfigError naming the new one. Likewise ``REMOVED`` (key -> the value with which the
current code behaves the same, None for any value; e.g. RewardConfig's knobs whose experiments
lost): saved data holding that value loads without the key, with one log line; any other
value, or an override naming the key, is a ConfigError.
"""
from __future__ import annotations

import dataclasses
import enum
import json
import logging
import types
import typing
from typing import Any, Mapping, TypeVar

from common.config_rules import validate
from common.errors import ConfigError

T = TypeVar("T")

log = logging.getLogger(__name__)


def _move_keys(cls: type, data: Mapping[str, Any], path: str) -> Mapping[str, Any]:
    """``data`` with each of ``cls.MOVED``'s old keys put at its new place."""
    moved: dict[str, str] = getattr(cls, "MOVED", {})
    old_keys = [k for k in data if k in moved]
    if not old_keys:
        return data
    out = dict(data)
    pairs = []
    for key in old_keys:
        *sections, leaf = moved[key].split(".")
        node = out
        for section in sections:
            inner = node.get(section, {})
            if not isinstance(inner, Mapping):
                raise ConfigError(f"{_join(path, section)}: expected a mapping, got {inner!r}")
            node[section] = node = dict(inner)
        old, new = _join(path, key), _join(path, moved[key])
        if leaf in node:
            raise ConfigError(f"config sets both {old} (an old key) and {new}; keep only {new}")
        node[leaf] = out.pop(key)
        pairs.append(f"{old}->{new}")
    log.info("event=config_keys_moved keys=%s", ",".join(pairs))
    return out


def _drop_removed(cls: type, data: Mapping[str, Any], path: str) -> Mapping[str, Any]:
    """``data`` without ``cls.REMOVED``'s keys, each of which must hold its inert value."""
    removed: dict[str, Any] = getattr(cls, "REMOVED", {})
    gone = [k for k in data if k in removed]
    if not gone:
        return data
    for key in gone:
        inert, value = removed[key], data[key]
        if inert is not None and value != inert:
            raise ConfigError(f"{_join(path, key)} ({value!r}) was removed (its experiment lost: "
                              f"docs/learning.md); this code runs it only as {inert!r}")
    log.info("event=config_keys_removed keys=%s", ",".join(_join(path, k) for k in gone))
    return {k: v for k, v in data.items() if k not in removed}


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _refuse_moved(cls: type, dotted: str) -> None:
    """Raises ConfigError when override key ``dotted`` names a key that moved or was removed."""
    tp: Any = cls
    parts = dotted.split(".")
    for depth, part in enumerate(parts):
        if not dataclasses.is_dataclass(tp):
            return
        if part in getattr(tp, "REMOVED", {}):
            raise ConfigError(f"config key {dotted!r} was removed (its experiment lost: "
                              "docs/learning.md)")
        moved: dict[str, str] = getattr(tp, "MOVED", {})
        if part in moved:
            new = ".".join(parts[:depth] + [moved[part]] + parts[depth + 1:])
            raise ConfigError(f"config key {dotted!r} moved to {new!r}: set {new} instead")
        hints = typing.get_type_hints(tp)
        if part not in hints:
            return
        tp = hints[part]


def _coerce(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, path)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            choices = [m.value for m in tp]
            raise ConfigError(f"{path}: {value!r} is not one of {choices}") from None
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        last_error: ConfigError | None = None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, path)
            except ConfigError as exc:
                last_error = exc
        raise last_error or ConfigError(f"{path}: bad value {value!r}")
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        (item_tp, *_rest) = typing.get_args(tp)
        return tuple(_coerce(item_tp, v, f"{path}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{path}: expected a boolean, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        try:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{path}: expected an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{path}: expected a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: Mapping[str, Any], path: str = "") -> T:
    """Builds a config dataclass from a nested mapping; unknown keys are an error.

    Raises:
        ConfigError: naming the full dotted path of the unknown key or bad value.
    """
    data = _drop_removed(cls, _move_keys(cls, data, path), path)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = path or cls.__name__
        raise ConfigError(f"unknown config key(s) {unknown} in {where}; known: {sorted(names)}")
    kwargs = {k: _coerce(hints[k], v, f"{path}.{k}" if path else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        text = str(exc)
        if path and text.split(" ", 1)[0] in names:  # "frames (0) must be ..." names a field
            raise ConfigError(f"{path}.{text}") from exc
        raise ConfigError(f"{path or cls.__name__}: {text}") from exc


def to_dict(cfg: Any) -> Any:
    """The inverse of from_dict: plain JSON-serialisable data."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, enum.Enum):
        return cfg.value
    if isinstance(cfg, tuple):
        return [to_dict(v) for v in cfg]
    return cfg


def with_overrides(cfg: T, overrides: Mapping[str, Any]) -> T:
    """Returns ``cfg`` with dotted-path overrides applied, e.g. {"replay.num_shards": "4"},
    validated.

    Raises:
        ConfigError: for an unknown path, a key that moved (naming its new place), a value of
            the wrong type or a value out of range.
    """
    data = to_dict(cfg)
    for dotted, value in overrides.items():
        _refuse_moved(type(cfg), dotted)
        node = data
        parts = dotted.split(".")
        for depth, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                known = sorted(node) if isinstance(node, dict) else []
                prefix = ".".join(parts[: depth + 1])
                raise ConfigError(f"unknown config key {prefix!r} (in override {dotted!r}); known here: {known}")
            if depth == len(parts) - 1:
                node[part] = value
            else:
                node = node[part]
    return validate(from_dict(type(cfg), data))


def check_overrides(cls: type, overrides: Mapping[str, Any]) -> None:
    """Checks that each dotted key names a field of ``cls`` and that its value has the field's
    type (an object where a section is expected), without building or validating a config.

    Raises:
        ConfigError: naming the key (and, for a key that moved, its new place).
    """
    for dotted, value in overrides.items():
        _refuse_moved(cls, dotted)
        tp: Any = cls
        for depth, part in enumerate(dotted.split(".")):
            names = ({f.name for f in dataclasses.fields(tp)} if dataclasses.is_dataclass(tp)
                     else set())
            if part not in names:
                prefix = ".".join(dotted.split(".")[: depth + 1])
                raise ConfigError(f"unknown config key {prefix!r} (in {dotted!r}); known here: "
                                  f"{sorted(names)}")
            tp = typing.get_type_hints(tp)[part]
        _coerce(tp, value, dotted)


def dumps(cfg: Any) -> str:
    return json.dumps(to_dict(cfg), indent=2, sort_keys=True)


def loads(cls: type[T], text: str) -> T:
    """The validated config of JSON ``text`` (an object of nested sections).

    Raises:
        ConfigError: for text that is not a JSON object, an unknown key or a bad value.
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"config is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config must be a JSON object, got {type(data).__name__}")
    return validate(from_dict(cls, data))
