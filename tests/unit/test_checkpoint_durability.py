"""Run-directory checkpoints: durable commits, a LATEST that falls back to the newest intact
checkpoint, and a checksum on every file (a flipped bit anywhere is found)."""
from __future__ import annotations

import logging
import os
import random
import shutil
from pathlib import Path

import pytest

from common import durable
from common.errors import CheckpointError
from deploy.rundir import RunDir
from learner.td3 import TD3Learner
from tests.unit import learner_fixtures, replay_support

LEARNER = "learner.pt"
SHARD = "replay/shard-0"  # deploy.components.shard_checkpoint(checkpoint, 0)


def _commit(run: RunDir, updates: int, env_steps: int) -> Path:
    """A checkpoint of stand-in component files (every byte differs by ``env_steps``)."""
    tmp = run.new_checkpoint_dir(updates)
    (tmp / LEARNER).write_bytes(b"learner state %d" % env_steps * 50)
    shard = tmp / SHARD / "replay_shard_0"
    shard.mkdir(parents=True)
    (shard / "ring.frame.npy").write_bytes(bytes(range(256)) * 4)
    durable.write_sealed(shard / "manifest.json", {"files": durable.manifest_for(shard, ["ring.frame.npy"])})
    return run.commit_checkpoint(tmp, updates, {"env_steps": env_steps, "updates": updates})


def _two(tmp_path: Path) -> tuple[RunDir, Path, Path]:
    run = RunDir.create(tmp_path, "r")
    return run, _commit(run, 10, 1), _commit(run, 20, 2)


def _flip(path: Path, pos: int = -5, bit: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[pos] ^= 1 << bit
    path.write_bytes(bytes(data))


def _warnings(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


@pytest.mark.parametrize("text", [
    pytest.param(b"", id="empty"),
    pytest.param(b"  \n", id="blank"),
    pytest.param(b"ckpt-000000030", id="dangling"),
    pytest.param(b"../../etc", id="not_a_name"),
    pytest.param(b"\xff\xfe\x00", id="binary"),
    pytest.param(None, id="missing"),
])
def test_a_damaged_pointer_falls_back_to_the_newest_intact_checkpoint(tmp_path, caplog, text):
    run, _, newest = _two(tmp_path)
    pointer = run.checkpoints / "LATEST"
    pointer.unlink()
    if text is not None:
        pointer.write_bytes(text)
    caplog.set_level(logging.WARNING)
    assert run.latest_checkpoint() == newest
    assert "LATEST" in _warnings(caplog)
    assert pointer.read_text() == newest.name  # repaired: every process now agrees
    assert RunDir.read_counters(run.latest_checkpoint())["env_steps"] == 2


def _damage_file(rel: str):
    return lambda ckpt: _flip(ckpt / rel)


def _truncate(rel: str):
    return lambda ckpt: (ckpt / rel).write_bytes((ckpt / rel).read_bytes()[:-1])


def _delete(rel: str):
    return lambda ckpt: (ckpt / rel).unlink()


@pytest.mark.parametrize("damage,names", [
    pytest.param(_damage_file(LEARNER), LEARNER, id="learner_bit"),
    pytest.param(_damage_file("counters.json"), "counters.json", id="counters_bit"),
    pytest.param(_damage_file("manifest.json"), "manifest.json", id="manifest_bit"),
    pytest.param(_damage_file(f"{SHARD}/replay_shard_0/manifest.json"), "replay_shard_0/manifest.json",
                 id="shard_manifest_bit"),
    pytest.param(_damage_file(f"{SHARD}/replay_shard_0/ring.frame.npy"), "ring.frame.npy",
                 id="shard_array_bit"),
    pytest.param(_truncate(LEARNER), LEARNER, id="learner_truncated"),
    pytest.param(_delete("counters.json"), "counters.json", id="counters_deleted"),
    pytest.param(_delete("manifest.json"), "manifest.json", id="manifest_deleted"),
    pytest.param(lambda c: shutil.rmtree(c / "replay"), "replay_shard_0/manifest.json", id="replay_deleted"),
])
def test_latest_naming_a_damaged_checkpoint_falls_back_with_a_warning(tmp_path, caplog, damage, names):
    run, older, newest = _two(tmp_path)
    damage(newest)
    caplog.set_level(logging.WARNING)
    assert run.latest_checkpoint() == older
    warned = _warnings(caplog)
    assert newest.name in warned and names in warned, warned
    assert (run.checkpoints / "LATEST").read_text() == older.name
    assert RunDir.read_counters(older)["env_steps"] == 1


def test_without_any_checkpoint_there_is_nothing_to_resume(tmp_path):
    assert RunDir.create(tmp_path, "r").latest_checkpoint() is None


def test_when_every_checkpoint_is_damaged_the_error_names_each(tmp_path):
    run, older, newest = _two(tmp_path)
    _flip(older / "counters.json")
    _flip(newest / LEARNER)
    with pytest.raises(CheckpointError, match=rf"{newest.name}.*{LEARNER}.*{older.name}.*counters.json"):
        run.latest_checkpoint()


def test_damaged_counters_are_refused(tmp_path):
    _, _, newest = _two(tmp_path)
    (newest / "counters.json").write_text('{"env_steps": 3, "updates": 20}')
    with pytest.raises(CheckpointError, match="counters.json"):
        RunDir.read_counters(newest)


def test_restore_latest_skips_a_checkpoint_its_component_refuses(tmp_path, caplog):
    run, older, newest = _two(tmp_path)
    tried = []

    def restore(ckpt: Path) -> None:
        tried.append(ckpt)
        if ckpt == newest:
            raise CheckpointError(f"{ckpt}/replay/shard-0/...: checksum mismatch")

    caplog.set_level(logging.WARNING)
    assert run.restore_latest(restore) == older
    assert tried == [newest, older] and "checksum mismatch" in _warnings(caplog)


class _Crash(Exception):
    pass


@pytest.mark.parametrize("same_updates", [False, True], ids=["new_updates", "same_updates"])
@pytest.mark.parametrize("module,name", [(os, "replace"), (os, "rename"), (shutil, "rmtree"),
                                         (os, "fsync")], ids=["replace", "rename", "rmtree", "fsync"])
def test_a_crash_at_any_step_of_a_commit_leaves_an_intact_checkpoint(tmp_path, monkeypatch, module,
                                                                     name, same_updates):
    """The k-th call of ``module.name`` fails, for k = 1, 2, ... until a commit completes: after
    each, the latest intact checkpoint is the old one or the new one, never nothing."""
    real = getattr(module, name)
    for k in range(1, 100):
        run, _, _ = _two(tmp_path / f"k{k}")
        calls = 0

        def failing(*args, **kwargs):
            nonlocal calls
            calls += 1
            if calls == k:
                raise _Crash(f"{name} call {k}")
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, failing)
        try:
            _commit(run, 20 if same_updates else 30, 3)
            crashed = False
        except _Crash:
            crashed = True
        finally:
            monkeypatch.setattr(module, name, real)
        latest = run.latest_checkpoint()
        assert latest is not None, f"no checkpoint after a crash at {name} call {k}"
        assert RunDir.read_counters(latest)["env_steps"] in ((2, 3) if crashed else (3,))
        if not crashed:
            break
    else:
        pytest.fail("the commit never completed")


def test_commit_fsyncs_the_checkpoint_before_its_rename_and_the_directory_after(tmp_path, monkeypatch):
    run = RunDir.create(tmp_path, "r")
    _commit(run, 10, 1)
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst, *args, **kwargs):
        events.append(("replace", str(src), str(dst)))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    final = _commit(run, 20, 2)
    monkeypatch.undo()
    rename = next(i for i, e in enumerate(events) if e[0] == "replace" and e[2] == str(final))
    tmp = events[rename][1]
    synced = {e[1] for e in events[:rename] if e[0] == "fsync"}
    for path in final.rglob("*"):  # every file and directory, under its temporary name
        assert str(path).replace(str(final), tmp) in synced, path
    assert tmp in synced
    latest = next(i for i, e in enumerate(events) if e[0] == "replace" and e[2].endswith("LATEST"))
    assert ("fsync", str(run.checkpoints)) in events[rename:latest]  # the rename is durable
    assert ("fsync", str(run.checkpoints)) in events[latest:]  # and so is LATEST
    assert not (run.checkpoints / "ckpt-000000010").exists() or rename < latest


def test_older_checkpoints_go_only_after_latest_moves(tmp_path, monkeypatch):
    run, older, newest = _two(tmp_path)
    order = []
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        order.append(Path(dst).name)
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    third = _commit(run, 30, 3)
    monkeypatch.undo()
    assert not older.exists() and newest.exists() and third.exists()
    gone = next(i for i, n in enumerate(order) if n.startswith(f".deleting-{older.name}"))
    assert order.index("LATEST") < gone


def test_a_repeated_update_count_keeps_both_and_prunes_the_abandoned_timeline(tmp_path):
    run, older, newest = _two(tmp_path)
    again = _commit(run, 20, 3)  # e.g. the final checkpoint, no update since the last one
    assert again.name == "ckpt-000000020-1" and newest.exists() and not older.exists()
    assert run.latest_checkpoint() == again
    (run.checkpoints / "LATEST").write_text(newest.name)  # a resume from the earlier one ...
    resumed = _commit(run, 15, 4)  # ... whose next checkpoint has fewer updates
    assert sorted(p.name for p in run.checkpoints.glob("ckpt-*")) == [resumed.name]
    assert run.latest_checkpoint() == resumed


def _real_checkpoint(run: RunDir, updates: int) -> Path:
    tmp = run.new_checkpoint_dir(updates)
    learner = TD3Learner(learner_fixtures.SMALL_SPEC, learner_fixtures.small_config(), seed=0)
    learner.update(learner_fixtures.random_batch(learner_fixtures.SMALL_SPEC, 16, seed=updates))
    learner.save(tmp / LEARNER)
    shard = replay_support.small_shard(capacity=40)
    for stream in replay_support.make_streams(replay_support.SMALL_SPEC, 2, chunk_length=5):
        for _ in range(3):
            shard.insert_chunk(stream.next_chunk())
    shard.save(tmp / SHARD)
    return run.commit_checkpoint(tmp, updates, {"env_steps": updates * 10, "updates": updates})


def test_a_flipped_bit_anywhere_in_a_real_checkpoint_is_found(tmp_path, caplog):
    """300 single-bit flips, spread over every file of a learner + replay checkpoint by size
    (each byte equally likely, and every file at least twice): each one makes LATEST fall back
    to the intact checkpoint before it, and the component that owns the file refuses it."""
    run = RunDir.create(tmp_path, "r")
    older, newest = _real_checkpoint(run, 1), _real_checkpoint(run, 2)
    files = sorted(p for p in newest.rglob("*") if p.is_file())
    assert len(files) > 20
    rng = random.Random(0)
    sizes = [p.stat().st_size for p in files]
    picks = [i for i in range(len(files)) for _ in range(2)]
    picks += rng.choices(range(len(files)), weights=sizes, k=300 - len(picks))
    learner = TD3Learner(learner_fixtures.SMALL_SPEC, learner_fixtures.small_config(), seed=1)
    shard = replay_support.small_shard(capacity=40)
    caplog.set_level(logging.ERROR)  # 300 fallbacks' warnings are not the point here
    for i in picks:
        original = files[i].read_bytes()
        pos, bit = rng.randrange(len(original)), rng.randrange(8)
        _flip(files[i], pos, bit)
        where = f"bit {bit} of byte {pos} of {files[i].relative_to(newest)}"
        try:
            assert run.latest_checkpoint() == older, where
            if files[i].name == LEARNER:
                with pytest.raises(CheckpointError):
                    learner.load(files[i])
            elif SHARD in str(files[i]):
                with pytest.raises(CheckpointError):
                    shard.restore(newest / SHARD)
        finally:
            files[i].write_bytes(original)
            (run.checkpoints / "LATEST").write_text(newest.name)
    assert run.latest_checkpoint() == newest  # all restored: the newest is intact again
