"""A server's Triton workspace (model store, sockets, a copy of the server binaries): leased, and swept when its server was killed.

PyTriton removes its workspace on a clean shutdown only; a server killed outright leaves
~22 MB behind each time. Each server makes its own under the temp folder and holds it
(:func:`~harness.util.leases.hold`) while it runs; every run sweeps the ones nobody holds.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from harness.util.leases import hold, remove_unheld

PREFIX = "pfmbench-triton-"


def new_workspace() -> tuple[Path, int | None]:
    """A fresh workspace folder and the lease to release when the server is done with it."""
    path = Path(tempfile.mkdtemp(prefix=PREFIX))
    return path, hold(path)


def sweep_workspaces() -> int:
    """Remove the workspaces of servers that were killed; returns how many."""
    return remove_unheld(Path(tempfile.gettempdir()).glob(f"{PREFIX}*"))
