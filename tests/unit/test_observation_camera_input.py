"""env.camera_input: blanked frames are one constant grey, and the vector is untouched."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from common import config as C
from common.errors import ConfigError
from common.specs import IMAGE_KEY, VECTOR_KEY, EnvSpec
from deploy.evaluate import env_record
from rollout.carla_env import make_env
from rollout.observation import BLANK_LEVEL, ObservationBuilder

SPEC = EnvSpec(frames=4, image_size=48, num_waypoints=10)


def _bgra(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (48, 64, 4), dtype=np.uint8)


def test_builder_blank_frames_are_constant_and_vector_unchanged() -> None:
    blank = ObservationBuilder(SPEC, C.CameraInput.BLANK)
    rgb = ObservationBuilder(SPEC, C.CameraInput.RGB)
    vector = np.linspace(0, 1, SPEC.vector.shape[0]).astype(np.float32)
    obs = [blank.reset(_bgra(0), vector)] + [blank.push(_bgra(k), vector) for k in range(1, 4)]
    assert all((o[IMAGE_KEY] == BLANK_LEVEL).all() for o in obs)
    assert all(np.array_equal(o[VECTOR_KEY], vector) for o in obs)
    rgb.reset(_bgra(4), vector)
    seen = rgb.push(_bgra(5), vector)
    assert len(np.unique(seen[IMAGE_KEY])) > 1  # the camera's frames are not constant


def test_camera_input_override_and_bad_value() -> None:
    cfg = C.with_overrides(C.RunConfig(), {"env.camera_input": "blank"})
    assert cfg.env.camera_input is C.CameraInput.BLANK
    assert env_record(cfg.env)["camera_input"] == "blank"
    with pytest.raises(ConfigError, match="grey"):
        C.with_overrides(C.RunConfig(), {"env.camera_input": "grey"})


def test_fake_env_blank_images_constant_vectors_as_with_the_camera() -> None:
    base = replace(C.EnvConfig(), max_steps=40, route_length_m=60.0,
                   camera=replace(C.EnvConfig().camera, width=64, height=48))
    runs = {}
    for mode in C.CameraInput:
        env = make_env(replace(base, camera_input=mode), SPEC, seed=3)
        try:
            obs, _ = env.reset(seed=11)
            frames, vectors = [obs[IMAGE_KEY]], [obs[VECTOR_KEY]]
            for _ in range(10):
                obs, *_ = env.step(np.array([0.0, 0.5], np.float32))
                frames.append(obs[IMAGE_KEY])
                vectors.append(obs[VECTOR_KEY])
        finally:
            env.close()
        runs[mode] = (np.stack(frames), np.stack(vectors))
    blank_frames, blank_vectors = runs[C.CameraInput.BLANK]
    rgb_frames, rgb_vectors = runs[C.CameraInput.RGB]
    assert (blank_frames == BLANK_LEVEL).all()
    assert len(np.unique(rgb_frames)) > 1
    np.testing.assert_array_equal(blank_vectors, rgb_vectors)
