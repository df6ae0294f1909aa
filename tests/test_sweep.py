"""`pfmbench sweep`: local and Ray executors, skip/resume, retries after killed workers and servers,
exactly one row per run key, a failing results write, and the compute plan."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from waiting import wait_until

from harness.models.spec import get_spec
from harness.results.store import read_rows
from harness.sweep.executors import LocalExecutor
from harness.sweep.grid import SweepSpec, expand, load_spec
from harness.sweep.runner import run_sweep

from conftest import free_port, processes, server_processes

TINY = {"epochs": 1, "input_size": 32}
GRID = SweepSpec(models=["phikon", "lunit_vits8"], datasets=["nuclei-sample"], strategies=["frozen", "lora"],
                 runtime="inprocess", overrides=TINY, retries=2)


def _events(res) -> list[dict]:
    return [json.loads(line) for line in res.events.read_text().splitlines()]


def _by_key(rows: list[dict]) -> dict[str, dict]:
    keys = [r["run_key"] for r in rows]
    assert len(keys) == len(set(keys)), "a run key has more than one row"
    return {r["run_key"]: r for r in rows}


@pytest.mark.ray
def test_without_an_address_the_ray_executor_starts_and_stops_a_private_cluster(tmp_path, monkeypatch):
    """Never a cluster someone else started (RAY_ADDRESS points at a dead one here), no dashboard UI, nothing left after close."""
    import ray

    from harness.sweep.executors import RayExecutor

    ray.shutdown()
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{free_port()}")
    before = {p[0] for p in processes()}
    executor = RayExecutor(tmp_path, None)
    try:
        assert executor.owns_cluster and ray.is_initialized()
        assert executor.gpus_per_job == (1.0 if ray.cluster_resources().get("GPU", 0) else 0.0)  # one GPU per job where there are GPUs
        mine = [cmd for pid, _, cmd in processes() if pid not in before]
        assert any("gcs_server" in c for c in mine) and any("raylet" in c for c in mine), mine
        # Ray keeps a minimal dashboard head for its state API: no web UI, loopback only
        assert all("--minimal" in c and "--disable-frontend" in c and "--host=127.0.0.1" in c for c in mine if "dashboard.py" in c), mine
    finally:
        executor.close()
    assert not ray.is_initialized()
    wait_until(lambda: not [p for p in processes() if p[0] not in before], 60, "the private Ray's processes to exit")


@pytest.fixture(scope="module")
def ray_cluster():
    """A real local Ray cluster with 2 worker slots, started with `ray start --head` (node address 127.0.0.1; Ray 2.60 binds all interfaces anyway).

    The cluster and this session's drivers both run with ``RAY_AUTH_MODE=token``, as
    docs/sweeps.md tells a user: left unset, Ray 2.60's ``ray start`` and a driver that
    connects by address may disagree on whether a token is needed (measured here: the
    driver failed with ``InvalidAuthToken``).
    """
    ray_bin = str(Path(sys.executable).parent / "ray")
    port = free_port()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_AUTH_MODE", "token")
        start = subprocess.run([ray_bin, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
                                "--include-dashboard=false", "--object-store-memory=200000000", "--disable-usage-stats"],
                               capture_output=True, text=True, timeout=180)
        assert start.returncode == 0, start.stdout + start.stderr
        yield f"127.0.0.1:{port}"
    import ray

    ray.shutdown()
    # `ray stop` would stop every Ray cluster on the host: stop only the processes this session started
    ours = [pid for pid, _, cmd in processes() if "ray" in cmd or "gcs_server" in cmd or "raylet" in cmd]
    for pid in ours:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    wait_until(lambda: not {p[0] for p in processes()} & set(ours), 30, "this session's Ray processes to exit")


@pytest.mark.ray
@pytest.mark.slow
def test_local_and_ray_sweeps_agree_and_a_rerun_skips_everything(tmp_path, ray_cluster, no_leftover_servers):
    from harness.sweep.executors import RayExecutor

    local = run_sweep(GRID, LocalExecutor(tmp_path / "local", None, concurrency=2), tmp_path / "local")
    assert (local.count("done"), local.count("failed")) == (4, 0), [(s.job.label, s.reason) for s in local.states]
    ray_res = run_sweep(GRID, RayExecutor(tmp_path / "ray", None, address=ray_cluster), tmp_path / "ray")
    assert (ray_res.count("done"), ray_res.count("failed")) == (4, 0), [(s.job.label, s.reason) for s in ray_res.states]
    a, b = _by_key(read_rows(tmp_path / "local")), _by_key(read_rows(tmp_path / "ray"))
    assert sorted(a) == sorted(b) and len(a) == 4
    for key in a:
        for m in ("mIoU", "mDice", "best_val", "per_class_iou", "trainable_params"):
            assert a[key][m] == b[key][m], (a[key]["model"], a[key]["strategy"], m)
    assert len([e for e in _events(local) if e["event"] == "started"]) == 4  # no retries were needed
    assert {e["where"] for e in _events(ray_res) if e["event"] == "done"} == {os.uname().nodename}
    again = run_sweep(GRID, LocalExecutor(tmp_path / "local", None), tmp_path / "local")
    assert again.count("skipped") == 4 and len(read_rows(tmp_path / "local")) == 4


def _kill_once(target, tmp_path: Path, stop: threading.Event, after_s: float = 1.0) -> threading.Thread:
    """Background killer: SIGKILL the process ``target()`` names (a pid, once there is one), ``after_s`` after it appears.

    ``target`` is a command-line fragment (the first process of this test session that has it) or a callable.
    The delay places the kill part-way through the job; it is not a wait for an event.
    """
    if isinstance(target, str):
        fragment = target
        target = lambda: next((pid for pid, _, cmd in processes() if fragment in cmd), None)  # noqa: E731

    def run() -> None:
        while not stop.is_set():
            pid = target()
            if pid is None:
                stop.wait(0.02)
                continue
            stop.wait(after_s)
            try:
                os.kill(pid, signal.SIGKILL)
                (tmp_path / "killed").write_text(str(pid))
                return
            except ProcessLookupError:
                continue

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _features_flowing() -> bool:
    """A job of this session is reading features from the shared server: its shared-memory region exists."""
    return any(Path("/dev/shm").glob(f"pfm_{pid}_*") for pid, _, cmd in processes() if "sweep-job" in cmd)


@pytest.mark.slow
def test_a_killed_job_and_a_killed_server_are_retried_and_complete(tmp_path, no_leftover_servers):
    # full-size inputs: extraction lasts seconds, so the kill lands while features flow
    spec = SweepSpec(models=["phikon"], datasets=["nuclei-sample"], strategies=["frozen"], seeds=[1, 2], runtime="local", overrides={"epochs": 1})
    stop = threading.Event()
    # the shared server dies under a job reading features from it: that job fails, the server is restarted, the job retried
    ex = LocalExecutor(tmp_path / "res", None)

    def server_while_features_flow() -> int | None:
        server = ex.servers.get(("phikon", None, "fp16", get_spec("phikon").spec_hash()))  # no GPU here: the one server of the model
        return server.proc.pid if server is not None and server.proc is not None and _features_flowing() else None  # type: ignore[attr-defined]

    killer = _kill_once(server_while_features_flow, tmp_path, stop, after_s=0.0)
    res = run_sweep(spec, ex, tmp_path / "res")
    stop.set()
    killer.join(5)
    assert (tmp_path / "killed").exists() and res.count("done") == 2, [(s.job.label, s.reason) for s in res.states]
    retries = [e for e in _events(res) if e["event"] == "retry"]
    assert retries and all(e["reason"] for e in retries)

    stop = threading.Event()
    (tmp_path / "killed").unlink()
    killer = _kill_once("sweep-job", tmp_path, stop, after_s=1.0)  # a worker (the job's process) is killed
    spec2 = spec.model_copy(update={"seeds": [3]})
    res2 = run_sweep(spec2, LocalExecutor(tmp_path / "res", None), tmp_path / "res")
    stop.set()
    killer.join(5)
    assert (tmp_path / "killed").exists() and res2.count("done") == 1
    assert any(e["event"] == "retry" and "killed by signal 9" in e["reason"] for e in _events(res2))
    assert len(_by_key(read_rows(tmp_path / "res"))) == 3


@pytest.mark.ray
@pytest.mark.slow
def test_a_killed_ray_worker_is_retried(tmp_path, ray_cluster):
    from harness.sweep.executors import RayExecutor

    spec = SweepSpec(models=["lunit_vits8"], datasets=["nuclei-sample"], strategies=["lora"], runtime="inprocess", overrides=TINY)
    stop = threading.Event()
    killer = _kill_once("ray::_ray_attempt", tmp_path, stop, after_s=1.0)
    res = run_sweep(spec, RayExecutor(tmp_path / "res", None, address=ray_cluster), tmp_path / "res")
    stop.set()
    killer.join(5)
    assert (tmp_path / "killed").exists(), "no Ray worker ran the task"
    assert res.count("done") == 1 and res.states[0].attempts == 2
    assert len(read_rows(tmp_path / "res")) == 1


@pytest.mark.slow
def test_killing_the_driver_then_rerunning_skips_finished_and_resumes_partial_jobs(tmp_path, no_leftover_servers):
    grid = tmp_path / "grid.yaml"
    grid.write_text("models: [phikon]\ndatasets: [nuclei-sample]\nstrategies: [frozen, lora]\nruntime: inprocess\n"
                    "overrides: {epochs: 4, input_size: 64}\n")
    res = tmp_path / "res"
    args = [sys.executable, "-m", "harness.cli", "sweep", str(grid), "--results-dir", str(res), "--no-progress"]
    driver = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def partway() -> bool:  # frozen stored, lora part-way
        assert driver.poll() is None, driver.communicate()
        return bool(read_rows(res) and list(res.glob("runs/*/checkpoint.pt")))

    wait_until(partway, 600, "the frozen row and a LoRA checkpoint")
    driver.kill()
    driver.wait()
    wait_until(lambda: not any("sweep-job" in p[2] for p in processes()), 15, "the jobs to die with their driver")
    assert len(read_rows(res)) == 1
    again = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "1 done, 1 skipped, 0 failed" in again.stdout
    events = [json.loads(x) for x in next(res.glob("sweeps/*/events.jsonl")).read_text().splitlines()]
    assert any(e["event"] == "done" and "resuming run" in e.get("note", "") for e in events)
    rows = _by_key(read_rows(res))
    assert sorted(r["strategy"] for r in rows.values()) == ["frozen", "lora"]


def test_an_unwritable_store_fails_before_any_job_runs(tmp_path):
    res = subprocess.run([sys.executable, "-m", "harness.cli", "sweep", "-m", "phikon", "-d", "nuclei-sample", "--results-dir", "/proc/pfmbench-results",
                          "--no-progress"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "is not writable" in res.stderr and "--results-dir" in res.stderr and "Traceback" not in res.stderr


def test_a_failing_row_write_is_a_clear_error_and_keeps_the_stored_rows(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    from harness.errors import ResultsError

    store = tmp_path / "res"
    spec = SweepSpec(models=["lunit_vits8"], datasets=["nuclei-sample"], strategies=["frozen"], seeds=[1], runtime="inprocess", overrides=TINY)
    assert run_sweep(spec, LocalExecutor(store, None), store).count("done") == 1
    before = {p.name: p.read_bytes() for p in (store / "rows").iterdir()}
    real = pq.write_table

    def disk_full(table, where, **kw):  # the row's file object: half a row, then a full disk
        where.write(b"PAR1 torn")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pq, "write_table", disk_full)
    with pytest.raises(ResultsError, match="No space left on device"):
        run_sweep(spec.model_copy(update={"seeds": [2]}), LocalExecutor(store, None), store)
    monkeypatch.setattr(pq, "write_table", real)
    after = {p.name: p.read_bytes() for p in (store / "rows").iterdir()}
    assert after == before  # nothing torn, nothing lost, no temporary file left
    assert len(read_rows(store)) == 1


def test_grid_file_errors_and_duplicate_cells(tmp_path):
    from harness.errors import ConfigError

    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [phikon]\ndatasets: [nuclei-sample]\nstrategy: [lora]\n")
    with pytest.raises(ConfigError, match="strategy"):
        load_spec(bad)
    same = SweepSpec(models=["phikon", "phikon"], datasets=["nuclei-sample"], runtime="inprocess", overrides=TINY)
    assert len(expand(same)) == 1  # one run key, one job


def test_plan_counts_backbone_passes_from_cards_and_perf(tmp_path):
    from harness.sweep.plan import _decoder_flops, _flops, plan_sweep

    perf = tmp_path / "zoo.json"
    perf.write_text(json.dumps({"results": [{"model": "phikon", "size": 224, "images_per_s": 100.0}]}))
    spec = SweepSpec(models=["phikon"], datasets=["pannuke"], strategies=["frozen", "lora", "cnn_adapter"], runtime="inprocess", overrides={"epochs": 10})
    est = plan_sweep(spec, perf, devices=4, overhead_s=0.0)
    jobs = {j.strategy: j for j in est.jobs}
    n = 7901  # PanNuke's card; 70/20/10 -> 5531 / 1580 / 790
    size = 256  # PanNuke at patch 16
    # the decoder trains in every job: 3 passes per train image and 1 per val image each epoch, in backbone forward-equivalents
    decoder = _decoder_flops("transunet", 768, 1, 6, 16, size) / _flops("phikon", size)
    assert 0 < decoder < 1
    decoder_epochs = decoder * 10 * (5531 * 3 + 1580)
    # densebench augments: a frozen job extracts val and test once, the augmented training batches in every epoch
    assert jobs["frozen"].forwards == round(1580 + 790 + 10 * 5531 + decoder_epochs)
    plain = plan_sweep(spec.model_copy(update={"strategies": ["frozen"], "overrides": {"epochs": 10, "augment": "none"}}), perf, overhead_s=0.0)
    assert plain.jobs[0].forwards == round(n + decoder_epochs) > n  # without augmentation: every split once, to the cache
    assert jobs["lora"].forwards == round(10 * (5531 * 3 + 1580) + 790 + decoder_epochs)
    assert jobs["cnn_adapter"].forwards == round(10 * (5531 + 1580) + 790 + decoder_epochs)
    assert jobs["frozen"].hours == pytest.approx(jobs["frozen"].forwards * (size / 224) ** 2 / 100 / 3600)
    assert est.unknown_counts == []
    # one job runs on one device: the wall time is the longest job (LoRA here), not a quarter of the total
    assert est.longest_hours == jobs["lora"].hours > est.total_hours / 4
    assert est.wall_hours == pytest.approx(est.longest_hours)
    even = plan_sweep(spec.model_copy(update={"strategies": ["frozen"], "seeds": [1, 2, 3, 4, 5, 6, 7, 8]}), perf, devices=4, overhead_s=0.0)
    assert even.wall_hours == pytest.approx(even.total_hours / 4)  # eight equal jobs on four devices: two rounds
    with_overhead = plan_sweep(spec, perf, devices=4, overhead_s=36.0)
    assert with_overhead.total_hours == pytest.approx(est.total_hours + 3 * 0.01)
    cli = subprocess.run([sys.executable, "-m", "harness.cli", "sweep", "-m", "phikon", "-d", "pannuke", "-s", "frozen,lora", "--epochs", "10",
                          "--runtime", "inprocess", "--plan", "--perf", str(perf)], capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0 and "device-hours" in cli.stdout and "lora" in cli.stdout and "most expensive" in cli.stdout
    # a measured train-perf rate replaces the 3-forwards estimate of a training job's steps (scaled by token count)
    train_perf = tmp_path / "train.json"
    train_perf.write_text(json.dumps({"results": [{"model": "phikon", "strategy": "lora", "size": 224, "images_per_s": 10.0}]}))
    measured = {j.strategy: j for j in plan_sweep(spec, perf, devices=4, overhead_s=0.0, train_perf_json=train_perf).jobs}
    steps_s = 10 * 5531 * (size / 224) ** 2 / 10.0
    others_s = (10 * 1580 + 790 + decoder * 10 * 1580) * (size / 224) ** 2 / 100
    assert measured["lora"].hours == pytest.approx((steps_s + others_s) / 3600, rel=1e-3)
    assert measured["frozen"].hours == jobs["frozen"].hours and measured["cnn_adapter"].hours == jobs["cnn_adapter"].hours  # not measured: as before
    # a card that states no file count is named, not added as a silent zero
    unknown = plan_sweep(SweepSpec(models=["phikon"], datasets=["cosas24", "pannuke"], runtime="inprocess"), perf, overhead_s=0.0)
    assert unknown.unknown_counts == ["phikon / cosas24 / frozen / 42"]
    cli = subprocess.run([sys.executable, "-m", "harness.cli", "sweep", "-m", "phikon", "-d", "cosas24", "--runtime", "inprocess", "--plan", "--perf", str(perf)],
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0 and "not counted: 1 job(s) on cards that state no file count (phikon / cosas24 / frozen / 42)" in " ".join(cli.stdout.split())


CTRL_C_CASES = {
    # one LoRA job computing in its own process
    "lora-inprocess": (["-s", "lora", "--epochs", "50", "--runtime", "inprocess"], 1),
    # two frozen jobs extracting through the sweep's shared local Triton server: it is interrupted (reaped), not drained
    "frozen-shared-server": (["-s", "frozen", "--epochs", "200", "--seeds", "1,2", "--runtime", "local"], 2),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CTRL_C_CASES))
def test_ctrl_c_stops_the_sweep_and_its_jobs_at_once(case, tmp_path, no_leftover_servers):
    extra, n_jobs = CTRL_C_CASES[case]
    args = [sys.executable, "-m", "harness.cli", "sweep", "-m", "phikon", "-d", "nuclei-sample", "--input-size", "64",
            "--results-dir", str(tmp_path), "--no-progress", *extra]
    driver = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def working() -> bool:
        assert driver.poll() is None, driver.communicate()
        if case == "lora-inprocess":
            return bool(list(tmp_path.glob("runs/*/checkpoint.pt")))
        events = list(tmp_path.glob("sweeps/*/events.jsonl"))
        started = bool(events) and any(json.loads(line)["event"] == "started" for line in events[0].read_text().splitlines())
        return started and bool(server_processes())

    wait_until(working, 300, "the jobs to be working")
    driver.send_signal(signal.SIGINT)
    stdout, _ = driver.communicate(timeout=60)  # a guard against a hang; the jobs alone would run for minutes
    assert driver.returncode == 130
    assert not any("sweep-job" in p[2] for p in processes())
    assert not server_processes()
    assert read_rows(tmp_path) == []
    text = " ".join(stdout.split())
    assert "interrupted sweep" in text and "0 done" in text and f"{n_jobs} stopped (no row)" in text and "The same command resumes" in text
    (events,) = tmp_path.glob("sweeps/*/events.jsonl")
    kinds = [json.loads(line)["event"] for line in events.read_text().splitlines()]
    # one job at a time without a GPU: the first started, the second still queued; every one ends interrupted
    assert kinds == ["queued"] * n_jobs + ["started"] + ["interrupted"] * n_jobs, kinds


@pytest.mark.slow
def test_local_jobs_are_placed_one_per_gpu_and_a_finished_job_frees_its_gpu(tmp_path):
    """GPUs 5 and 7 (ids only: this machine has none, so the jobs compute on the CPU): each job sees one, two at a time."""
    spec = SweepSpec(models=["phikon"], datasets=["nuclei-sample"], strategies=["frozen"], seeds=[1, 2, 3], runtime="inprocess", overrides=TINY)
    ex = LocalExecutor(tmp_path / "res", None, gpus=[5, 7])
    assert ex.concurrency == 2
    seen: dict[int, str] = {}  # job pid -> its CUDA_VISIBLE_DEVICES
    most_at_once = 0

    def visible(pid: int) -> str | None:
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            return None
        return next((v.split(b"=", 1)[1].decode() for v in env if v.startswith(b"CUDA_VISIBLE_DEVICES=")), None)

    for job in expand(spec):
        ex.submit(job)
    attempts = []
    try:
        while len(attempts) < 3:
            live = {p.pid for p in list(ex.live)}
            most_at_once = max(most_at_once, len(live))
            for pid in live - set(seen):
                if (gpu := visible(pid)) is not None:
                    seen[pid] = gpu
            attempts += ex.wait(0.2)
    finally:
        ex.close()
    assert all(a.ok for _, a in attempts), [a.reason for _, a in attempts]
    assert set(seen.values()) == {"5", "7"} and len(seen) == 3
    assert most_at_once <= 2 and sorted(ex.free_gpus) == [5, 7]  # every GPU came back
    assert {a.row.device for _, a in attempts if a.row} == {"cpu"}  # no GPU 5 or 7 here: --device auto found none


@pytest.mark.slow
def test_frozen_jobs_on_two_gpus_get_one_shared_server_per_gpu_started_on_that_gpu(tmp_path, no_leftover_servers):
    """GPUs 5 and 7 (ids only): each job's shared server is started for its GPU; here that start is the one-line device error."""
    spec = SweepSpec(models=["phikon"], datasets=["nuclei-sample"], strategies=["frozen"], seeds=[1, 2], runtime="local", overrides=TINY)
    ex = LocalExecutor(tmp_path / "res", None, gpus=[5, 7])
    attempts = []
    try:
        for job in expand(spec):
            ex.submit(job)
        while len(attempts) < 2:
            attempts += ex.wait(0.2)
        phikon = get_spec("phikon").spec_hash()
        assert set(ex.servers) == {("phikon", 5, "fp16", phikon), ("phikon", 7, "fp16", phikon)} and ex.server_starts == 0  # two tried, none came up
        assert all(s.device in ("cuda:5", "cuda:7") for s in ex.servers.values())  # type: ignore[attr-defined]
    finally:
        ex.close()
    # the servers asked for CUDA on a machine without it: each failed with the device error, never a silent CPU server
    assert all(not a.ok and "sees no CUDA device" in a.reason for _, a in attempts), [a.reason for _, a in attempts]
    assert sorted(ex.free_gpus) == [5, 7] and not ex.servers  # both GPUs came back; no server left


@pytest.mark.slow
def test_off_a_terminal_jobs_waiting_for_a_slot_are_queued_not_running(tmp_path):
    """Three jobs, one slot: the plain lines (stderr is a pipe here) show one running and two queued, then each in turn."""
    args = [sys.executable, "-m", "harness.cli", "sweep", "-m", "phikon", "-d", "nuclei-sample", "--seeds", "1,2,3", "--epochs", "1",
            "--input-size", "32", "--runtime", "inprocess", "--concurrency", "1", "--results-dir", str(tmp_path)]
    res = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    lines = [line for line in res.stderr.splitlines() if " | sweep | " in line]
    assert all(re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \| sweep \| ", line) for line in lines), lines
    first_running = next(line for line in lines if line.split(" | ")[2].endswith(" running"))
    assert "running 1 queued 2" in first_running, lines  # one slot: the others wait, and say so
    assert sum(line.split(" | ")[2].endswith(" done") for line in lines) == 3 and "done 3" in lines[-1]
