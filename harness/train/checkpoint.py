"""Checkpoints that are either whole or absent (:mod:`harness.util.atomic`).

A run killed with SIGKILL at any instant leaves either the previous checkpoint or the
new one, never a torn file (``os.replace`` is atomic on POSIX filesystems); the next run
of the same command resumes from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from harness.util.atomic import atomic_write


def save_checkpoint(state: dict[str, Any] | Any, path: Path) -> None:
    """``torch.save`` ``state`` to ``path`` atomically."""
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    """The checkpoint at ``path``, or None if there is none yet."""
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)
