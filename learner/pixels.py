"""How an update turns a batch's uint8 frames into what its encoders read.

Each image stack is converted once per update and shared by every encoder that reads it:
shifted at random when ``td3.image_shift`` is on (``learner.augment``), converted to the
learner's float dtype and, where the first convolution runs on space-to-depth blocks
(``learner.precision.FIRST_CONVS``), rearranged into blocks, in one copy
(``common.networks.ImageEncoder.prepare``).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from common.networks import ImageEncoder
from learner.augment import random_shift
from learner.device import DeviceBatch


class Pixels(NamedTuple):
    """A batch's images, converted once per update and shared by every encoder that reads
    them (``ImageEncoder.prepare``)."""

    obs: torch.Tensor
    next: torch.Tensor


def prepare_image(image: torch.Tensor, shifts: torch.Tensor | None = None, pad: int = 0,
                  dtype: torch.dtype = torch.float32, blocks: int = 1) -> torch.Tensor:
    """Converts a batch's images for the encoders (``ImageEncoder.prepare``: to ``dtype``,
    space-to-depth for ``blocks`` above 1), shifted at random by up to ``pad`` pixels by the
    offsets ``shifts`` (``learner.augment``) when ``pad`` is above 0."""
    if pad > 0:
        image = random_shift(image, shifts, pad)
    return ImageEncoder.prepare(image, dtype, blocks)


def prepare_pixels(b: DeviceBatch, shifts: torch.Tensor | None = None, pad: int = 0,
                   dtype: torch.dtype = torch.float32, blocks: int = 1) -> Pixels:
    """The batch's observation and next-observation images, converted (``prepare_image``;
    ``shifts[0]`` and ``shifts[1]`` are their offsets)."""
    no = shifts is None or pad == 0
    return Pixels(prepare_image(b.image, None if no else shifts[0], pad, dtype, blocks),
                  prepare_image(b.next_image, None if no else shifts[1], pad, dtype, blocks))
