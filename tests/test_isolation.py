"""The suite touches only what it started: another checkout's tests, or a user's bench, can run beside it.

A "foreign" model server (a real Triton, started here, outside the inner session's process
tree) runs while a second pytest session runs tests that start, kill and look for
leftover servers. The inner session must pass without counting the foreign server as its
leftover, and the foreign server must still answer afterwards.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness.models.spec import get_spec
from harness.models.weights import ResolvedWeights
from harness.runtime import LocalRuntime

ROOT = Path(__file__).resolve().parent.parent
INNER = ["tests/test_serve.py::test_killed_server_gives_a_clear_error_and_no_orphans",
         "tests/test_serve.py::test_served_features_equal_inprocess[shm]"]


@pytest.mark.slow
def test_a_second_session_beside_a_running_server_passes_and_leaves_that_server_alone(tmp_path, no_leftover_servers):
    images = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PFMBENCH_")}  # the inner session sets up its own dirs
    inner = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *INNER], cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # The foreign server starts while the inner session runs: a scan of the whole machine would call it a leftover.
        with LocalRuntime(get_spec("phikon"), ResolvedWeights.random()) as foreign:
            before, _ = foreign.infer(images, (11,))
            out, err = inner.communicate(timeout=600)
            assert inner.returncode == 0, out[-3000:] + err[-2000:]
            assert "2 passed" in out, out[-2000:]
            assert foreign.alive(), "the second session killed a server it did not start"
            after, _ = foreign.infer(images, (11,))
            assert np.array_equal(before, after)
    finally:
        if inner.poll() is None:
            inner.kill()
            inner.communicate()
