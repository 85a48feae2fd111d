"""Checkpoints: exact resume in a fresh process, atomic writes, clear errors."""
import hashlib
import io
import os
import pathlib
import random
import subprocess
import sys
import textwrap

import pytest
import torch

from common.config import EncoderTopology, NetworkConfig
from common.errors import CheckpointError
from common.specs import EnvSpec
from learner import state
from learner.td3 import TD3Learner
from tests.unit.learner_fixtures import SMALL_SPEC, random_batch, small_config

ROOT = pathlib.Path(__file__).resolve().parents[2]
N = 6  # updates in all; policy_delay 2, so both halves hold policy and target steps

_RESUME = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    from learner.td3 import TD3Learner
    from tests.unit.learner_fixtures import SMALL_SPEC, random_batch, small_config
    learner = TD3Learner(SMALL_SPEC, small_config(), seed=123)  # another seed: all must load
    learner.load(sys.argv[1])
    for i in range(int(sys.argv[3]), int(sys.argv[4])):
        learner.update(random_batch(SMALL_SPEC, 16, seed=i))
    learner.save(sys.argv[2])
""")


def _run(learner: TD3Learner, start: int, stop: int) -> None:
    for i in range(start, stop):
        learner.update(random_batch(SMALL_SPEC, 16, seed=i))


def _payload(path):
    """The torch.save payload of a learner checkpoint (after its checksum line)."""
    data = pathlib.Path(path).read_bytes()
    return io.BytesIO(data[data.index(b"\n") + 1:])


def _framed(payload: bytes) -> bytes:
    """``payload`` with a valid checksum line, as ``state.save`` writes it."""
    return (f"carla-td3-learner sha256={hashlib.sha256(payload).hexdigest()} "
            f"size={len(payload)}\n").encode() + payload


def _flatten(tree, prefix=""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _flatten(v, f"{prefix}.{k}")
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            yield from _flatten(v, f"{prefix}[{i}]")
    else:
        yield prefix, tree


def test_resume_in_a_fresh_process_is_exact(tmp_path):
    torch.set_num_threads(1)
    straight = TD3Learner(SMALL_SPEC, small_config(), seed=0)
    _run(straight, 0, N)
    half = TD3Learner(SMALL_SPEC, small_config(), seed=0)
    _run(half, 0, N // 2)
    half.save(tmp_path / "half.pt")
    proc = subprocess.run([sys.executable, "-c", _RESUME, str(tmp_path / "half.pt"),
                           str(tmp_path / "resumed.pt"), str(N // 2), str(N)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    resumed = torch.load(_payload(tmp_path / "resumed.pt"), weights_only=True)["state"]
    expected = dict(_flatten(straight.state_dict()))
    got = dict(_flatten(resumed))
    assert got.keys() == expected.keys()
    assert resumed["updates"] == N
    for key, value in expected.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(got[key], value), key
        else:
            assert got[key] == value, key


def test_save_is_atomic_and_keeps_the_old_checkpoint_on_failure(tmp_path, monkeypatch):
    learner = TD3Learner(SMALL_SPEC, small_config(), seed=0)
    path = tmp_path / "ckpt.pt"
    learner.save(path)
    before = path.read_bytes()
    _run(learner, 0, 2)

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        learner.save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]


@pytest.mark.parametrize("name,damage", [
    ("truncated", lambda b: b[: len(b) // 2]),
    ("garbage", lambda b: b"not a checkpoint at all" * 10),
    ("empty", lambda b: b""),
])
def test_corrupt_checkpoint_is_a_clear_error(tmp_path, name, damage):
    learner = TD3Learner(SMALL_SPEC, small_config(), seed=0)
    path = tmp_path / "ckpt.pt"
    learner.save(path)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        learner.load(path)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    learner = TD3Learner(SMALL_SPEC, small_config(), seed=0)
    with pytest.raises(CheckpointError, match="does not exist"):
        learner.load(tmp_path / "nope.pt")


@pytest.mark.parametrize("spec,topology,message", [
    (EnvSpec(frames=3, image_size=36, num_waypoints=1), EncoderTopology.SEPARATE,
     r"spec.frames: checkpoint 2 != current 3"),
    (SMALL_SPEC, EncoderTopology.SHARED, r"network.topology: checkpoint 'separate' != current 'shared'"),
])
def test_mismatched_checkpoint_names_the_difference(tmp_path, spec, topology, message):
    TD3Learner(SMALL_SPEC, small_config(), seed=0).save(tmp_path / "ckpt.pt")
    other = TD3Learner(spec, small_config(topology), seed=0)
    with pytest.raises(CheckpointError, match=message):
        other.load(tmp_path / "ckpt.pt")


def test_state_that_does_not_fit_is_a_clear_error(tmp_path):
    learner = TD3Learner(SMALL_SPEC, small_config(), seed=0)
    data = learner.state_dict()
    del data["modules"]["critic_target"]["q1.0.weight"]
    state.save(tmp_path / "ckpt.pt", SMALL_SPEC, small_config().network, data)
    with pytest.raises(CheckpointError, match="does not fit this learner"):
        learner.load(tmp_path / "ckpt.pt")


class _NotAllowed:
    pass


def test_load_refuses_arbitrary_pickled_objects(tmp_path):
    learner = TD3Learner(SMALL_SPEC, small_config(), seed=0)
    path = tmp_path / "ckpt.pt"
    buffer = io.BytesIO()
    torch.save({"header": {"format": state.FORMAT}, "state": _NotAllowed()}, buffer)
    path.write_bytes(_framed(buffer.getvalue()))  # a valid checksum: the unpickler must refuse
    with pytest.raises(CheckpointError, match="corrupt or truncated.*Unpickl|weights_only"):
        learner.load(path)


def test_lr_from_the_config_wins_on_resume(tmp_path):
    TD3Learner(SMALL_SPEC, small_config(), seed=0).save(tmp_path / "ckpt.pt")
    learner = TD3Learner(SMALL_SPEC, small_config(head_lr=1e-2), seed=0)
    learner.load(tmp_path / "ckpt.pt")
    assert [g["lr"] for g in learner.critic_opt.param_groups] == [1e-4, 1e-2]
    assert NetworkConfig() != small_config().network  # the header compares the real config


def test_checkpoint_from_another_device_type_loads_without_its_rng(tmp_path, caplog):
    source = TD3Learner(SMALL_SPEC, small_config(), seed=0)
    _run(source, 0, 2)
    data = source.state_dict()
    data["rng"], data["rng_device"] = torch.zeros(16, dtype=torch.uint8), "cuda"  # CUDA-sized
    state.save(tmp_path / "ckpt.pt", SMALL_SPEC, small_config().network, data)
    target = TD3Learner(SMALL_SPEC, small_config(), seed=1)
    target.load(tmp_path / "ckpt.pt")
    assert "rng_not_restored saved_device=cuda device=cpu" in caplog.text
    assert target.updates == 2
    for a, b in zip(source.nets.critic_target.parameters(), target.nets.critic_target.parameters()):
        assert torch.equal(a, b)


def test_a_flipped_bit_anywhere_in_the_file_is_refused(tmp_path):
    learner = TD3Learner(SMALL_SPEC, small_config(), seed=0)
    _run(learner, 0, 2)
    path = tmp_path / "ckpt.pt"
    learner.save(path)
    original = path.read_bytes()
    target = TD3Learner(SMALL_SPEC, small_config(), seed=1)
    rng = random.Random(0)
    positions = [0, 10, original.index(b"\n"), len(original) - 1]  # the line, its end, the last byte
    positions += [rng.randrange(len(original)) for _ in range(200)]
    for pos in positions:
        bit = rng.randrange(8)
        damaged = bytearray(original)
        damaged[pos] ^= 1 << bit
        path.write_bytes(bytes(damaged))
        with pytest.raises(CheckpointError, match="corrupt or truncated"):
            target.load(path)
    path.write_bytes(original)
    target.load(path)  # the intact file still loads


def _module_tensor(module: str, last: bool):
    def pick(data):
        keys = list(data["modules"][module])
        key = keys[-1] if last else keys[0]
        return f"modules.{module}.{key}", data["modules"][module][key]
    return pick


def _adam_moment(data):
    index, moments = next(iter(data["optimizers"]["critic"]["state"].items()))
    return f"optimizers.critic.state.{index}.exp_avg", moments["exp_avg"]


@pytest.mark.parametrize("pick,value", [
    pytest.param(_module_tensor("policy", last=False), float("nan"), id="policy_weight_nan"),
    pytest.param(_module_tensor("critic_target", last=True), float("inf"), id="target_critic_inf"),
    pytest.param(_adam_moment, float("-inf"), id="adam_moment_minus_inf"),
])
def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path, pick, value):
    source = TD3Learner(SMALL_SPEC, small_config(), seed=0)
    _run(source, 0, 2)
    data = source.state_dict()
    name, tensor = pick(data)
    tensor[(0,) * tensor.dim()] = value
    state.save(tmp_path / "ckpt.pt", SMALL_SPEC, small_config().network, data)
    target = TD3Learner(SMALL_SPEC, small_config(), seed=1)
    before = [p.clone() for p in target.nets.policy.parameters()]
    with pytest.raises(CheckpointError, match=rf"{name} holds {value}"):
        target.load(tmp_path / "ckpt.pt")
    assert all(torch.equal(a, b) for a, b in zip(before, target.nets.policy.parameters()))


def test_a_checkpoint_without_a_checksum_is_refused(tmp_path):
    learner = TD3Learner(SMALL_SPEC, small_config(), seed=0)
    path = tmp_path / "ckpt.pt"
    learner.save(path)
    path.write_bytes(_payload(path).getvalue())  # the bare torch.save file of earlier versions
    with pytest.raises(CheckpointError, match="before checkpoints carried a checksum"):
        learner.load(path)


def test_save_fsyncs_the_file_then_the_directory_after_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst, *args, **kwargs):
        events.append(("replace", str(dst)))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    TD3Learner(SMALL_SPEC, small_config(), seed=0).save(tmp_path / "ckpt.pt")
    monkeypatch.undo()
    i = events.index(("replace", str(tmp_path / "ckpt.pt")))
    assert any(kind == "fsync" and pathlib.Path(p).parent == tmp_path for kind, p in events[:i])
    assert ("fsync", str(tmp_path)) in events[i:]
