"""Learner checkpoints: atomic writes, ``weights_only`` loads, clear errors.

A checkpoint holds the learner's ``state_dict()`` (online and target networks, optimizers,
update counter, RNG state) and a header: a format version, the spec and the network config it
was made for. Loading checks the header before touching the learner, so a checkpoint of
another setup fails with a message that names the difference instead of a shape error.
"""
from __future__ import annotations

import os
import pathlib
import pickle
import zipfile
from typing import Any, Callable

import torch

from common.config import NetworkConfig, to_dict
from common.errors import CheckpointError
from common.specs import EnvSpec

FORMAT = "carla-td3-learner"
VERSION = 2  # 2: the encoder flattens conv features in (H, W, C) order (FlattenHWC)


def _header(spec: EnvSpec, network: NetworkConfig) -> dict[str, Any]:
    return {"format": FORMAT, "version": VERSION, "spec": to_dict(spec),
            "network": to_dict(network)}


def save(path: str | os.PathLike[str], spec: EnvSpec, network: NetworkConfig,
         learner_state: dict[str, Any]) -> None:
    """Writes header + ``learner_state`` to ``path`` via a temporary file and a rename.

    A crash mid-write leaves any earlier checkpoint at ``path`` intact.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save({"header": _header(spec, network), "state": learner_state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _diff(saved: dict[str, Any], expected: dict[str, Any], prefix: str) -> list[str]:
    keys = sorted(set(saved) | set(expected))
    return [f"{prefix}.{k}: checkpoint {saved.get(k)!r} != current {expected.get(k)!r}"
            for k in keys if saved.get(k) != expected.get(k)]


def _read(path: pathlib.Path, device: torch.device) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        data = torch.load(path, map_location=device, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError,
            ValueError, KeyError, AttributeError) as exc:
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt or truncated: "
                              f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("header"), dict) or "state" not in data:
        raise CheckpointError(f"checkpoint {str(path)!r} is not a learner checkpoint")
    return data


def load(path: str | os.PathLike[str], spec: EnvSpec, network: NetworkConfig,
         device: torch.device, restore: Callable[[dict[str, Any]], None]) -> None:
    """Reads ``path`` with ``torch.load(weights_only=True)``, checks it, calls ``restore``.

    Raises:
        CheckpointError: missing, corrupt or truncated file; another format or version; a
            spec or network config that differs from the current one; or a state that does
            not fit the learner (naming the underlying error).
    """
    path = pathlib.Path(path)
    data = _read(path, device)
    header, expected = data["header"], _header(spec, network)
    if header.get("format") != FORMAT or header.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {str(path)!r}: format {header.get('format')!r} "
                              f"version {header.get('version')!r}, expected {FORMAT!r} {VERSION}")
    problems = (_diff(header.get("spec", {}), expected["spec"], "spec")
                + _diff(header.get("network", {}), expected["network"], "network"))
    if problems:
        raise CheckpointError(f"checkpoint {str(path)!r} does not match this learner: "
                              + "; ".join(problems))
    try:
        restore(data["state"])
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {str(path)!r} does not fit this learner: "
                              f"{type(exc).__name__}: {exc}") from exc
