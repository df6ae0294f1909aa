"""Where a row came from: code version, packages, hardware, time and memory."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import uuid
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Any

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
    out: dict[str, str | None] = {}
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
    """Peak resident memory of this process (the harness; the model server is separate), in MB.

    ``VmHWM`` where Linux has it: ``ru_maxrss`` survives ``exec``, so a process spawned by a
    large parent would report the parent's size at the fork as its own peak.
    """
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def row_provenance(wall_s: float, device: str = "cpu", precision: str | None = "fp32") -> dict[str, object]:
    """The provenance columns every result row carries, whatever its task; ``device`` is the resolved one (``cpu``, ``cuda:N``)."""
    from harness import __version__
    from harness.util.devices import device_facts

    return {
        "harness_version": __version__,
        "git_commit": git_commit(),
        "package_versions": package_versions(),
        "hardware": hardware(),
        **device_facts(device),
        "precision": precision,
        "wall_time_s": round(wall_s, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def dockerfile_state(model: str) -> dict[str, object]:
    """The model's Dockerfile as this run read it: its hash, and whether git has it committed unchanged.

    ``git_commit``'s ``-dirty`` ignores untracked files, and a new model's Dockerfile is
    untracked until its author commits it: a row from it must say so itself.
    """
    import hashlib

    path = constants.MODELS_DIR / model / "Dockerfile"
    try:
        sha = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    except OSError:
        return {"model_dockerfile_sha256": None, "model_dockerfile_committed": None}
    committed: bool | None = None
    try:
        status = subprocess.run(["git", "status", "--porcelain", "--", path.name], cwd=path.parent, capture_output=True, text=True, timeout=5)
        if status.returncode == 0:
            committed = status.stdout.strip() == ""  # "??" untracked, " M" edited, "A " staged only
            if committed:  # clean could also mean ignored: it must be tracked
                committed = subprocess.run(["git", "ls-files", "--error-unmatch", "--", path.name], cwd=path.parent,
                                           capture_output=True, timeout=5).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        pass
    return {"model_dockerfile_sha256": sha, "model_dockerfile_committed": committed}


def row_identity(cfg: Any, spec: Any, card: Any, weights_label: str, key: str | None, digest: str | None) -> dict[str, object]:
    """The columns that say what ran, shared by every task: ids, model, weights, dataset, configuration."""
    from harness.config import run_key

    return {
        "row_id": uuid.uuid4().hex[:12],
        "run_key": key or run_key(cfg, spec.spec_hash(), card.card_hash(), weights_label, digest),
        "created_at": datetime.now(UTC).replace(tzinfo=None),  # naive UTC: DuckDB reads it without pytz
        "model": spec.name,
        "model_spec_hash": spec.spec_hash(),
        **dockerfile_state(spec.name),
        "weights": weights_label,
        "weights_init_seed": cfg.init_seed if weights_label == "random" else None,
        "dataset": card.name,
        "card_hash": card.card_hash(),
        "class_names": card.class_names,
        "preset": cfg.preset,
        "seed": cfg.seed,
        "runtime": cfg.runtime,
        "image_digest": digest,
        "config_hash": cfg.config_hash(),
        "config_json": json.dumps(cfg.model_dump(mode="json"), sort_keys=True),
        "n_bootstrap": cfg.n_bootstrap,
    }
