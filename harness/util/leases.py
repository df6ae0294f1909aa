"""Whether a temporary's writer still lives: it holds an ``flock`` on the file for as long as it does.

A temporary file, folder or shared-memory region left by a process killed with SIGKILL
looks like one still being written. Process ids cannot tell them apart here: a training
job in a container and a server behind ``ipc=host`` write into the same folders and
``/dev/shm`` from another pid namespace. A lock can: the kernel drops it when the holder
dies, whichever namespace it ran in. So a writer calls :func:`hold` on what it creates
and keeps the returned descriptor open until the thing is renamed into place or removed;
:func:`remove_unheld` deletes whatever nobody holds.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger("pfmbench")


def hold(path: Path | str) -> int | None:
    """Lock ``path`` (a file or a folder) for this process; returns the descriptor to close when done, or None if it is gone."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if os.path.isdir(path) else 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    fcntl.flock(fd, fcntl.LOCK_EX)  # blocks only while a sweeper probes it
    if os.fstat(fd).st_nlink == 0:  # a sweeper removed it between creation and the lock
        os.close(fd)
        return None
    return fd


def release(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


def _unheld(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0))
    except OSError:
        return False  # gone already, or not ours to open
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False  # its writer lives
    finally:
        os.close(fd)
    return True


def remove_unheld(paths: Iterable[Path]) -> int:
    """Delete each of ``paths`` that no live process holds; returns how many were removed."""
    count = 0
    for path in paths:
        if not _unheld(path):
            continue
        try:
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        except OSError:
            continue  # renamed into place or removed by someone else meanwhile
        count += 1
    if count:
        log.info("removed %d temporaries left by killed processes", count)
    return count
