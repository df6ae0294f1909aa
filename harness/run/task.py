"""The interface a task implements, and the context every run gets: the two things tasks and the lifecycle share.

Kept apart from :mod:`harness.run.lifecycle`, which imports every task, so that a task
module imports only this (no import cycle).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from harness import constants
from harness.results.schema import ResultRow
from harness.run.plan import Plan


@dataclass
class RunContext:
    """Where a run reads and writes, and how it talks to the user; not part of the run key."""

    results_dir: Path | None = None
    data_dir: Path | None = None
    show_progress: bool = False
    endpoint: str | None = None  # host:port of a server started elsewhere
    image: str | None = None  # docker: run in this image instead of the model's
    feature_cache: bool = True
    #: Discard a checkpoint of the same key first (``--rerun``, ``reproduce``).
    fresh: bool = False
    notify: Callable[[str], None] = field(default=lambda message: None)
    startup_timeout_s: float = constants.STARTUP_TIMEOUT_S  # --startup-timeout / PFMBENCH_STARTUP_TIMEOUT
    request_timeout_s: float = constants.REQUEST_TIMEOUT_S  # --request-timeout / PFMBENCH_REQUEST_TIMEOUT
    #: --device / PFMBENCH_DEVICE; :func:`~harness.run.lifecycle.execute` resolves it (``cpu``, ``cuda:N``) before anything runs
    device: str = constants.DEVICE
    #: --engine: what runs the backbone's forward in a frozen extraction (torch | compile | onnx, or auto:
    #: :func:`~harness.perf.engine_choice.choose_engine`); part of the run key when not torch
    engine: str = "torch"

    def runtime_options(self, dtype: str = "bf16") -> dict[str, object]:
        """Keyword arguments for :func:`~harness.runtime.make_runtime`: the device, engine and autocast dtype (the plan's), the image to run in, and the waits."""
        options: dict[str, object] = {"device": self.device, "engine": self.engine, "dtype": dtype, "startup_timeout_s": self.startup_timeout_s,
                                      "request_timeout_s": self.request_timeout_s}
        if self.image:
            options["image"] = self.image
        return options


class Task(Protocol):
    """What a task adds to the shared lifecycle."""

    def compute(self, plan: Plan, ctx: RunContext) -> ResultRow:
        """Extract, train and score: the row of ``plan`` (not yet stored)."""

    def after_write(self, plan: Plan, ctx: RunContext) -> None:
        """Clean-up once the row is stored (e.g. drop a resume checkpoint)."""
