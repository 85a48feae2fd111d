"""The run directory: effective config, checkpoints, metrics over time, summary.json.

Layout::

    RUN_DIR/config.json            the effective RunConfig
    RUN_DIR/run.json               run options (env-step budget, mode, preset)
    RUN_DIR/metrics.csv            one row per progress report
    RUN_DIR/tb/                    the same rows as TensorBoard scalars (one event file a start)
    RUN_DIR/checkpoints/ckpt-<updates>/{learner.pt, counters.json, replay/shard-<i>/,
                                        manifest.json}
    RUN_DIR/checkpoints/LATEST     name of the newest complete checkpoint (durable replace)
    RUN_DIR/summary.json           written at the end

Every checkpoint file is covered by a checksum: ``manifest.json`` (sealed with its own
SHA-256, ``common.durable``) lists each file's size and SHA-256, with each replay shard's own
sealed manifest standing for that shard's arrays. A checkpoint is written in a temporary
directory, fsynced and renamed into place before LATEST moves to it, and older ones are
deleted only after that. A damaged, empty or dangling LATEST falls back to the newest intact
checkpoint, with a warning naming what was skipped.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from common import config as C
from common import durable
from common.errors import CheckpointError
from deploy.tensorboard_log import TensorBoardLog

KEEP_CHECKPOINTS = 2
CHECKPOINT_FORMAT = 1
_NAME = re.compile(r"ckpt-(\d{9,})(?:-(\d+))?")
log = logging.getLogger(__name__)


def atomic_write_text(path: Path, text: str) -> None:
    """Replaces ``path`` durably: temp file, fsync, rename, fsync of the directory."""
    durable.atomic_write_text(path, text)


def _order(name: str) -> tuple[int, int]:
    m = _NAME.fullmatch(name)
    assert m is not None, name
    return int(m.group(1)), int(m.group(2) or 0)


def _listed_files(root: Path) -> list[str]:
    """Files a checkpoint's manifest lists: all of them, except that a directory holding its
    own manifest is represented by that manifest alone."""
    names = []
    for here, dirs, files in os.walk(root):
        base = Path(here)
        if base != root and durable.MANIFEST in files:
            names.append((base / durable.MANIFEST).relative_to(root).as_posix())
            dirs[:] = []
            continue
        names += [(base / f).relative_to(root).as_posix() for f in files
                  if not (base == root and f == durable.MANIFEST)]
    return names


def _fsync_tree(root: Path) -> None:
    """fsyncs every file, then every directory bottom-up, of ``root``."""
    for here, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            fd = os.open(os.path.join(here, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        durable.fsync_dir(here)


class RunDir:
    """One training run's directory."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"
        self.tensorboard = self.path / "tb"
        self._metrics_fields: list[str] | None = None

    @classmethod
    def create(cls, root: str | os.PathLike, name: str | None = None) -> "RunDir":
        name = name or time.strftime("%Y%m%d-%H%M%S")
        run = cls(Path(root) / name)
        suffix = 1
        while run.path.exists():
            run = cls(Path(root) / f"{name}-{suffix}")
            suffix += 1
        run.checkpoints.mkdir(parents=True)
        return run

    def write_config(self, cfg: C.RunConfig, options: dict[str, Any]) -> None:
        atomic_write_text(self.path / "config.json", C.dumps(cfg))
        atomic_write_text(self.path / "run.json", json.dumps(options, indent=2, sort_keys=True))

    def read_config(self) -> tuple[C.RunConfig, dict[str, Any]]:
        try:
            cfg = C.loads(C.RunConfig, (self.path / "config.json").read_text())
            options = json.loads((self.path / "run.json").read_text())
        except FileNotFoundError as exc:
            raise CheckpointError(f"{self.path} is not a run directory: {exc.filename} missing") from exc
        return cfg, options

    # -- checkpoints -----------------------------------------------------------------------

    def new_checkpoint_dir(self, updates: int) -> Path:
        tmp = self.checkpoints / f".tmp-ckpt-{updates}-{os.getpid()}-{time.monotonic_ns()}"
        tmp.mkdir(parents=True)
        (tmp / "replay").mkdir()
        return tmp

    def commit_checkpoint(self, tmp: Path, updates: int, counters: dict[str, Any]) -> Path:
        """Seals ``tmp`` (counters.json, a manifest checksumming every file), fsyncs it,
        renames it into place under a fresh name, moves LATEST to it, and only then prunes
        older checkpoints: at every instant an intact checkpoint is in place."""
        final = self.checkpoints / f"ckpt-{updates:09d}"
        suffix = 0
        while final.exists():  # the same update count again (a final checkpoint): keep both
            suffix += 1
            final = self.checkpoints / f"ckpt-{updates:09d}-{suffix}"
        try:
            atomic_write_text(tmp / "counters.json", json.dumps(counters, indent=2, sort_keys=True))
            durable.write_sealed(tmp / durable.MANIFEST, {
                "format": CHECKPOINT_FORMAT, "updates": updates,
                "files": durable.manifest_for(tmp, _listed_files(tmp))})
            _fsync_tree(tmp)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        durable.fsync_dir(self.checkpoints)
        atomic_write_text(self.checkpoints / "LATEST", final.name)
        self._prune(final)
        return final

    def _prune(self, committed: Path) -> None:
        """Keeps ``committed`` and the KEEP_CHECKPOINTS - 1 before it. Newer names (left by a
        resume that fell back past them) are an abandoned timeline and go too. Each goes by a
        rename out of the ``ckpt-*`` namespace first, so a crash never leaves half of one."""
        done = sorted((p for p in self.checkpoints.iterdir() if _NAME.fullmatch(p.name)),
                      key=lambda p: _order(p.name))
        older = [p for p in done if _order(p.name) < _order(committed.name)]
        keep = {committed.name} | {p.name for p in older[len(older) - (KEEP_CHECKPOINTS - 1):]}
        try:
            for old in done:
                if old.name not in keep:
                    os.replace(old, self.checkpoints / f".deleting-{old.name}-{time.monotonic_ns()}")
            durable.fsync_dir(self.checkpoints)
        except OSError as exc:  # the new checkpoint is committed; pruning waits for the next
            log.warning("event=checkpoint_prune_failed error=%r", exc)
        for trash in self.checkpoints.glob(".deleting-*"):
            shutil.rmtree(trash, ignore_errors=True)

    @staticmethod
    def verify_checkpoint(path: Path, check: durable.Check = durable.Check.CONTENT) -> None:
        """Raises CheckpointError naming the first missing or damaged file of ``path``.

        ``Check.CONTENT`` reads every byte (learner and replay files included);
        ``Check.STRUCTURE`` checks the manifests' checksums and every file's size.
        """
        if not (path / durable.MANIFEST).exists() and (path / "counters.json").exists():
            raise CheckpointError(f"{path}: no {durable.MANIFEST}: written before checkpoints "
                                  "carried checksums, or its manifest was lost; it cannot be verified")
        body = durable.verify_manifest(path, check)
        if body.get("format") != CHECKPOINT_FORMAT or "counters.json" not in body["files"]:
            raise CheckpointError(f"{path / durable.MANIFEST}: format {body.get('format')!r} "
                                  f"(expected {CHECKPOINT_FORMAT}) or no counters.json")

    def _candidates(self) -> tuple[bytes | None, list[Path], list[str]]:
        """LATEST's bytes (None: no LATEST), checkpoints to try in order, problems with LATEST."""
        pointer, problems = self.checkpoints / "LATEST", []
        try:
            raw: bytes | None = pointer.read_bytes()
        except FileNotFoundError:
            raw = None
        except OSError as exc:
            raw, problems = b"", [f"LATEST unreadable ({exc})"]
        listed = self.checkpoints.iterdir() if self.checkpoints.is_dir() else ()
        others = sorted((p for p in listed if _NAME.fullmatch(p.name)),
                        key=lambda p: _order(p.name), reverse=True)
        name = (raw or b"").decode(errors="replace").strip()
        named = self.checkpoints / name if _NAME.fullmatch(name) else None
        if raw is None:
            problems += ["LATEST missing"] if others else []
        elif named is None and not problems:
            problems.append(f"LATEST holds {name[:80]!r}, not a checkpoint name")
        elif named is not None and named not in others:
            problems.append(f"LATEST names {name}, which does not exist")
        return raw, [named] * (named in others) + [p for p in others if p != named], problems

    def _first_intact(self, attempt: Callable[[Path], None]) -> tuple[Path | None, bytes | None]:
        """The first candidate for which ``attempt`` raises no CheckpointError (a warning
        names every one skipped, and why; None when there is no checkpoint at all), and the
        bytes LATEST held.

        Raises:
            CheckpointError: checkpoints exist but none is intact (never start over silently).
        """
        text, candidates, problems = self._candidates()
        for reason in problems:
            log.warning("event=checkpoint_pointer_damaged checkpoints=%s problem=%s",
                        self.checkpoints, reason)
        for path in candidates:
            try:
                attempt(path)
            except CheckpointError as exc:
                problems.append(f"{path.name}: {exc}")
                log.warning("event=checkpoint_skipped checkpoint=%s reason=%s", path, exc)
                continue
            if problems:
                log.warning("event=checkpoint_fallback using=%s skipped=%d", path, len(problems))
            return path, text
        if text is None and not candidates:
            return None, None
        raise CheckpointError(f"no intact checkpoint in {self.checkpoints}: " + "; ".join(problems))

    def latest_checkpoint(self, check: durable.Check = durable.Check.CONTENT) -> Path | None:
        """The checkpoint LATEST names if it verifies, else the newest one that does (a warning
        names what was skipped, and LATEST is moved to it so every process of the run resumes
        from the same one). None when the run has no checkpoint yet.

        Raises:
            CheckpointError: checkpoints exist but none is intact.
        """
        path, text = self._first_intact(lambda p: self.verify_checkpoint(p, check))
        if path is not None and (text is None or text.decode(errors="replace").strip() != path.name):
            self._repoint(text, path)
        return path

    def _repoint(self, seen: bytes | None, path: Path) -> None:
        pointer = self.checkpoints / "LATEST"
        try:
            now = pointer.read_bytes() if pointer.exists() else None
            if now == seen:  # nobody committed meanwhile
                atomic_write_text(pointer, path.name)
                log.warning("event=checkpoint_pointer_repaired latest=%s", path.name)
        except OSError as exc:  # a read-only run directory: only warn
            log.warning("event=checkpoint_pointer_not_repaired latest=%s error=%r", path.name, exc)

    def restore_latest(self, restore: Callable[[Path], None]) -> Path | None:
        """Calls ``restore`` with the newest checkpoint that passes a structure check and
        that ``restore`` accepts (a component verifies the content of its own files), warning
        about each one skipped; returns it, or None when the run has no checkpoint yet.

        Raises:
            CheckpointError: checkpoints exist but none could be restored.
        """
        def attempt(path: Path) -> None:
            self.verify_checkpoint(path, durable.Check.STRUCTURE)
            restore(path)
        return self._first_intact(attempt)[0]

    @staticmethod
    def read_counters(checkpoint: Path) -> dict[str, Any]:
        """The checkpoint's counters.json, checked against its manifest.

        Raises:
            CheckpointError: naming the file when it is missing, damaged or not an object.
        """
        try:
            manifest = durable.read_sealed(checkpoint / durable.MANIFEST)
            files = durable.parse_files(manifest.get("files"), str(checkpoint / durable.MANIFEST))
            if "counters.json" not in files:
                raise CheckpointError(f"{checkpoint / durable.MANIFEST}: no counters.json")
            durable.check_file(checkpoint / "counters.json", files["counters.json"], durable.Check.CONTENT)
            counters = json.loads((checkpoint / "counters.json").read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{checkpoint}/counters.json unreadable: {exc}") from exc
        if not isinstance(counters, dict):
            raise CheckpointError(f"{checkpoint}/counters.json holds {type(counters).__name__}")
        return counters

    # -- metrics and summary ---------------------------------------------------------------

    def append_metrics(self, row: dict[str, Any]) -> None:
        path = self.path / "metrics.csv"
        if self._metrics_fields is None:
            if path.exists():
                with path.open() as f:
                    self._metrics_fields = next(csv.reader(f), list(row))
            else:
                self._metrics_fields = list(row)
                with path.open("w", newline="") as f:
                    csv.writer(f).writerow(self._metrics_fields)
        with path.open("a", newline="") as f:
            csv.DictWriter(f, self._metrics_fields, extrasaction="ignore").writerow(row)

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_text(self.path / "summary.json", json.dumps(summary, indent=2, sort_keys=True))


class MetricsLog:
    """Where each progress row goes: a metrics.csv line and TensorBoard scalars in ``tb/``."""

    def __init__(self, run_dir: RunDir, resumed_at: int = 0) -> None:
        """Opens the TensorBoard event file.

        Args:
            run_dir: the run's directory.
            resumed_at: the env steps of the checkpoint a resumed run starts from (0 for a new
                run); TensorBoard drops the later points of the earlier event files.
        """
        self._run_dir = run_dir
        self._tensorboard = TensorBoardLog(run_dir.tensorboard, purge_step=resumed_at or None)

    def write(self, row: dict[str, Any]) -> None:
        self._run_dir.append_metrics(row)
        self._tensorboard.write(row)

    def close(self) -> None:
        self._tensorboard.close()
