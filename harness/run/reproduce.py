"""Re-run a stored row: same configuration, same image (pulled by its digest if missing), compare."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.config import RoiConfig, RunConfig, WsiConfig
from harness.errors import PfmbenchError
from harness.results.schema import METRICS, ROI_METRICS, ResultRow
from harness.results.store import read_rows
from harness.run.lifecycle import execute


@dataclass(frozen=True)
class Reproduction:
    """A stored row, its re-run, and each headline metric side by side."""

    old: dict[str, Any]
    new: ResultRow

    def deltas(self) -> list[tuple[str, float | None, float | None]]:
        """(metric, stored, now) for the task's headline metrics."""
        names = METRICS if self.new.task == "segmentation" else ROI_METRICS
        return [(m, self.old.get(m), getattr(self.new, m)) for m in names]

    @property
    def identical(self) -> bool:
        return all(old == now for _, old, now in self.deltas())


def reproduce(row_id: str, results_dir: Path | None = None, data_dir: Path | None = None, write: bool = False, pull: bool = False,
              log: Callable[[str], None] = print) -> Reproduction:
    """Re-run a stored row. Docker rows run in the recorded image digest, and every row with its recorded engine.

    An ``--endpoint`` row whose server reported its image (serve/identity.py) runs in that
    image here, under the docker runtime: the server it used may be long gone. With
    ``pull``, an image that is not here is pulled by its digest first.

    Features are extracted again, never read from the feature cache: a reproduction
    recomputes everything the row's numbers came from. The device is this machine's
    ``--device auto``: a GPU row reproduced on a CPU gets a CPU run key and a CPU ``device`` column.
    """
    rows = [r for r in read_rows(results_dir) if r["row_id"] == row_id]
    if not rows:
        raise PfmbenchError(f"no result row '{row_id}'", "list the rows with 'pfmbench results'")
    old = rows[0]
    raw = json.loads(old["config_json"])
    task = old.get("task", "segmentation")
    cfg = RunConfig(**raw) if task == "segmentation" else WsiConfig(**raw) if task.startswith("wsi-") else RoiConfig(**raw)
    image = None
    if old["runtime"] in ("docker", "endpoint") and old["image_digest"]:
        image = _ensure_digest(old["image_digest"], old["model"], pull, log)
        cfg = cfg.model_copy(update={"runtime": "docker"})
    elif old["runtime"] == "endpoint":
        raise PfmbenchError(f"row {row_id} came from a server at --endpoint that reported no image", "rerun it against that server with 'pfmbench bench --endpoint'")
    log(f"re-running {row_id}: {old['model']} on {old['dataset']}, runtime {cfg.runtime}" + (f", image {image}" if image else ""))
    engine = old.get("engine") or "torch"  # rows before schema 5 ran eager torch
    new = execute(cfg, results_dir=results_dir, data_dir=data_dir, write=write, image=image, feature_cache=False, engine=engine)
    return Reproduction(old, new)


def _ensure_digest(ref: str, model: str, pull: bool, log: Callable[[str], None]) -> str:
    """The local image id for a recorded identity; a ``repo@sha256:`` reference (or a manifest the lock names) is pulled with ``pull``."""
    from harness.images.docker import docker_client, get_image
    from harness.images.lock import MANIFEST_PREFIX, entry_by_manifest
    from harness.images.registry import pull_ref

    if ref.startswith(MANIFEST_PREFIX):
        entry = entry_by_manifest(model, ref.removeprefix(MANIFEST_PREFIX))
        if entry is None:
            raise PfmbenchError(f"no entry of models/images.lock holds the image this row ran in ({ref[:28]}...)",
                                "use the lock of the release the row was computed with (--lock / PFMBENCH_IMAGES_LOCK)")
        ref = entry.ref
    image = get_image(docker_client(), ref)
    if image is not None:
        return image.id
    if "@" not in ref:
        raise PfmbenchError(f"image {ref[:19]} of this row was never pushed and is not here", f"rebuild it with 'pfmbench images build {model}' (a new build may differ)")
    if not pull:
        raise PfmbenchError(f"the row's image {ref} is not here", "add --pull to pull it by its digest")
    return pull_ref(ref, model, log).id
