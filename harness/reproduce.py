"""Re-run a stored row: same configuration, same image (pulled by its digest if missing), compare."""

from __future__ import annotations

import json
from pathlib import Path

from harness.bench import run_bench
from harness.config import RunConfig
from harness.errors import PfmbenchError
from harness.results.schema import ResultRow
from harness.results.store import read_rows


def reproduce(row_id: str, results_dir: Path | None = None, data_dir: Path | None = None, write: bool = False, log=print) -> tuple[dict, ResultRow]:
    """Returns the stored row and the new one. Docker rows run in the recorded image digest.

    Features are extracted again, never read from the feature cache: a reproduction
    recomputes everything the row's numbers came from.
    """
    rows = [r for r in read_rows(results_dir) if r["row_id"] == row_id]
    if not rows:
        raise PfmbenchError(f"no result row '{row_id}'", "list the rows with 'pfmbench results'")
    old = rows[0]
    cfg = RunConfig(**json.loads(old["config_json"]))
    image = None
    if old["runtime"] == "docker" and old["image_digest"]:
        image = _ensure_digest(old["image_digest"], old["model"], log)
    log(f"re-running {row_id}: {old['model']} on {old['dataset']}, runtime {cfg.runtime}" + (f", image {image}" if image else ""))
    new = run_bench(cfg, results_dir=results_dir, data_dir=data_dir, write=write, image=image, feature_cache=False)
    return old, new


def _ensure_digest(ref: str, model: str, log) -> str:
    """The local image id for a recorded identity: a ``repo@sha256:`` reference is pulled if absent."""
    import docker.errors

    from harness.images import docker_client, pull_ref

    client = docker_client()
    try:
        return client.images.get(ref).id
    except docker.errors.ImageNotFound:
        if "@" not in ref:
            raise PfmbenchError(f"image {ref[:19]} of this row was never pushed and is not present", f"rebuild it with 'pfmbench images build {model}' (a new build may differ)") from None
        return pull_ref(ref, model, log).id
