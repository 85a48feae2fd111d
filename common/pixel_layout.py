"""How image batches are laid out for the encoders' convolutions.

Frames travel and are stored as uint8 [B, F, H, W]. The convolutions (oneDNN on a CPU, cuDNN
on a GPU) run fastest on channels-last floats; on a GPU the first convolution runs faster
still over space-to-depth blocks (``space_to_depth``, ``blocked_kernel``). ``to_pixels``
makes either form in one pass over the frames.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch

from common.errors import SpecError

_CV_MAX_CHANNELS = 512  # OpenCV's CV_CN_MAX
# A rollout worker's batch of 1 is faster through torch: the numpy and OpenCV round trip costs
# more than it saves there (docs/benchmarks.md, "Code choices").
_INTERLEAVE_MIN_BATCH = 32


def interleave_frames(image: torch.Tensor) -> torch.Tensor:
    """uint8 [B, F, H, W] on the CPU -> the same values channels-last ([B, H, W, F] in memory).

    OpenCV's ``merge`` interleaves each sample's F frames with SIMD code, several times faster
    than torch's strided copy (``contiguous(channels_last)``), which was most of a CPU
    learner's input conversion (docs/benchmarks.md, "Code choices").
    """
    frames = image.numpy()  # a view; the stacks may be views of a larger frame block
    if frames.strides[2:] != (frames.shape[3], 1) or frames.shape[1] > _CV_MAX_CHANNELS:
        return image.contiguous(memory_format=torch.channels_last)
    batch, count, height, width = frames.shape
    out = np.empty((batch, height, width, count), np.uint8)
    for i in range(batch):
        cv2.merge(tuple(frames[i]), dst=out[i])
    return torch.from_numpy(out).permute(0, 3, 1, 2)


def to_pixels(image: torch.Tensor, dtype: torch.dtype = torch.float32,
              blocks: int = 1) -> torch.Tensor:
    """uint8 [B, F, H, W] -> ``dtype`` pixel values in [0, 255], channels-last: as they are,
    or with ``blocks`` above 1 as ``space_to_depth`` blocks of that size. The layout change
    runs on uint8, four times fewer bytes; for the learner's batches on the CPU through
    OpenCV (``interleave_frames``), elsewhere as one copy that also converts."""
    if blocks > 1:
        return space_to_depth(image, blocks, dtype)
    if (image.device.type == "cpu" and image.dtype == torch.uint8 and image.dim() == 4
            and image.shape[0] >= _INTERLEAVE_MIN_BATCH and not torch.compiler.is_compiling()):
        return interleave_frames(image).to(dtype)
    out = torch.empty(image.shape, dtype=dtype, device=image.device,
                      memory_format=torch.channels_last)
    return out.copy_(image)  # layout and dtype in one kernel


def space_to_depth(image: torch.Tensor, block: int,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[B, F, H, W] -> ``dtype`` [B, F * block**2, H // block, W // block], channels-last, in
    one copy: channel ``f * block**2 + a * block + c`` at (y, x) holds frame f's pixel
    (block * y + a, block * x + c). Rows and columns past the last whole block are dropped;
    a convolution of stride ``block`` never reads them when its kernel is a multiple of it.

    Why: a convolution of stride s over F channels equals a stride-1 convolution over these
    F * s * s channels with the kernel rearranged (``blocked_kernel``). The NatureCNN's first
    layer (8x8, stride 4, over 4 frames) is a poor shape for cuDNN's implicit GEMM: 4 input
    channels are too few to align, so it converts its input and runs a slow kernel; the
    blocked form has 64 channels and a 2x2 kernel. (On a CPU, oneDNN runs the strided form
    faster: docs/benchmarks.md, "Code choices".)
    """
    n, f, h, w = image.shape
    hb, wb = h // block, w // block
    src = image[:, :, :hb * block, :wb * block].unflatten(3, (wb, block)).unflatten(2, (hb, block))
    out = torch.empty((n, hb, wb, f, block, block), dtype=dtype, device=image.device)
    out.copy_(src.permute(0, 2, 4, 1, 3, 5))  # [B, y, x, f, a, c]
    return out.view(n, hb, wb, f * block * block).permute(0, 3, 1, 2)


def blocked_kernel(weight: torch.Tensor, block: int, scale: float = 1.0) -> torch.Tensor:
    """A conv weight [O, F, k, k] of stride ``block`` (k a multiple of it), times ``scale``,
    as the stride-1 weight [O, F * block**2, k // block, k // block] (channels-last) that
    reads ``space_to_depth(., block)`` pixels (Inductor fuses the copy and the scaling)."""
    o, f, k, _ = weight.shape
    kb = k // block
    if kb * block != k:
        raise SpecError(f"a {k}x{k} kernel of stride {block} has no space-to-depth form")
    w6 = weight.unflatten(3, (kb, block)).unflatten(2, (kb, block))  # [O, F, i, a, j, c]
    out = w6.permute(0, 2, 4, 1, 3, 5).reshape(o, kb, kb, f * block * block) * scale
    return out.permute(0, 3, 1, 2)
