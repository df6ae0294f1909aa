"""Test session setup: isolated data/results/cache dirs, and helpers to find the processes this session started.

The test process is a child subreaper (``PR_SET_CHILD_SUBREAPER``): a process its
children leave behind is re-parented to it, not to init, so everything this session
started stays in its process tree. :func:`processes` lists that tree and nothing else;
a user's bench or a second checkout's suite on the same machine is never seen, let
alone killed.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import shutil
import tempfile
from pathlib import Path

_SESSION = Path(tempfile.mkdtemp(prefix="pfmbench-tests-"))
# this session's data, cache and results go with it (each xdist worker has its own)
atexit.register(shutil.rmtree, _SESSION, ignore_errors=True)
PR_SET_CHILD_SUBREAPER = 36
if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
    raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed: the tests could not keep track of their orphans")
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


def _stat(pid: int) -> tuple[int, int, str] | None:
    """(ppid, pgid, state) from ``/proc/<pid>/stat``, or None once the process is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[1]), int(fields[2]), fields[0]
    except (OSError, IndexError, ValueError):
        return None


def processes() -> list[tuple[int, int, str]]:
    """(pid, pgid, cmdline) of every live process in this session's tree (descendants of the test process).

    This kernel has no ``/proc/<pid>/task/<tid>/children`` list, so the tree is built
    from each process's parent pid (``stat``, what ``ps`` shows); only the command
    lines of this session's own processes are read.
    """
    parents: dict[int, list[int]] = {}
    info: dict[int, tuple[int, int, str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))) is not None:
            info[int(entry.name)] = st
            parents.setdefault(st[0], []).append(int(entry.name))
    out, todo = [], list(parents.get(os.getpid(), []))
    while todo:
        pid = todo.pop()
        todo += parents.get(pid, [])
        _, pgid, state = info[pid]
        if state == "Z":  # exited; its parent (maybe this process, as subreaper) has not reaped it
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        out.append((pid, pgid, cmd))
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


def pinned_model_dir(tmp_path: Path, timm_version: str, install: bool = True) -> Path:
    """A copy of the zoo plus ``pinned_vit``: Lunit's ViT-S/8 spec pinning ``timm_version`` in its ``packages`` label,
    and (``install``) installing it from the build's wheels in a layer of its own, as models/README.md step 6 shows."""
    from harness import constants

    models = tmp_path / "models"
    shutil.copytree(constants.MODELS_DIR, models)
    text = (constants.MODELS_DIR / "lunit_vits8/Dockerfile").read_text().replace("lunit_vits8", "pinned_vit")
    pin = f"      org.pfmbench.packages='{{\"timm\": \"{timm_version}\"}}' \\\n"
    text = text.replace('      org.pfmbench.arch="ViT-S/8" \\\n', '      org.pfmbench.arch="ViT-S/8" \\\n' + pin)
    if install:
        text += ("USER root\nRUN --mount=type=bind,source=wheels,target=/wheels \\\n"
                 f"    pip install --no-cache-dir --no-index --no-deps --find-links /wheels timm=={timm_version}\nUSER 10001\n")
    (models / "pinned_vit").mkdir()
    (models / "pinned_vit/Dockerfile").write_text(text)
    return models
