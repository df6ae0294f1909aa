"""Where a sweep's jobs run: ``local`` (a bounded pool on this machine) or ``ray`` (tasks on a Ray cluster).

Either way one attempt of a job is the same command, ``python -m harness sweep-job``, in
its own process: a job that crashes, is killed or leaks memory takes nothing else with
it. The job computes its row without storing it and prints it on a marked line; the
sweep driver is the only writer of rows, so a run key gets exactly one row however many
attempts and executors touched it.

The local executor keeps one feature server per model alive while that model's
``frozen`` jobs run and points them at it (``--endpoint``), restarting it if it died.
On a GPU machine it runs one job per GPU by default, each seeing only its GPU
(``CUDA_VISIBLE_DEVICES``). Ray tasks are plain remote functions with CPU/GPU requests
(one GPU per job where the cluster has GPUs); Ray places them, and a task whose worker
dies comes back to the driver as a failure, to be retried like any other.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from pathlib import Path

from harness import constants
from harness.config import extract_dtype
from harness.results.schema import ResultRow
from harness.sweep.grid import Job
from harness.util.procgroup import spawn_group, stop_group, stop_groups

ROW_PREFIX = "@pfmbench-row "


@dataclass
class Attempt:
    ok: bool
    row: ResultRow | None
    reason: str  # why it failed ("" when ok)
    wall_s: float
    where: str = ""  # node that ran it
    note: str = ""  # e.g. "resuming run ... at epoch 3 of 4" when a training job picked up its checkpoint


def failed_attempt(exc: BaseException, wall_s: float = 0.0) -> Attempt:
    """A failed attempt from an exception in the driver (a server that would not start, a lost Ray worker): its first line."""
    from harness.errors import describe

    return Attempt(False, None, describe(exc), wall_s)


def job_command(job: Job, results_dir: Path, data_dir: Path | None, endpoint: str | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "harness", "sweep-job", "--config", job.config.model_dump_json(), "--results-dir", str(results_dir)]
    if data_dir is not None:
        cmd += ["--data-dir", str(data_dir)]
    if endpoint:
        cmd += ["--endpoint", endpoint]
    return cmd


def run_attempt(cmd: list[str], env: dict[str, str] | None = None, timeout_s: float | None = None, live: set | None = None) -> Attempt:
    """Run one attempt as a child process (dies with its parent) and parse its row or its error.

    ``live`` (if given) holds the process while it runs, so an interrupted driver can stop it at once.
    """
    started = time.perf_counter()
    proc = spawn_group(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                       env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    if live is not None:
        live.add(proc)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        stop_group(proc)
        return Attempt(False, None, f"timed out after {timeout_s:.0f} s", time.perf_counter() - started, os.uname().nodename)
    finally:
        if proc.poll() is None:
            stop_group(proc)
        if live is not None:
            live.discard(proc)
    wall = time.perf_counter() - started
    note = next((ln.split(": ", 1)[-1] for ln in err.splitlines() if "resuming run" in ln), "")
    for line in out.splitlines():
        if line.startswith(ROW_PREFIX) and proc.returncode == 0:
            return Attempt(True, ResultRow.model_validate_json(line[len(ROW_PREFIX):]), "", wall, os.uname().nodename, note)
    if proc.returncode is not None and proc.returncode < 0:
        reason = f"killed by signal {-proc.returncode}"
    else:
        lines = [ln for ln in err.splitlines() if ln.strip()]
        reason = (lines[-1].removeprefix("error: ") if lines else f"exited with status {proc.returncode} and no message")[:300]
    return Attempt(False, None, reason, wall, os.uname().nodename)


class LocalExecutor:
    """Up to ``concurrency`` jobs at once on this machine; one shared feature server per model and GPU for ``frozen`` jobs.

    ``gpus``: the GPUs jobs are placed on (default: every GPU torch sees). ``concurrency``
    defaults to one job per GPU, or 1 without a GPU; with more jobs than GPUs, the job
    slots take the GPUs in turn (two slots on one GPU share it).
    """

    name = "local"

    def __init__(self, results_dir: Path, data_dir: Path | None, concurrency: int | None = None, share_servers: bool = True,
                 timeout_s: float | None = None, gpus: list[int] | None = None) -> None:
        from harness.util.devices import cuda_devices

        self.results_dir, self.data_dir, self.timeout_s = results_dir, data_dir, timeout_s
        devices = list(range(cuda_devices())) if gpus is None else list(gpus)
        self.concurrency = max(1, concurrency or len(devices) or 1)
        self.free_gpus: deque[int] = deque(devices[k % len(devices)] for k in range(self.concurrency)) if devices else deque()
        self.pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="sweep-job")
        self.futures: dict[Future, Job] = {}
        self.gpu_of: dict[Future, int] = {}  # the GPU a running job holds
        self.live: set = set()  # job processes now running
        self.pending: deque[Job] = deque()
        self.unstarted: list[tuple[Job, Attempt]] = []  # attempts that failed before their process started
        self.share_servers = share_servers
        self.servers: dict[tuple[str, int | None, str, str], object] = {}  # (model, GPU, autocast dtype, spec hash) -> its running ServedRuntime
        self.server_starts = 0

    def _server(self, job: Job, gpu: int | None):
        """The shared server of the job's model on the job's GPU (started, or restarted if it died), or None when the job needs none.

        One server per model and GPU: a job on GPU 1 extracts on GPU 1, never through a server on GPU 0.
        """
        cfg = job.config
        if not self.share_servers or cfg.strategy != "frozen" or cfg.runtime not in ("local", "docker") or cfg.inference != "resize":
            return None
        from harness.models.spec import get_spec, spec_for_preset

        spec = spec_for_preset(get_spec(cfg.model), cfg.preset)
        # on a GPU, the preset's autocast dtype is the server's; the preset may normalise otherwise (the spec's hash)
        key = (cfg.model, gpu, extract_dtype(cfg.preset), spec.spec_hash())
        runtime = self.servers.get(key)
        if runtime is not None and runtime.alive():  # type: ignore[attr-defined]
            return runtime
        if runtime is not None:
            runtime.stop()  # type: ignore[attr-defined]
        from harness.models.weights import resolve_weights
        from harness.runtime import make_runtime

        runtime = make_runtime(cfg.runtime, spec, resolve_weights(spec, cfg.weights, cfg.init_seed), device=None if gpu is None else f"cuda:{gpu}",
                               dtype=key[2])
        self.servers[key] = runtime
        runtime.start()  # from the driver's main thread: PDEATHSIG follows the thread that forked
        self.server_starts += 1
        return runtime

    def _dispatch(self) -> None:
        """Start queued jobs while slots (and, on a GPU machine, GPUs) are free; each gets its server as it starts."""
        while self.pending and len(self.futures) < self.concurrency:
            job = self.pending.popleft()
            gpu = self.free_gpus.popleft() if self.free_gpus else None
            try:
                server = self._server(job, gpu)
            except Exception as exc:
                if gpu is not None:
                    self.free_gpus.append(gpu)
                self.unstarted.append((job, failed_attempt(exc)))
                continue
            env = {constants.TOKEN_ENV: server.token or ""} if server is not None else {}
            if gpu is not None:
                env["CUDA_VISIBLE_DEVICES"] = str(gpu)  # the job's --device auto is then this GPU, as its cuda:0
            cmd = job_command(job, self.results_dir, self.data_dir, server.url if server is not None else None)
            future = self.pool.submit(run_attempt, cmd, env, self.timeout_s, self.live)
            self.futures[future] = job
            if gpu is not None:
                self.gpu_of[future] = gpu

    def submit(self, job: Job) -> None:
        self.pending.append(job)
        self._dispatch()

    def running(self) -> set[str]:
        """Run keys of the jobs whose process has started (the rest wait for a slot or a GPU)."""
        return {job.run_key for job in self.futures.values()}

    def wait(self, timeout_s: float) -> list[tuple[Job, Attempt]]:
        out, self.unstarted = self.unstarted, []
        if self.futures:
            done, _ = wait_futures(list(self.futures), timeout=timeout_s, return_when=FIRST_COMPLETED)
            for f in done:
                job = self.futures.pop(f)
                if (gpu := self.gpu_of.pop(f, None)) is not None:
                    self.free_gpus.append(gpu)
                try:
                    out.append((job, f.result()))
                except Exception as exc:
                    out.append((job, failed_attempt(exc)))
        elif not out:
            time.sleep(min(timeout_s, 0.1))
        self._dispatch()
        return out

    def model_done(self, model: str) -> None:
        """Stop the model's servers (one per GPU): its last job has finished."""
        for key in [k for k in self.servers if k[0] == model]:
            self.servers.pop(key).stop()  # type: ignore[attr-defined]

    def close(self) -> None:
        """Stop what still runs (an interrupted sweep: Ctrl-C) and the shared servers, all at once. Finished rows are already stored.

        A server still here has a job that will never finish, so it is interrupted (reaped at
        once, not drained). Jobs and servers shut down side by side, so Ctrl-C ends in about
        one job's grace period however many there are.
        """
        self.pending.clear()
        servers, self.servers = list(self.servers.values()), {}
        stoppers = [threading.Thread(target=server.interrupt, name="stop-server") for server in servers]  # type: ignore[attr-defined]
        for t in stoppers:
            t.start()
        stop_groups(list(self.live), grace_s=5.0)
        self.pool.shutdown(wait=True, cancel_futures=True)
        for t in stoppers:
            t.join()


class RayExecutor:
    """Jobs as Ray tasks. ``address``: a running cluster (``ray start --head``), or None for a private local one.

    Without an address the driver starts a fresh Ray of its own (``address="local"``: never
    a cluster some earlier ``ray start`` left in ``/tmp/ray``), dashboard off, and shuts it
    down in :meth:`close`. Ray 2.60 binds its GCS and raylet to every interface whatever
    node address it is given (127.0.0.1 is rewritten to the node's IP); what guards those
    ports is Ray's token authentication, on by default since 2.5x (docs/sweeps.md).
    """

    name = "ray"

    def __init__(self, results_dir: Path, data_dir: Path | None, address: str | None = None, cpus_per_job: float = 1.0,
                 gpus_per_job: float | None = None, timeout_s: float | None = None) -> None:
        import ray

        self.ray = ray
        self.results_dir, self.data_dir, self.timeout_s = results_dir, data_dir, timeout_s
        self.owns_cluster = not ray.is_initialized() and address is None
        if not ray.is_initialized():
            ray.init(address=address or "local", include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
        if gpus_per_job is None:  # one GPU per job where the cluster has GPUs (Ray then sets the task's CUDA_VISIBLE_DEVICES)
            gpus_per_job = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
        self.gpus_per_job = gpus_per_job
        self.remote = ray.remote(num_cpus=cpus_per_job, num_gpus=gpus_per_job, max_retries=0)(_ray_attempt)
        self.refs: dict[object, Job] = {}

    def submit(self, job: Job) -> None:
        ref = self.remote.remote(job_command(job, self.results_dir, self.data_dir), None, self.timeout_s)
        self.refs[ref] = job

    def running(self) -> set[str]:
        """Run keys of the tasks Ray has submitted (it does not say cheaply which of them a worker has begun)."""
        return {job.run_key for job in self.refs.values()}

    def wait(self, timeout_s: float) -> list[tuple[Job, Attempt]]:
        if not self.refs:
            time.sleep(min(timeout_s, 0.1))
            return []
        ready, _ = self.ray.wait(list(self.refs), num_returns=1, timeout=timeout_s)
        out = []
        for ref in ready:
            job = self.refs.pop(ref)
            try:
                data = json.loads(self.ray.get(ref))
                data["row"] = None if data["row"] is None else ResultRow.model_validate(data["row"])
                out.append((job, Attempt(**data)))
            except Exception as exc:
                out.append((job, failed_attempt(exc)))
        return out

    def model_done(self, model: str) -> None:
        pass  # Ray tasks start their own servers on the node that runs them

    def close(self) -> None:
        for ref in list(self.refs):
            self.ray.cancel(ref, force=True)
        self.refs.clear()
        if self.owns_cluster:
            self.ray.shutdown()  # the local Ray this driver started, and only that one


def _ray_attempt(cmd: list[str], env: dict[str, str] | None, timeout_s: float | None) -> str:
    """Body of a Ray task: one attempt on whatever node Ray chose; JSON so no harness class crosses the wire."""
    a = run_attempt(cmd, env, timeout_s)
    return json.dumps({"ok": a.ok, "row": None if a.row is None else a.row.model_dump(mode="json"), "reason": a.reason,
                       "wall_s": a.wall_s, "where": a.where, "note": a.note})


def make_executor(name: str, results_dir: Path, data_dir: Path | None, concurrency: int | None = None, timeout_s: float | None = None,
                  address: str | None = None, cpus_per_job: float = 1.0, gpus_per_job: float | None = None) -> LocalExecutor | RayExecutor:
    """The executor ``pfmbench sweep --executor`` names; the local one ignores the Ray options and vice versa."""
    from harness.errors import ConfigError

    if name == "local":
        return LocalExecutor(results_dir, data_dir, concurrency=concurrency, timeout_s=timeout_s)
    if name == "ray":
        return RayExecutor(results_dir, data_dir, address=address, cpus_per_job=cpus_per_job, gpus_per_job=gpus_per_job, timeout_s=timeout_s)
    raise ConfigError(f"unknown executor '{name}'", "use local or ray")
