"""Files and folders that are either whole or absent: written beside their target, fsynced, renamed into place.

A process killed with SIGKILL at any instant leaves the previous version or the new
one, never a torn file (``os.replace`` and ``rename`` are atomic within a POSIX
filesystem). The temporary is a dotfile ending in ``.tmp``, so no glob of real entries
(``*.parquet``, ``*.json``) ever matches it, and it is removed on every failure path;
its writer holds a lock on it (:mod:`harness.util.leases`), so one left by a SIGKILL is
told from one being written and removed by :func:`remove_stale_temporaries`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from harness.util.leases import hold, release, remove_unheld

TMP_SUFFIX = ".tmp"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> Path:
    """Call ``write(f)`` on a temporary binary file beside ``path``, fsync it, rename it to ``path``.

    The file gets the mode a plain ``open`` would give (0666 less the umask), not
    ``mkstemp``'s 0600: rows and cards are read by other users of a shared store.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
        lease = hold(tmp)
        if lease is not None:
            break
        os.close(fd)  # a sweeper took it for a dead writer's: start again
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, path)  # while the lease is held: a sweeper never sees it unheld under its temporary name
    finally:
        release(lease)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode()))


def atomic_write_json(path: Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True, default=str))


@contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``target``; on success it becomes ``target``.

    A ``target`` that appeared meanwhile (a concurrent writer of the same content) wins:
    the temporary is discarded. On failure nothing is left behind.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    while (lease := hold(tmp := Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=TMP_SUFFIX, dir=target.parent)))) is None:
        pass  # a sweeper took it for a dead writer's: start again
    try:
        yield tmp
        try:
            tmp.rename(target)
        except OSError:
            if not target.is_dir():  # not a concurrent writer: a real failure
                raise
    finally:
        release(lease)
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def remove_stale_temporaries(folder: Path) -> int:
    """Delete the temporaries in ``folder`` whose writers were killed (nobody holds them); returns how many."""
    return remove_unheld(folder.glob(f".*{TMP_SUFFIX}")) if folder.is_dir() else 0
