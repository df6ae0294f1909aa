"""The harness side of a training job: prepare its run directory, start it, follow it, collect its row.

Where the job runs follows ``--runtime``: ``docker`` starts ``pfmbench train`` in the
model's own image (run directory, dataset and weights bind-mounted at the same paths,
as the calling user, no network needed); ``local`` starts it as a child process;
``inprocess`` calls it here. The run directory is ``<results>/runs/<run key>``, so the
same command finds the checkpoint of an interrupted run and resumes it.

A local job dies with the harness (``PR_SET_PDEATHSIG``); a container cannot, so its
name is derived from the run key and a leftover container of a killed harness is
removed before the run starts again. Nothing but the job writes into the run directory
while it runs.
"""

from __future__ import annotations

import collections
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from harness import constants
from harness.config import RunConfig
from harness.errors import PfmbenchError, TrainJobError
from harness.results.schema import ResultRow
from harness.run.plan import Plan
from harness.runtime.owners import RUN_LABEL, owner_labels, reap_orphan_containers
from harness.train.job import CHECKPOINT_FILE, JOB_FILE, RESULT_FILE, JobSpec, parse_event, run_job
from harness.util.atomic import atomic_write_json
from harness.util.devices import docker_device_requests, inside_device, visible_devices_env
from harness.util.procgroup import spawn_group, stop_group
from harness.util.progress import progress_bar

log = logging.getLogger("pfmbench.train")


def run_dir_for(run_key: str, results_dir: Path | None = None) -> Path:
    return (results_dir or constants.RESULTS_DIR) / "runs" / run_key


def _job_command(run_dir: Path, python: str) -> list[str]:
    return [python, "-m", "harness", "train", str(run_dir)]


def _follow(lines: Iterable[str], on_event: Callable[[dict], None], tail: collections.deque) -> None:
    for line in lines:
        line = line.rstrip("\n")
        event = parse_event(line)
        if event is None:
            tail.append(line)
            log.info("job: %s", line)
        else:
            on_event(event)


def _run_local(run_dir: Path, on_event: Callable[[dict], None], device: str) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **visible_devices_env(device)}
    tail: collections.deque = collections.deque(maxlen=40)
    proc = spawn_group(_job_command(run_dir, sys.executable), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                       text=True, env=env)
    try:
        _follow(proc.stdout, on_event, tail)  # type: ignore[arg-type]
        proc.wait()
    finally:
        if proc.poll() is None:  # interrupted (Ctrl-C): stop the job's whole group
            stop_group(proc)
    if proc.returncode != 0:
        raise TrainJobError("local process", proc.returncode, "\n".join(tail))


def _run_docker(run_dir: Path, job: JobSpec, mounts: list[tuple[Path, str]], image: str, on_event: Callable[[dict], None], device: str) -> None:
    from harness.images.docker import docker_client

    client = docker_client()
    reap_orphan_containers(client)  # a container left by a harness that was killed: the run resumes from its checkpoint instead
    name = f"pfmbench-train-{job.run_key[:16]}"
    volumes = {str(p): {"bind": str(p), "mode": mode} for p, mode in mounts}
    container = client.containers.run(
        image, command=_job_command(run_dir, "python"), name=name, detach=True, volumes=volumes, network_mode="none",
        user=f"{os.getuid()}:{os.getgid()}", environment={"HOME": "/tmp", "PYTHONUNBUFFERED": "1"}, ipc_mode="private",
        labels={RUN_LABEL: name, "org.pfmbench.model": job.config.model, **owner_labels()}, device_requests=docker_device_requests(device),
    )
    tail: collections.deque = collections.deque(maxlen=40)
    try:
        buffer = ""
        lines: list[str] = []
        for chunk in container.logs(stream=True, follow=True):
            buffer += chunk.decode(errors="replace")
            *lines, buffer = buffer.split("\n")
            _follow(lines, on_event, tail)
        _follow([buffer] if buffer else [], on_event, tail)
        status = container.wait().get("StatusCode")
    finally:
        try:
            container.remove(force=True)
        except Exception:
            pass
    if status != 0:
        raise TrainJobError(f"container {name}", status, "\n".join(tail))


def run_training_job(plan: Plan, results_dir: Path | None, data_dir: Path | None, show_progress: bool, image: str | None = None,
                     fresh: bool = False, device: str = "cpu") -> ResultRow:
    """Run (or resume, or just collect) the training job of ``plan`` on ``device`` (resolved); returns its row (not yet stored).

    ``fresh`` discards a checkpoint or finished result of the same key first: the run starts over.
    A local or docker job is handed ``device``'s GPU alone, which it sees as ``cuda``.
    """
    from harness.data.loader import dataset_root

    cfg = plan.cfg
    assert isinstance(cfg, RunConfig) and plan.run_key is not None
    run_dir = run_dir_for(plan.run_key, results_dir).absolute()
    run_dir.mkdir(parents=True, exist_ok=True)
    if fresh:
        for name in (CHECKPOINT_FILE, RESULT_FILE):
            (run_dir / name).unlink(missing_ok=True)
    data_root = (data_dir or constants.DATA_DIR).absolute()
    source = dataset_root(plan.card, data_root).absolute()  # generates a built-in sample now, on the host
    weights = "random" if plan.weights.path is None else str(plan.weights.path.absolute())
    job = JobSpec(config=cfg, run_key=plan.run_key, weights=weights, weights_label=plan.weights.label, data_dir=str(data_root), card=plan.card.model_dump(mode="json"),
                  image_digest=plan.image_digest,
                  device=device if cfg.runtime == "inprocess" else inside_device(device))
    atomic_write_json(run_dir / JOB_FILE, job.model_dump(mode="json"))
    resuming = (run_dir / CHECKPOINT_FILE).is_file() and not (run_dir / RESULT_FILE).is_file()

    with progress_bar(show_progress) as bar:
        task = bar.add_task(f"{cfg.strategy} {plan.spec.name} ({cfg.runtime})", total=cfg.epochs, info="resuming" if resuming else "")

        def on_event(event: dict) -> None:
            kind = event.get("event")
            if kind == "start" and event.get("resumed_from") is not None:
                bar.update(task, completed=event["resumed_from"], info=f"resumed after {event['resumed_from']} epochs")
                if not show_progress:
                    log.warning("resuming run %s at epoch %d of %d (from its checkpoint)", plan.run_key, event["resumed_from"] + 1, cfg.epochs)
            elif kind == "epoch":
                bar.update(task, completed=event["epoch"] + 1,
                           info=f"loss {event['loss']:.4f} val {cfg.select_metric} {event['val_' + cfg.select_metric]:.4f} step {event['step_s']:.2f}s")
            elif kind == "test":
                bar.update(task, info=f"testing ({event['inference']})")

        if cfg.runtime == "inprocess":
            run_job(run_dir, lambda kind, data: on_event({"event": kind, **data}))
        elif cfg.runtime == "local":
            _run_local(run_dir, on_event, device)
        elif cfg.runtime == "docker":
            mounts = [(run_dir, "rw"), (data_root, "ro")]
            if not source.is_relative_to(data_root):
                mounts.append((source, "ro"))
            if plan.weights.path is not None:
                mounts.append((plan.weights.path.absolute(), "ro"))
            from harness.images.docker import docker_client
            from harness.images.registry import ensure_image

            img = docker_client().images.get(image) if image else ensure_image(plan.spec.name)
            _run_docker(run_dir, job, mounts, img.id, on_event, device)
        else:
            raise PfmbenchError(f"runtime '{cfg.runtime}' cannot run a training job", "use --runtime docker, local or inprocess")
    row = ResultRow.model_validate_json((run_dir / RESULT_FILE).read_text())
    return row.model_copy(update={"runtime": cfg.runtime, "device": device})  # the job saw its GPU as cuda; the row names which


def finish_run_dir(run_key: str | None, results_dir: Path | None) -> None:
    """After the row is stored: drop the resume checkpoint (``best.pt``, ``job.json``, ``result.json`` stay)."""
    if run_key:
        (run_dir_for(run_key, results_dir) / CHECKPOINT_FILE).unlink(missing_ok=True)
