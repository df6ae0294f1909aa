"""Test session setup: isolated data/results/cache dirs, and helpers to find the processes this session started.

Every process a test starts inherits ``PFMBENCH_TEST_SESSION`` (a fresh id per session);
:func:`processes` lists only those, so a user's bench or a second checkout's suite on
the same machine is never seen, let alone killed.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

_SESSION = Path(tempfile.mkdtemp(prefix="pfmbench-tests-"))
SESSION_ID = uuid.uuid4().hex
os.environ["PFMBENCH_TEST_SESSION"] = SESSION_ID
# Set before harness.constants is imported anywhere.
os.environ.setdefault("PFMBENCH_CACHE", str(_SESSION / "cache"))
os.environ.setdefault("PFMBENCH_DATA", str(_SESSION / "data"))
os.environ.setdefault("PFMBENCH_RESULTS", str(_SESSION / "results"))
os.environ.setdefault("HF_HUB_CACHE", str(_SESSION / "hub"))
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.pop("HF_TOKEN", None)
os.environ.pop("HUGGING_FACE_HUB_TOKEN", None)

import pytest  # noqa: E402


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes() -> list[tuple[int, int, str]]:
    """(pid, pgid, cmdline) of every live process this test session started (its environment carries the session id)."""
    out = []
    marker = f"PFMBENCH_TEST_SESSION={SESSION_ID}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            stat = (entry / "stat").read_text()
            fields = stat.rsplit(")", 1)[1].split()
            if fields[0] == "Z":
                continue
            out.append((int(entry.name), int(fields[2]), cmd))
        except (OSError, IndexError):
            continue
    return out


def server_processes() -> list[tuple[int, int, str]]:
    return [p for p in processes() if "harness.serve" in p[2] or "tritonserver" in p[2] or "triton_python_backend_stub" in p[2]]


@pytest.fixture
def no_leftover_servers():
    """Fails the test if it leaves a model server, Triton or backend stub process running."""
    before = {p[0] for p in server_processes()}
    yield
    from waiting import wait_until

    def gone() -> bool:
        return not [p for p in server_processes() if p[0] not in before]

    try:
        wait_until(gone, 10, "the test's servers to exit")
    except AssertionError:
        raise AssertionError(f"orphan server processes: {[p for p in server_processes() if p[0] not in before]}") from None


@pytest.fixture(autouse=True)
def isolated_feature_cache(tmp_path_factory, monkeypatch):
    """Each test gets its own feature cache: a run in one test never reads features another test extracted."""
    monkeypatch.setenv("PFMBENCH_FEATURES", str(tmp_path_factory.mktemp("features")))
