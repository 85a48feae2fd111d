"""Frame stacking, defined once: the env stacks with it and the replay rebuilds stacks with it.

At an episode's first observation the stack holds F copies of the first frame (no zero
frames: the network never sees a black image that the camera did not produce). Each later
observation drops the oldest frame and appends the newest, so ``stack[-1]`` is always the
current camera frame.
"""
from __future__ import annotations

import numpy as np


def stack_offsets(step_in_episode: int, frames: int) -> list[int]:
    """How far back each stacked frame lies, oldest first, clamped at the episode's start.

    Args:
        step_in_episode: 0 for the observation returned by reset, then 1, 2, ...
        frames: the stack depth F.

    Returns:
        F non-negative offsets: frame j of the stack is the frame observed ``offsets[j]``
        steps before the current one.
    """
    return [min(frames - 1 - j, step_in_episode) for j in range(frames)]


class FrameStack:
    """Holds the last F frames of the current episode."""

    def __init__(self, frames: int, height: int, width: int) -> None:
        self._stack = np.zeros((frames, height, width), np.uint8)
        self._step = -1

    def reset(self, frame: np.ndarray) -> np.ndarray:
        """Starts an episode: every slot holds ``frame``. Returns a copy of the stack."""
        self._stack[:] = frame
        self._step = 0
        return self._stack.copy()

    def push(self, frame: np.ndarray) -> np.ndarray:
        """Appends the newest frame. Returns a copy of the stack."""
        if self._step < 0:
            raise RuntimeError("FrameStack.push before reset")
        self._stack[:-1] = self._stack[1:]
        self._stack[-1] = frame
        self._step += 1
        return self._stack.copy()
