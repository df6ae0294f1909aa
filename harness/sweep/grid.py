"""A sweep's grid: models x datasets x strategies x seeds, from the command line or a small YAML file.

Example ``sweep.yaml``::

    models: [phikon, uni]
    datasets: [nuclei-sample, synthetic-tissue]
    strategies: [frozen, lora]
    seeds: [42, 43]
    preset: densebench
    overrides: {epochs: 2, input_size: 64}
    retries: 2

Every cell becomes one :class:`Job`, identified by the run key of its configuration
(the key ``pfmbench bench`` uses): a cell whose key already has a row is skipped, and
two cells with the same key are one job.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from harness.config import RunConfig
from harness.errors import ConfigError, first_problem


class SweepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: list[str] = Field(min_length=1)
    datasets: list[str] = Field(min_length=1)
    strategies: list[str] = Field(default_factory=lambda: ["frozen"], min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [42], min_length=1)
    preset: str = "densebench"
    weights: str = "random"
    runtime: str = "auto"
    #: Any RunConfig field (epochs, input_size, batch_size, lr, inference, blocks, ...).
    overrides: dict[str, Any] = Field(default_factory=dict)
    retries: int = Field(default=2, ge=0, description="extra attempts of a failed job")

    def sweep_id(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:12]


def load_spec(path: Path) -> SweepSpec:
    """A :class:`SweepSpec` from YAML, with a one-line error naming the bad field."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read sweep file {path}: {str(exc).splitlines()[0]}", "pass a readable YAML file (see docs/sweeps.md)") from exc
    try:
        return SweepSpec.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"sweep file {path}: {first_problem(exc)}", "fix the file (see docs/sweeps.md)") from exc


@dataclass
class Job:
    config: RunConfig
    run_key: str
    label: str  # "model / dataset / strategy / seed" for tables

    @property
    def model(self) -> str:
        return self.config.model


def expand(spec: SweepSpec) -> list[Job]:
    """Every cell of the grid as a resolved job (configs validated up front: a typo fails before anything runs)."""
    from harness import constants
    from harness.run.plan import expand_grid, plan_run
    from harness.util.devices import resolve_device

    device = resolve_device(constants.DEVICE)  # what a job's --device auto resolves to (its GPU, seen as cuda:0): the same key
    jobs: dict[str, Job] = {}
    for cfg, _ in expand_grid("segmentation", spec.models, spec.datasets, spec.strategies, spec.seeds, runtime=spec.runtime,
                              preset=spec.preset, weights=spec.weights, **spec.overrides):
        assert isinstance(cfg, RunConfig)
        key = plan_run(cfg, device=device).run_key
        assert key is not None
        jobs.setdefault(key, Job(cfg, key, f"{cfg.model} / {cfg.dataset} / {cfg.strategy} / {cfg.seed}"))
    return list(jobs.values())
