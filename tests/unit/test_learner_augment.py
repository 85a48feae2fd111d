"""DrQ's random-shift augmentation of the learner's images (``td3.image_shift``)."""
import numpy as np
import pytest
import torch

from common.errors import ConfigError
from learner.augment import draw_shifts, random_shift
from learner.pixels import prepare_pixels
from learner.td3 import TD3Learner
from tests.unit.learner_fixtures import SMALL_SPEC, random_batch, small_config


def _reference_shift(images: np.ndarray, offsets: np.ndarray, pad: int) -> np.ndarray:
    """Border-repeating pad of each image, then the H x W window at its offset."""
    _, _, h, w = images.shape
    out = np.empty_like(images)
    for i, (dy, dx) in enumerate(offsets):
        padded = np.pad(images[i], ((0, 0), (pad, pad), (pad, pad)), mode="edge")
        out[i] = padded[:, dy:dy + h, dx:dx + w]
    return out


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_random_shift_crops_the_border_padded_image_at_each_samples_offset(dtype):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 3, 9, 7)).astype(dtype)
    offsets = rng.integers(0, 2 * 2 + 1, (6, 2))
    offsets[0] = (0, 0)
    offsets[1] = (4, 4)
    got = random_shift(torch.from_numpy(images), torch.from_numpy(offsets), pad=2)
    np.testing.assert_array_equal(got.numpy(), _reference_shift(images, offsets, 2))


def test_the_centre_offset_gives_the_image_back():
    x = torch.rand(3, 4, 12, 12)
    centre = torch.full((3, 2), 4, dtype=torch.int64)
    assert torch.equal(random_shift(x, centre, pad=4), x)


def test_drawn_shifts_cover_every_offset_and_none_when_off():
    g = torch.Generator().manual_seed(0)
    shifts = draw_shifts(3, 500, g, torch.device("cpu"))
    assert shifts.shape == (2, 500, 2) and shifts.dtype == torch.int64
    assert set(shifts.unique().tolist()) == set(range(7))
    assert draw_shifts(0, 500, g, torch.device("cpu")).numel() == 0


def test_obs_and_next_obs_are_shifted_independently():
    learner = TD3Learner(SMALL_SPEC, small_config(image_shift=4), seed=0)
    b = learner.to_device(random_batch(SMALL_SPEC, 16, seed=0))
    shifts = draw_shifts(4, 16, torch.Generator().manual_seed(1), torch.device("cpu"))
    px = prepare_pixels(b, shifts, 4)
    plain = prepare_pixels(b)
    shifted = b._replace(image=random_shift(b.image, shifts[0], 4),
                         next_image=random_shift(b.next_image, shifts[1], 4))
    expected = prepare_pixels(shifted)
    assert torch.equal(px.obs, expected.obs) and torch.equal(px.next, expected.next)
    assert not torch.equal(px.obs, plain.obs)


def test_a_shifting_learner_trains_on_other_pixels_than_a_plain_one():
    batches = [random_batch(SMALL_SPEC, 16, seed=i) for i in range(4)]
    plain = TD3Learner(SMALL_SPEC, small_config(), seed=0)
    shifted = TD3Learner(SMALL_SPEC, small_config(image_shift=4), seed=0)
    for batch in batches:
        a, b = plain.update(batch), shifted.update(batch)
        assert np.isfinite(b.critic_loss) and np.isfinite(b.td_error).all()
    assert not np.allclose(a.td_error, b.td_error)
    # Off by default, and off draws nothing: the smoothing noise stream is the paper's.
    again = TD3Learner(SMALL_SPEC, small_config(image_shift=0), seed=0)
    for batch in batches:
        c = again.update(batch)
    np.testing.assert_array_equal(c.td_error, a.td_error)


@pytest.mark.parametrize("bad", [-1, 2.5])
def test_a_bad_image_shift_is_refused_by_name(bad):
    with pytest.raises(ConfigError, match=rf"image_shift \({bad}\)"):
        TD3Learner(SMALL_SPEC, small_config(image_shift=bad), seed=0)
