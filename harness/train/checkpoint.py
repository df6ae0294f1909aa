"""Checkpoints that are either whole or absent: written to a temporary file, fsynced, renamed.

A run killed with SIGKILL at any instant leaves either the previous checkpoint or the
new one, never a torn file (``os.replace`` is atomic on POSIX filesystems); the next run
of the same command resumes from it.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def _atomic_write(path: Path, write) -> None:  # noqa: ANN001 - a callable taking a binary file
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """``torch.save`` ``state`` to ``path`` atomically."""
    _atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    """The checkpoint at ``path``, or None if there is none yet."""
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)


def write_json_atomic(data: Any, path: Path) -> None:
    _atomic_write(path, lambda f: f.write(json.dumps(data, indent=1, sort_keys=True).encode()))
