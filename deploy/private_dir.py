"""A directory only this user can reach, for the shared-memory weight files
(deploy/weights_shm.py), and opening files in it without following links or blocking.

/dev/shm is writable by every local user, and a name there can be predicted. Whoever makes the
directory first (mode 0777, or a symlink to their own) could replace the weights that rollout
actors run. So each run's directory lives in a per-user root, ``<base>/carla-td3-<uid>``, and
both are checked on every open: a directory (not a symlink) owned by this process's user with
no group or other permission bits. Anything else is refused, naming the path, and never
repaired (a chmod on another user's directory is theirs to undo); the caller then publishes and
fetches through the object store. /dev/shm is sticky, so once checked, the root cannot be
renamed or replaced by another user; inside it, only this user can create or replace files.
"""
from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from common.errors import CheckpointError

ROOT_PREFIX = "carla-td3-"
_OPEN_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK  # a FIFO opens at once, then is refused


def user_root(base: str | Path | None = None) -> Path:
    """This user's directory of weight files: ``<base>/carla-td3-<uid>``, ``base`` being
    /dev/shm (memory) where it exists, else the temp directory."""
    if base is None:
        base = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
    return Path(base) / f"{ROOT_PREFIX}{os.geteuid()}"


def is_user_root(path: Path) -> bool:
    return path.name == f"{ROOT_PREFIX}{os.geteuid()}"


def check_private(path: str | Path) -> None:
    """Raises CheckpointError naming ``path`` unless it is a directory, not a symlink, owned
    by this user, with no group or other permission bits."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise CheckpointError(f"weight directory {str(path)!r}: {exc.strerror}") from exc
    uid, mode = os.geteuid(), stat.S_IMODE(st.st_mode)
    if stat.S_ISLNK(st.st_mode):
        problem = "is a symlink"
    elif not stat.S_ISDIR(st.st_mode):
        problem = "is not a directory"
    elif st.st_uid != uid:
        problem = f"is owned by uid {st.st_uid}, not by this user (uid {uid})"
    elif mode & 0o077:
        problem = f"has mode {mode:04o}; group and others must have no access (0700)"
    else:
        return
    raise CheckpointError(f"weight directory {str(path)!r} {problem}: refused, the weights "
                          f"go through the object store")


def _chain(directory: Path) -> list[Path]:
    """``directory``, after its parent where that is this user's root."""
    return [directory.parent, directory] if is_user_root(directory.parent) else [directory]


def make_private(directory: str | Path) -> None:
    """Creates ``directory`` (and this user's root above it) with mode 0700 where missing, then
    checks both (``check_private``). An existing directory is checked, never changed.

    Raises:
        CheckpointError: a directory on the way is not private (naming it).
        OSError: one could not be created.
    """
    for path in _chain(Path(directory)):
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        check_private(path)


def check_private_chain(directory: str | Path) -> None:
    """``check_private`` on ``directory`` and, where it is in this user's root, on the root."""
    for path in _chain(Path(directory)):
        check_private(path)


def open_regular(path: str | Path, flags: int = os.O_RDONLY) -> int:
    """Opens an existing file without following a symlink and without blocking (a FIFO would
    wait for a writer), and accepts only a regular file owned by this user.

    Raises:
        CheckpointError: naming the path, when it is missing, a symlink, not a regular file or
            another user's.
    """
    try:
        fd = os.open(path, flags | _OPEN_FLAGS)
    except OSError as exc:  # ELOOP: a symlink
        raise CheckpointError(f"weight file {str(path)!r}: {exc.strerror}") from exc
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
        os.close(fd)
        kind = "not a regular file" if not stat.S_ISREG(st.st_mode) else f"owned by uid {st.st_uid}"
        raise CheckpointError(f"weight file {str(path)!r} is {kind}: refused")
    return fd
