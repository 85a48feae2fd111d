import numpy as np
import pytest

from common.errors import SpecError
from common.framestack import FrameStack, stack_offsets
from common.specs import EnvSpec


def test_default_spec_matches_the_documented_layout():
    spec = EnvSpec()
    assert spec.image.shape == (4, 84, 84) and spec.image.dtype == "uint8"
    assert spec.vector.shape == (23,) and spec.vector.dtype == "float32"
    assert spec.action.shape == (2,)


def test_spec_is_configurable():
    spec = EnvSpec(frames=2, image_size=64, num_waypoints=5)
    assert spec.image.shape == (2, 64, 64) and spec.vector_dim == 13


@pytest.mark.parametrize("value,message", [
    (np.zeros((4, 84, 84), np.float32), "dtype float32 != expected uint8"),
    (np.zeros((3, 84, 84), np.uint8), r"shape \(3, 84, 84\)"),
    ([1, 2], "expected a numpy array"),
])
def test_image_validation_names_the_problem(value, message):
    with pytest.raises(SpecError, match=message):
        EnvSpec().image.validate(value)


def test_nan_and_out_of_range_actions_are_rejected():
    action = EnvSpec().action
    with pytest.raises(SpecError, match="non-finite value nan"):
        action.validate(np.array([np.nan, 0], np.float32))
    with pytest.raises(SpecError, match="above maximum"):
        action.validate(np.array([0, 1.5], np.float32))
    action.validate(np.zeros((7, 2), np.float32), batch_dims=1)


def test_frame_stack_repeats_the_first_frame_then_shifts():
    stack = FrameStack(3, 2, 2)
    frames = [np.full((2, 2), i, np.uint8) for i in range(5)]
    assert [s[0, 0] for s in stack.reset(frames[0])] == [0, 0, 0]
    assert [s[0, 0] for s in stack.push(frames[1])] == [0, 0, 1]
    assert [s[0, 0] for s in stack.push(frames[2])] == [0, 1, 2]
    assert [s[0, 0] for s in stack.push(frames[3])] == [1, 2, 3]


@pytest.mark.parametrize("step,expected", [(0, [0, 0, 0, 0]), (1, [1, 1, 1, 0]), (2, [2, 2, 1, 0]),
                                           (3, [3, 2, 1, 0]), (10, [3, 2, 1, 0])])
def test_stack_offsets_agree_with_frame_stack(step, expected):
    assert stack_offsets(step, 4) == expected
