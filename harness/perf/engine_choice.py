"""``--engine auto``: eager torch, unless ``torch.compile`` was measured faster for this model on this GPU.

``make gpu-check`` measures each model's forward eager and compiled on the GPU it runs on
and records the two rates here (:func:`record`), keyed by the GPU's name. ``auto`` then
picks ``compile`` for a frozen extraction on that GPU model when it was at least
:data:`MARGIN` faster; everywhere else (a CPU, a GPU never measured, a model never
measured, a strategy that trains through the backbone, a server started elsewhere) it
is ``torch``. The choice is resolved before the run key, so a row always names the
engine it really ran (a compiled row has a key of its own).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness import constants
from harness.util.atomic import atomic_write_json

STORE = constants.ENGINE_STORE
#: How much faster ``compile`` must have measured before ``auto`` takes it: less is within run-to-run noise.
MARGIN = 1.05


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):  # never measured, or a file cut short: nothing is known
        return {}
    return data if isinstance(data, dict) else {}


def record(gpu_model: str, model: str, engine: str, images_per_s: float, path: Path = STORE) -> None:
    """Store one measured forward rate (``gpu-check``'s forward cells on a GPU)."""
    data = _read(path)
    data.setdefault(gpu_model, {}).setdefault(model, {})[engine] = images_per_s
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, data)


def choose_engine(requested: str, cfg: Any, device: str, path: Path = STORE) -> tuple[str, str]:
    """``requested`` as a concrete engine for the run of ``cfg`` on ``device`` (resolved), and why.

    Anything but ``auto`` is returned as it is (and validated by the plan).
    """
    if requested != "auto":
        return requested, f"engine {requested} (asked for)"
    model = cfg.model
    if getattr(cfg, "strategy", "frozen") != "frozen" or cfg.runtime == "endpoint":
        return "torch", "engine torch (auto: the backbone is not extracted by a server this run starts)"
    from harness.util.devices import gpu_index

    index = gpu_index(device)
    if index is None:
        return "torch", "engine torch (auto: on a CPU)"
    import torch

    gpu = torch.cuda.get_device_name(index)
    rates = _read(path).get(gpu, {}).get(model, {})
    eager, compiled = rates.get("torch"), rates.get("compile")
    if not eager or not compiled:
        return "torch", f"engine torch (auto: {model} was never measured on {gpu}; make gpu-check measures it)"
    if compiled >= MARGIN * eager:
        return "compile", f"engine compile (auto: measured {compiled / eager:.2f}x eager for {model} on {gpu})"
    return "torch", f"engine torch (auto: compile measured {compiled / eager:.2f}x eager for {model} on {gpu})"

