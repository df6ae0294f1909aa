"""Where a row came from: code version, packages, hardware, time and memory."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
from importlib.metadata import PackageNotFoundError, version

from harness import constants

_PACKAGES = ("pfmbench", "torch", "timm", "transformers", "numpy", "nvidia-pytriton", "tritonclient")


def git_commit() -> str | None:
    """HEAD of the checkout the harness runs from, with ``-dirty`` if it has changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=constants.PROJECT_ROOT, capture_output=True, text=True, timeout=5)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=constants.PROJECT_ROOT, capture_output=True, text=True, timeout=5)
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


def package_versions() -> str:
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return json.dumps(out, sort_keys=True)


def hardware() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    text = f"{cpu} x{os.cpu_count()}"
    try:
        import torch

        if torch.cuda.is_available():
            text += f"; {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return text


def peak_rss_mb() -> float:
    """Peak resident memory of this process (the harness; the model server is separate)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
