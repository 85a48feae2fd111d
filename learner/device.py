"""Where the learner runs: device choice and host-to-device batches (precision:
``learner/precision.py``).

Each is chosen once at construction (CPU or CUDA objects), so the update step holds no device
branches. On CUDA a batch is copied into pinned host buffers and sent with non-blocking copies;
on CPU the numpy arrays are used in place (``torch.from_numpy``, no copy). A CachedBatch
(``learner.frame_cache``) sends its rows and new frames the same way; its stacks are then
gathered from the cache on the device.
"""
from __future__ import annotations

import ctypes
import warnings
from typing import NamedTuple

import numpy as np
import torch

from common.errors import ConfigError, SpecError
from common.specs import EnvSpec
from common.types import CachedBatch, SampleBatch
from learner.frame_cache import FrameCache


class DeviceBatch(NamedTuple):
    """A SampleBatch as tensors on the learner's device (images stay uint8)."""

    image: torch.Tensor
    vector: torch.Tensor
    action: torch.Tensor
    reward: torch.Tensor
    next_image: torch.Tensor
    next_vector: torch.Tensor
    terminated: torch.Tensor
    weight: torch.Tensor


_FIELDS = ("obs_image", "obs_vector", "action", "reward", "next_image", "next_vector",
           "terminated", "weight")
_SMALL = ("obs_vector", "action", "reward", "next_vector", "terminated", "weight")


def resolve_device(name: str) -> torch.device:
    """Maps "auto" to CUDA when available, else CPU; checks that a CUDA device exists.

    Raises:
        ConfigError: for a malformed name or a CUDA device that is not there.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"device ({name!r}) is not a torch device: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device ({name!r}) asks for CUDA but torch sees no CUDA device")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device ({name!r}) must be cpu or cuda")
    return device


# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def keep_freed_memory(libc_name: str = "libc.so.6") -> bool:
    """Makes glibc malloc keep freed blocks of up to 32 MiB in the heap for reuse.

    A CPU update allocates and frees the same tensors of tens of MB (a float image batch)
    every step. By default glibc serves blocks that large with fresh ``mmap`` pages or trims
    them off the heap top when freed, so every update page-faults its activations in again
    (its cost: docs/benchmarks.md, "Code choices").
    This is the same fix as preloading tcmalloc or jemalloc, which PyTorch's CPU performance
    guide recommends, without a preload. The process keeps up to 1 GiB of freed heap.

    Returns:
        Whether the settings were applied (False where the C library is not glibc).
    """
    try:
        libc = ctypes.CDLL(libc_name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_THRESHOLD, 32 << 20), (_M_TRIM_THRESHOLD, 1 << 30), (_M_TOP_PAD, 256 << 20)))


def configure_backends(device: torch.device) -> None:
    """Per-process backend settings, chosen once for the learner's device.

    CUDA: cuDNN picks the fastest convolution algorithm for the fixed batch shape, and fp32
    matrix products may use TF32 tensor cores. CPU: freed activation memory is kept for reuse
    (``keep_freed_memory``).
    """
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")
    else:
        keep_freed_memory()


def validate_batch(spec: EnvSpec, batch: SampleBatch) -> None:
    """Raises SpecError unless every field the update reads matches the spec and batch size."""
    spec.validate_obs({"image": batch.obs_image, "vector": batch.obs_vector}, batch_dims=1)
    spec.validate_obs({"image": batch.next_image, "vector": batch.next_vector}, batch_dims=1)
    spec.action.validate(batch.action, batch_dims=1)
    size = batch.size
    for name in ("reward", "terminated", "weight"):
        value = getattr(batch, name)
        if value.shape != (size,) or value.dtype != np.float32:
            raise SpecError(f"{name}: expected float32 [{size}], got {value.dtype} {value.shape}")
    for name in ("obs_image", "obs_vector", "next_image", "next_vector"):
        if getattr(batch, name).shape[0] != size:
            raise SpecError(f"{name}: batch size {getattr(batch, name).shape[0]} != {size}")


def packed_frames(batch: SampleBatch) -> np.ndarray | None:
    """The [B, F + 1, H, W] block behind ``obs_image`` and ``next_image`` when they are the two
    overlapping views a replay shard hands out (``replay.shard.PackedBatch.unpack``), else None.

    Copying that block once moves 5 frames per transition to the device instead of 8.
    """
    obs, nxt = batch.obs_image, batch.next_image
    if (obs.ndim != 4 or obs.shape != nxt.shape or obs.dtype != nxt.dtype
            or obs.strides != nxt.strides):
        return None
    b, f, h, w = obs.shape
    item = obs.itemsize
    frame = h * w * item
    start = obs.__array_interface__["data"][0]
    if (nxt.__array_interface__["data"][0] - start != frame
            or obs.strides != ((f + 1) * frame, frame, w * item, item)):
        return None
    # The block's last frame is next_image's: memory the views already cover.
    return np.lib.stride_tricks.as_strided(obs, shape=(b, f + 1, h, w), strides=obs.strides,
                                           writeable=False)


def _cached_batch(batch: CachedBatch, frames: torch.Tensor, fields: dict) -> DeviceBatch:
    """A DeviceBatch of a CachedBatch: its stacks views of the gathered ``frames`` block."""
    f = frames.shape[1] - 1
    return DeviceBatch(frames[:, :f], fields["obs_vector"], fields["action"], fields["reward"],
                       frames[:, 1:], fields["next_vector"], fields["terminated"],
                       fields["weight"])


class CpuTransfer:
    """CPU learner: tensors share memory with the numpy batch (image views included: the
    encoders' ``prepare`` reads them in place)."""

    def __call__(self, batch: SampleBatch) -> DeviceBatch:
        return DeviceBatch(*(_from_numpy(getattr(batch, f)) for f in _FIELDS))

    def cached(self, batch: CachedBatch, cache: FrameCache) -> DeviceBatch:
        """Stores the batch's new frames in ``cache``, then gathers its stacks from it."""
        cache.store(_from_numpy(batch.new_rows), _from_numpy(batch.new_frames))
        frames = cache.gather(_from_numpy(batch.frame_rows))
        return _cached_batch(batch, frames, {f: _from_numpy(getattr(batch, f)) for f in _SMALL})

    def release(self) -> None:
        """Nothing to release on CPU (see ``CudaTransfer.release``)."""


def _from_numpy(value: np.ndarray) -> torch.Tensor:
    # Arrays from Ray's object store are read-only; the learner only reads them.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(value)


class _Slot:
    """One set of pinned host and device buffers with the events that guard their reuse."""

    def __init__(self) -> None:
        self.pinned: dict[str, torch.Tensor] = {}
        self.on_device: dict[str, torch.Tensor] = {}
        self.copied: torch.cuda.Event | None = None  # H2D done: pinned free, device ready
        self.consumed: torch.cuda.Event | None = None  # the update that read it is done

    def buffers(self, name: str, value: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Pinned and device buffers of ``value``'s shape and dtype."""
        return self.sized(name, value.shape, value.dtype, device)

    def sized(self, name: str, shape: tuple[int, ...], dtype: np.dtype,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Pinned and device buffers of ``shape`` and ``dtype``, made once per change."""
        pinned = self.pinned.get(name)
        if pinned is None or tuple(pinned.shape) != tuple(shape) or pinned.numpy().dtype != dtype:
            pinned = torch.from_numpy(np.empty(shape, dtype)).pin_memory()
            self.pinned[name] = pinned
        return pinned, self.device_buffer(name, pinned.shape, pinned.dtype, device)

    def device_buffer(self, name: str, shape: tuple[int, ...], dtype: torch.dtype,
                      device: torch.device) -> torch.Tensor:
        """The slot's device buffer ``name``, made once per change of shape or dtype. The
        frame block a CachedBatch gathers is the "frames" buffer a PackedBatch's block is
        copied into, so batches of either kind lie where the CUDA graphs of the slot read."""
        buf = self.on_device.get(name)
        if buf is None or tuple(buf.shape) != tuple(shape) or buf.dtype != dtype:
            buf = torch.empty(shape, dtype=dtype, device=device)
            self.on_device[name] = buf
        return buf


class CudaTransfer:
    """CUDA learner: numpy -> pinned host buffers -> device, on a copy stream of its own.

    Two slots of buffers alternate, so the copy of the next batch overlaps the update running
    on the previous one; events order each slot's reuse (its pinned buffers only after their
    copy finished, its device buffers only after the update that read them, marked by
    ``release``). A batch whose two image stacks are views of one [B, F + 1, H, W] block
    (what the replay returns) moves that block once; a CachedBatch moves only the frames
    the cache lacks and gathers its block into the slot's device buffer of that block.
    """

    def __init__(self, device: torch.device, slots: int = 2) -> None:
        self.device = device
        self._stream = torch.cuda.Stream(device)
        self._slots = [_Slot() for _ in range(slots)]
        self._next = 0
        self._last: _Slot | None = None

    def __call__(self, batch: SampleBatch) -> DeviceBatch:
        slot = self._take_slot()
        frames = packed_frames(batch)
        arrays = {f: getattr(batch, f) for f in _FIELDS}
        if frames is not None:
            del arrays["obs_image"], arrays["next_image"]
            arrays["frames"] = frames
        out = self._send(slot, {name: (*slot.buffers(name, value, self.device), value)
                                for name, value in arrays.items()})
        if frames is not None:
            f = frames.shape[1] - 1
            out["obs_image"], out["next_image"] = out["frames"][:, :f], out["frames"][:, 1:]
        return DeviceBatch(*(out[f] for f in _FIELDS))

    def cached(self, batch: CachedBatch, cache: FrameCache) -> DeviceBatch:
        """Sends the batch's small fields, rows and new frames; then, on the update's stream
        (which orders them after every earlier update's reads of the cache), stores the new
        frames in ``cache`` and gathers the batch's [B, F + 1, H, W] block from it."""
        slot = self._take_slot()
        arrays = {name: (*slot.buffers(name, getattr(batch, name), self.device),
                         getattr(batch, name)) for name in (*_SMALL, "frame_rows")}
        k, most = batch.new_rows.shape[0], batch.frame_rows.size
        if k:  # buffers for the most new frames a batch can have, so K may vary freely
            rows_p, rows_d = slot.sized("new_rows", (most,), np.dtype(np.int64), self.device)
            frames_p, frames_d = slot.sized("new_frames", (most, *batch.new_frames.shape[1:]),
                                            np.dtype(np.uint8), self.device)
            arrays["new_rows"] = (rows_p[:k], rows_d[:k], batch.new_rows)
            arrays["new_frames"] = (frames_p[:k], frames_d[:k], batch.new_frames)
        out = self._send(slot, arrays)
        if k:
            cache.store(out["new_rows"], out["new_frames"])
        gathered = slot.device_buffer("frames", (*batch.frame_rows.shape, *cache.frames.shape[1:]),
                                      torch.uint8, self.device)
        return _cached_batch(batch, cache.gather(out["frame_rows"], out=gathered), out)

    def _take_slot(self) -> _Slot:
        slot = self._slots[self._next]
        self._next = (self._next + 1) % len(self._slots)
        if slot.copied is not None:
            slot.copied.synchronize()  # its pinned buffers are free again
        return slot

    def _send(self, slot: _Slot, arrays: dict[str, tuple[torch.Tensor, torch.Tensor, np.ndarray]]
              ) -> dict[str, torch.Tensor]:
        """Copies each (pinned, device, value) into pinned memory and sends it on the copy
        stream; the current stream waits for the copies. Returns the device tensors."""
        for pinned, _, value in arrays.values():
            pinned.copy_(_from_numpy(value))  # torch splits a large copy over its threads
        with torch.cuda.stream(self._stream):
            if slot.consumed is not None:
                self._stream.wait_event(slot.consumed)
            for pinned, on_device, _ in arrays.values():
                on_device.copy_(pinned, non_blocking=True)
            slot.copied = torch.cuda.Event()
            slot.copied.record(self._stream)
        torch.cuda.current_stream(self.device).wait_event(slot.copied)
        self._last = slot
        return {name: on_device for name, (_, on_device, _) in arrays.items()}

    def release(self) -> None:
        """Marks the latest batch's device buffers as read by the work queued so far (call it
        right after queueing the update that uses them)."""
        if self._last is not None:
            self._last.consumed = torch.cuda.Event()
            self._last.consumed.record(torch.cuda.current_stream(self.device))
            self._last = None


def transfer_for(device: torch.device) -> CpuTransfer | CudaTransfer:
    """The host-to-device copier for ``device``."""
    return CudaTransfer(device) if device.type == "cuda" else CpuTransfer()
