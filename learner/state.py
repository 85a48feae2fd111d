"""Learner checkpoints: one self-verifying file, ``weights_only`` loads, clear errors.

A checkpoint holds the learner's ``state_dict()`` (online and target networks, optimizers,
update counter, RNG state) and a header: a format version, the spec and the network config it
was made for. Loading checks the header before touching the learner, so a checkpoint of
another setup fails with a message that names the difference instead of a shape error.

The file is one line, ``carla-td3-learner sha256=<hex> size=<n>``, then the ``torch.save``
payload it describes: a flipped bit anywhere fails the load, and so does a NaN or an infinity
in any weight or optimizer tensor. It is written with ``common.durable`` (temporary file,
fsync, rename, fsync of the directory).
"""
from __future__ import annotations

import hashlib
import io
import os
import pathlib
import pickle
import re
import tokenize
import zipfile
from typing import Any, Callable, Iterator

import torch

from common import durable
from common.config import NetworkConfig, to_dict
from common.errors import CheckpointError
from common.specs import EnvSpec

FORMAT = "carla-td3-learner"
VERSION = 2  # 2: the encoder flattens conv features in (H, W, C) order (FlattenHWC)
_LINE = re.compile(rb"carla-td3-learner sha256=([0-9a-f]{64}) size=(0|[1-9][0-9]{0,15})\n")
_MAX_LINE = 128
_WEIGHTS = ("modules", "optimizers", "snapshots")  # every tensor here must be finite


def _header(spec: EnvSpec, network: NetworkConfig) -> dict[str, Any]:
    return {"format": FORMAT, "version": VERSION, "spec": to_dict(spec),
            "network": to_dict(network)}


def save(path: str | os.PathLike[str], spec: EnvSpec, network: NetworkConfig,
         learner_state: dict[str, Any]) -> None:
    """Writes header + ``learner_state`` to ``path`` durably and with its checksum.

    A crash mid-write leaves any earlier checkpoint at ``path`` intact.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save({"header": _header(spec, network), "state": learner_state}, buffer)
    payload = buffer.getbuffer()
    line = f"{FORMAT} sha256={hashlib.sha256(payload).hexdigest()} size={len(payload)}\n"
    durable.atomic_write_bytes(path, line.encode() + payload)


def _diff(saved: dict[str, Any], expected: dict[str, Any], prefix: str) -> list[str]:
    keys = sorted(set(saved) | set(expected))
    return [f"{prefix}.{k}: checkpoint {saved.get(k)!r} != current {expected.get(k)!r}"
            for k in keys if saved.get(k) != expected.get(k)]


def _verified_payload(path: pathlib.Path) -> memoryview:
    """The torch payload of ``path`` once its line and checksum check out."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"checkpoint {str(path)!r} is unreadable: {exc}") from None
    end = data.find(b"\n", 0, _MAX_LINE) + 1
    m = _LINE.fullmatch(data[:end]) if end else None
    if m is None:
        old = data.startswith(b"PK\x03\x04")  # a bare torch.save file of an earlier version
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt or truncated: "
                              + ("written before checkpoints carried a checksum; it cannot be "
                                 "verified" if old else "no carla-td3-learner checksum line"))
    payload = memoryview(data)[end:]
    if len(payload) != int(m.group(2)):
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt or truncated: "
                              f"{len(payload)} payload bytes, its header says {int(m.group(2))}")
    if hashlib.sha256(payload).hexdigest() != m.group(1).decode():
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt or truncated: checksum mismatch")
    return payload


def _read(path: pathlib.Path, device: torch.device) -> dict[str, Any]:
    payload = _verified_payload(path)
    try:
        data = torch.load(io.BytesIO(payload), map_location=device, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError,
            ValueError, KeyError, AttributeError, TypeError, tokenize.TokenError) as exc:
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt or truncated: "
                              f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("header"), dict) or "state" not in data:
        raise CheckpointError(f"checkpoint {str(path)!r} is not a learner checkpoint")
    return data


def _tensors(tree: Any, prefix: str) -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(tree, torch.Tensor):
        yield prefix, tree
    elif isinstance(tree, dict):
        for k, v in tree.items():
            yield from _tensors(v, f"{prefix}.{k}")
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            yield from _tensors(v, f"{prefix}[{i}]")


def check_finite(learner_state: dict[str, Any], where: str) -> None:
    """Raises CheckpointError naming the first weight or optimizer tensor holding a NaN or
    an infinity (``where`` names the checkpoint)."""
    for key in _WEIGHTS:
        for name, tensor in _tensors(learner_state.get(key), key):
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                bad = tensor[~torch.isfinite(tensor)].flatten()[0].item()
                raise CheckpointError(f"checkpoint {where}: {name} holds {bad} (non-finite weights)")


def load(path: str | os.PathLike[str], spec: EnvSpec, network: NetworkConfig,
         device: torch.device, restore: Callable[[dict[str, Any]], None]) -> None:
    """Reads and verifies ``path`` (``torch.load(weights_only=True)``), calls ``restore``.

    Raises:
        CheckpointError: missing, corrupt or truncated file (a checksum mismatch); another
            format or version; a spec or network config that differs from the current one;
            a non-finite weight (naming the tensor); or a state that does not fit the learner
            (naming the underlying error).
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
    if not isinstance(data["state"], dict):
        raise CheckpointError(f"checkpoint {str(path)!r} is not a learner checkpoint")
    check_finite(data["state"], repr(str(path)))
    try:
        restore(data["state"])
    except (KeyError, RuntimeError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise CheckpointError(f"checkpoint {str(path)!r} does not fit this learner: "
                              f"{type(exc).__name__}: {exc}") from exc
