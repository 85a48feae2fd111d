"""Building config dataclasses from data (files, the command line, checkpoints) and back.

Unknown keys and values of the wrong type are errors that name the full dotted path.
``with_overrides`` and ``loads`` also validate the config they build (common/config_rules.py).
"""
from __future__ import annotations

import dataclasses
import enum
import json
import types
import typing
from typing import Any, Mapping, TypeVar

from common.config_rules import validate
from common.errors import ConfigError

T = TypeVar("T")


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
        ConfigError: for an unknown path, a value of the wrong type or a value out of range.
    """
    data = to_dict(cfg)
    for dotted, value in overrides.items():
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
        ConfigError: naming the key.
    """
    for dotted, value in overrides.items():
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
