"""Exactly one row per run key, however many commands run it at once: a run claims its key before any work.

A claim is an exclusive ``flock`` on ``<results>/claims/<run key>.lock`` (via ``filelock``).
The kernel drops it when the holder exits, SIGKILL included, so a dead claim never
blocks a rerun and there is nothing to clean up. A second identical ``bench`` waits for
the first, then finds its row and skips; the sweep driver stores a job's row under the
same claim, after checking the key still has none.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from harness import constants


def claims_dir(results_dir: Path | None = None) -> Path:
    return (results_dir or constants.RESULTS_DIR) / "claims"


def holder(run_key: str, results_dir: Path | None = None) -> str:
    """Who holds the claim, as the holder wrote it (pid, host, since), or "another process"."""
    try:
        info = json.loads((claims_dir(results_dir) / f"{run_key}.owner").read_text())
        return f"pid {info['pid']} on {info['host']} (since {info['since']})"
    except (OSError, ValueError, KeyError):
        return "another process"


@contextmanager
def claim(run_key: str, results_dir: Path | None = None, notify: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold ``run_key`` for the duration of the block; waits (saying for whom) while another process holds it."""
    folder = claims_dir(results_dir)
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(folder / f"{run_key}.lock", thread_local=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if notify is not None:
            notify(f"waiting: run {run_key} is being computed by {holder(run_key, results_dir)}; this command goes on when it ends")
        lock.acquire()
    owner = folder / f"{run_key}.owner"
    try:
        owner.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}))
        yield
    finally:
        owner.unlink(missing_ok=True)
        lock.release()
