"""Image augmentation of the learner's batches: DrQ's random shift.

Kostrikov et al. 2020 (DrQ) and Yarats et al. 2021 (DrQ-v2) pad each image of a batch by
``pad`` pixels, repeating the border, and crop it back to its size at a random offset, one
offset per sample; the critic and the policy both train on the shifted images, and the
observation and the next observation are shifted independently. It regularises the image
encoders of a model-free agent trained from pixels, which otherwise fit what they saw rather
than what it means (``td3.image_shift``; rollout workers and evaluation see unshifted frames).

The offsets are drawn outside the update step (``draw_shifts``) and passed in as a tensor, so
that a captured CUDA graph replays with fresh ones (``learner.graphs``).
"""
from __future__ import annotations

import torch


def draw_shifts(pad: int, batch: int, generator: torch.Generator,
                device: torch.device) -> torch.Tensor:
    """Offsets for ``random_shift`` of a batch's observation and next observation: int64
    [2, batch, 2] (row, column), each in [0, 2 * pad]; an empty tensor when ``pad`` is 0."""
    if pad == 0:
        return torch.empty(0, dtype=torch.int64, device=device)
    return torch.randint(0, 2 * pad + 1, (2, batch, 2), generator=generator, device=device)


def random_shift(images: torch.Tensor, offsets: torch.Tensor, pad: int) -> torch.Tensor:
    """Each image of ``images`` [B, C, H, W] padded by ``pad`` border pixels and cropped back
    to H x W at its row and column offset ``offsets[i]`` (int64 [B, 2], in [0, 2 * pad]).

    Offsets (pad, pad) give the image back unchanged. The pad is never built: clamping the
    source indices to the image repeats its border. Any dtype (the learner shifts the uint8
    frames, four times fewer bytes than floats); the result is contiguous."""
    b, c, h, w = images.shape
    rows = (offsets[:, 0:1] - pad + torch.arange(h, device=images.device)).clamp_(0, h - 1)
    cols = (offsets[:, 1:2] - pad + torch.arange(w, device=images.device)).clamp_(0, w - 1)
    picked = images.gather(2, rows[:, None, :, None].expand(b, c, h, w))
    return picked.gather(3, cols[:, None, None, :].expand(b, c, h, w))
