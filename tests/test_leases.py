"""Temporaries and shared-memory regions of killed writers are swept; those of live writers are not."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from harness.client.regions import remove_orphan_regions
from harness.util.atomic import remove_stale_temporaries

WRITER = """
import sys, time
from pathlib import Path
from harness.util.atomic import atomic_directory
from harness.client.regions import new_prefix, SHM_DIR
from harness.util.leases import hold
import tritonclient.utils.shared_memory as shm
name = new_prefix() + "_test"
shm.create_shared_memory_region(name, "/" + name, 4096)
lease = hold(SHM_DIR / name)
with atomic_directory(Path(sys.argv[1]) / "entry") as tmp:
    print(tmp.name, name, flush=True)
    sys.stdin.readline()  # blocks until the test kills it or closes stdin
"""


def _writer(folder: Path) -> tuple[subprocess.Popen, str, str]:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    tmp, region = proc.stdout.readline().split()  # type: ignore[union-attr]
    return proc, tmp, region


def test_a_killed_writers_temporaries_are_removed_and_a_live_writers_are_kept(tmp_path):
    live, live_tmp, live_region = _writer(tmp_path)
    dead, dead_tmp, dead_region = _writer(tmp_path)
    try:
        os.kill(dead.pid, signal.SIGKILL)
        dead.wait()
        assert (tmp_path / dead_tmp).is_dir() and Path("/dev/shm", dead_region).exists()  # what SIGKILL leaves
        assert remove_stale_temporaries(tmp_path) == 1
        assert remove_orphan_regions() >= 1
        assert not (tmp_path / dead_tmp).exists() and not Path("/dev/shm", dead_region).exists()
        assert (tmp_path / live_tmp).is_dir() and Path("/dev/shm", live_region).exists()
    finally:
        live.kill()
        live.wait()
    remove_orphan_regions()
    assert not Path("/dev/shm", live_region).exists()
