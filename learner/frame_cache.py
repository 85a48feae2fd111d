"""The learner's device-resident copy of the replay shards' camera frames.

A sampled transition reads F + 1 frames. Sent as pixels, a batch of 256 is 9 MB that the shard
gathers, Ray moves, and the learner copies into pinned memory and then to the GPU, every
update; on a fast GPU that host work, not the update, sets the pace. With the cache, the
replay client samples ``common.types.CachedBatch``: the stacks as rows of this cache (row
``shard * capacity + slot`` holds that ring slot's frame) and only the frames the cache does
not hold yet, so each frame crosses to the device about once. The cache stores those frames,
then gathers the batch's [B, F + 1, H, W] block on the device.

Memory: one row per ring slot of every shard, H x W bytes each: 7 KB at 84x84, 1.4 GB for
the default 2 shards of 100,000 slots.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from common.config_learner import FrameCacheMode
from common.errors import SpecError
from common.specs import EnvSpec
from common.types import CachedBatch

log = logging.getLogger(__name__)

AUTO_MEMORY_SHARE = 0.5  # "auto" keeps the cache to this share of the free device memory


def use_frame_cache(choice: FrameCacheMode, device: torch.device, spec: EnvSpec,
                    rows: int) -> bool:
    """Whether the learner samples through a frame cache of ``rows`` frames
    (``learner.execution.frame_cache``: DEVICE, OFF, or AUTO: on CUDA when it fits in
    ``AUTO_MEMORY_SHARE`` of the free device memory; never on a CPU, where the cache would
    only move the shards' gather into the learner's process)."""
    choice = FrameCacheMode(choice)
    if choice is not FrameCacheMode.AUTO:
        return choice is FrameCacheMode.DEVICE
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    wanted = rows * spec.frame.nbytes
    if wanted > AUTO_MEMORY_SHARE * free:
        log.warning("event=frame_cache_off bytes=%d free_device_bytes=%d", wanted, free)
        return False
    return True


class FrameCache:
    """``rows`` frames of the spec's size on ``device``, all zero until stored."""

    def __init__(self, spec: EnvSpec, rows: int, device: torch.device) -> None:
        if rows < 1:
            raise SpecError(f"frame cache rows ({rows}) must be >= 1")
        self.spec, self.rows, self.device = spec, int(rows), device
        size = spec.image_size
        self.frames = torch.zeros((self.rows, size, size), dtype=torch.uint8, device=device)

    def store(self, rows: torch.Tensor, frames: torch.Tensor) -> None:
        """Writes ``frames`` [K, H, W] into ``rows`` [K] (int64, distinct, on the device)."""
        if rows.numel():
            self.frames.index_copy_(0, rows, frames)

    def gather(self, rows: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """The frames of ``rows`` [B, F + 1] as [B, F + 1, H, W], into ``out`` when given."""
        frame = self.frames.shape[1:]
        if out is None:
            out = torch.empty((*rows.shape, *frame), dtype=torch.uint8, device=self.device)
        torch.index_select(self.frames, 0, rows.reshape(-1), out=out.view(-1, *frame))
        return out


class LazyFrameCache:
    """The learner's FrameCache, made at the first CachedBatch with that batch's size
    (``cache_rows``), so a learner fed pixels never allocates one."""

    def __init__(self, spec: EnvSpec, device: torch.device) -> None:
        self.spec, self.device = spec, device
        self.cache: FrameCache | None = None

    def checked(self, batch: CachedBatch) -> FrameCache:
        """The cache for ``batch``, after ``validate_cached_batch``.

        Raises:
            SpecError: the batch does not match the spec or indexes a cache of another size.
        """
        if self.cache is None:
            if not isinstance(batch.cache_rows, (int, np.integer)) or batch.cache_rows < 1:
                raise SpecError(f"cache_rows ({batch.cache_rows!r}) must be an int >= 1")
            validate_cached_batch(self.spec, batch, int(batch.cache_rows))
            self.cache = FrameCache(self.spec, int(batch.cache_rows), self.device)
        else:
            validate_cached_batch(self.spec, batch, self.cache.rows)
        return self.cache


def validate_cached_batch(spec: EnvSpec, batch: CachedBatch, rows: int) -> None:
    """Raises SpecError unless ``batch`` matches the spec and indexes a cache of ``rows``."""
    if batch.cache_rows != rows:
        raise SpecError(f"cache_rows ({batch.cache_rows}) != the learner's frame cache ({rows})")
    size, f, s = batch.size, spec.frames, spec.image_size
    _int_rows("frame_rows", batch.frame_rows, (size, f + 1), rows)
    k = batch.new_rows.shape[0] if isinstance(batch.new_rows, np.ndarray) else -1
    _int_rows("new_rows", batch.new_rows, (k,), rows)
    if k > size * (f + 1):
        raise SpecError(f"new_rows: expected at most {size * (f + 1)} rows, got {k}")
    ordered = np.sort(batch.new_rows)  # (np.unique hashes: several times slower at this size)
    if k > 1 and not (ordered[1:] != ordered[:-1]).all():
        repeated = ordered[1:][ordered[1:] == ordered[:-1]]
        raise SpecError(f"new_rows: rows must be distinct, {repeated[:4].tolist()} repeat")
    frames = batch.new_frames
    if (not isinstance(frames, np.ndarray) or frames.dtype != np.uint8
            or frames.shape != (k, s, s)):
        raise SpecError(f"new_frames: expected uint8 {(k, s, s)}, got "
                        f"{getattr(frames, 'dtype', type(frames).__name__)} "
                        f"{getattr(frames, 'shape', '')}")
    for name in ("obs_vector", "next_vector"):
        spec.vector.validate(getattr(batch, name), batch_dims=1)
        if getattr(batch, name).shape[0] != size:
            raise SpecError(f"{name}: batch size {getattr(batch, name).shape[0]} != {size}")
    spec.action.validate(batch.action, batch_dims=1)
    for name in ("reward", "terminated", "weight"):
        value = getattr(batch, name)
        if value.shape != (size,) or value.dtype != np.float32:
            raise SpecError(f"{name}: expected float32 [{size}], got {value.dtype} {value.shape}")


def _int_rows(name: str, value: object, shape: tuple[int, ...], rows: int) -> None:
    if (not isinstance(value, np.ndarray) or value.dtype != np.int64 or value.shape != shape):
        raise SpecError(f"{name}: expected int64 {shape}, got "
                        f"{getattr(value, 'dtype', type(value).__name__)} "
                        f"{getattr(value, 'shape', '')}")
    if value.size and (value.min() < 0 or value.max() >= rows):
        raise SpecError(f"{name}: rows [{value.min()}, {value.max()}] outside the frame cache's "
                        f"[0, {rows})")
