"""The client's POSIX shared-memory regions: named, leased and swept.

Every region this harness creates is ``/dev/shm/pfm_<pid>_<random>_<role>_<bytes>`` and is held
(:func:`~harness.util.leases.hold`) for as long as it exists. A harness killed with
SIGKILL cannot unlink its regions, and a token region is tens of megabytes; the next run
removes every ``pfm_`` region nobody holds (:func:`remove_orphan_regions`), which is safe
beside a live harness, also one in a container behind ``ipc=host`` with its own pids.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from harness.util.leases import remove_unheld

SHM_DIR = Path("/dev/shm")
PREFIX = "pfm_"


def new_prefix() -> str:
    """A prefix for one client's regions (the pid is for the humans reading ``ls /dev/shm``)."""
    return f"{PREFIX}{os.getpid()}_{uuid.uuid4().hex[:8]}"


def remove_orphan_regions() -> int:
    """Unlink the ``pfm_`` regions of harnesses that were killed; returns how many."""
    return remove_unheld(SHM_DIR.glob(f"{PREFIX}*")) if SHM_DIR.is_dir() else 0
