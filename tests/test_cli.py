"""The product as a user drives it: `pfmbench` in a subprocess, through a real Triton server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from waiting import wait_until

from harness.results.store import read_rows

from conftest import processes, server_processes

METRIC_COLUMNS = ("mIoU", "mDice", "mIoU_nobg", "mDice_nobg", "pixel_accuracy", "mIoU_ci_low", "mIoU_ci_high", "per_class_iou")


def pfmbench(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "harness.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = pfmbench(*args)
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_unknown_model_is_one_line_listing_the_models():
    res = run("bench", "--model", "nosuch", "--dataset", "nuclei-sample")
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: unknown model 'nosuch'; known models: ") and "phikon" in lines[0] and "uni" in lines[0]


def test_startup_timeout_is_an_option_and_a_server_too_slow_for_it_is_one_line_and_leaves_nothing(tmp_path, no_leftover_servers):
    res = run("bench", "-m", "phikon", "-d", "nuclei-sample", "--runtime", "local", "--startup-timeout", "1", "--no-progress",
              "--results-dir", str(tmp_path))
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "did not become healthy within 1 s" in lines[0] and "--startup-timeout" in lines[0], res.stderr
    assert read_rows(tmp_path) == []


def test_models_table_lists_the_zoo_with_image_and_weights_status(tmp_path):
    weights = tmp_path / "weights"
    (weights / "phikon").mkdir(parents=True)
    (weights / "phikon" / "model.safetensors").write_bytes(b"x")
    env = dict(os.environ, PFMBENCH_WEIGHTS=str(weights), DOCKER_HOST="unix:///nonexistent.sock")
    res = subprocess.run([sys.executable, "-m", "harness.cli", "models"], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    rows = {line.split()[1]: line for line in res.stdout.splitlines() if line.startswith("│")}
    assert len(rows) >= 22 and {"uni2_h", "virchow2", "h_optimus_1", "h0_mini", "conch", "musk", "ctranspath"} <= set(rows)
    for col in ("architecture", "params (M)", "licence", "gated", "image", "weights"):
        assert col in res.stdout
    assert "Swin-T" in rows["ctranspath"] and "GPL-3.0" in rows["ctranspath"] and "1134.8" in rows["h_optimus_0"]
    assert rows["phikon"].rstrip(" │").endswith("yes") and rows["uni"].rstrip(" │").endswith("no")  # weights cached?
    assert "no Docker daemon answered" in res.stdout
    show = run("models", "show", "conch")
    assert show.returncode == 0
    assert '"builder": "open_clip"' in show.stdout and "visual" in show.stdout and '"native_input": 448' in show.stdout


def test_bench_writes_one_row_and_is_deterministic(tmp_path, no_leftover_servers):
    """The fast tier's real served row: a Triton server as a local process, shared memory, decoder, metrics, one row."""
    args = ("bench", "-m", "phikon", "-d", "nuclei-sample", "--weights", "random", "--runtime", "local",
            "--epochs", "2", "--input-size", "96", "--seed", "7", "--no-progress", "--results-dir", str(tmp_path))
    first = run(*args)
    assert first.returncode == 0, first.stderr
    assert "mDice" in first.stdout and "neoplastic" in first.stdout and "untrained" in first.stdout
    # the same run key again is skipped: runs are keyed by what determines their numbers, not by where they ran
    inprocess = [("inprocess" if a == "local" else a) for a in args]
    skipped = run(*inprocess)
    assert skipped.returncode == 0 and "skipped" in skipped.stdout and len(read_rows(tmp_path)) == 1
    # --rerun runs it in-process (extracting again, not from the feature cache): served (shm) and in-process features give the same row
    second = run(*inprocess, "--rerun", "--no-feature-cache")
    assert second.returncode == 0, second.stderr
    rows = sorted(read_rows(tmp_path), key=lambda r: r["runtime"])
    assert len(rows) == 2
    b, a = rows  # inprocess, local
    for col in METRIC_COLUMNS:
        assert a[col] == b[col], col
    assert a["run_key"] == b["run_key"] and a["row_id"] != b["row_id"]
    assert a["weights"] == "random" and a["runtime"] == "local" and a["transfer"] == "shm"
    assert a["split_sizes"] == [25, 7, 4] and a["input_size"] == 96 and a["blocks"] == [11] and a["epochs"] == 2
    assert 0.0 <= a["mIoU"] <= 1.0 and a["mIoU_ci_low"] <= a["mIoU"] <= a["mIoU_ci_high"]
    # where it computed: --device auto is the CPU on a machine without a GPU, and the row says so
    import torch

    expected = "cuda:0" if torch.cuda.is_available() else "cpu"
    for r in rows:
        assert (r["device"], r["torch_version"], r["precision"]) == (expected, torch.__version__, "fp32" if expected == "cpu" else "fp16-autocast")
        assert (r["gpu_model"] is None) == (expected == "cpu")
        assert len(r["model_dockerfile_sha256"]) == 16 and r["model_dockerfile_committed"] in (True, False)  # this checkout is a git one
    assert f"device {expected}" in first.stdout
    listing = run("results", "--results-dir", str(tmp_path))
    assert listing.returncode == 0 and listing.stdout.count("phikon") == 2


def _server_child(parent: int) -> int | None:
    for pid, _, cmd in processes():
        if "harness.serve" in cmd:
            try:
                ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            if ppid == parent:
                return pid
    return None


def _start_and_wait_for_extraction(results: Path) -> subprocess.Popen:
    """Start a bench and return once features are flowing through shared memory."""
    proc = pfmbench("bench", "-m", "phikon", "-d", "synthetic-tissue", "--runtime", "local", "--epochs", "1",
                    "--no-progress", "--results-dir", str(results))
    def flowing() -> bool:
        assert proc.poll() is None, proc.communicate()[1]
        return bool(list(Path("/dev/shm").glob(f"pfm_{proc.pid}_*")))

    wait_until(flowing, 180, "features to flow through shared memory")
    return proc


@pytest.mark.slow
def test_server_killed_mid_run_fails_cleanly(tmp_path, no_leftover_servers):
    proc = _start_and_wait_for_extraction(tmp_path)
    server = _server_child(proc.pid)
    assert server is not None
    os.kill(server, signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "stopped (signal 9)" in lines[0], err
    assert read_rows(tmp_path) == []
    assert not list(Path("/dev/shm").glob(f"pfm_{proc.pid}_*"))


@pytest.mark.slow
def test_ctrl_c_mid_run_stops_the_server(tmp_path, no_leftover_servers):
    proc = _start_and_wait_for_extraction(tmp_path)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert read_rows(tmp_path) == []
    assert not [p for p in server_processes() if _server_child(proc.pid)]


@pytest.mark.slow
def test_bench_against_a_server_it_did_not_start(tmp_path, no_leftover_servers):
    """--endpoint: the harness uses a running server (as compose/serve.yml provides) and leaves it running."""
    from harness.runtime.local import server_env

    from conftest import free_port

    grpc = free_port()
    env = server_env("")
    env.pop("PFMBENCH_TRITON_TOKEN")  # an open server, as in compose/serve.yml
    server = subprocess.Popen([sys.executable, "-m", "harness.serve", "--model", "phikon", "--grpc-port", str(grpc),
                               "--http-port", str(free_port()), "--metrics-port", str(free_port())],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        res = run("bench", "-m", "phikon", "-d", "nuclei-sample", "--epochs", "1", "--no-progress",
                  "--endpoint", f"127.0.0.1:{grpc}", "--results-dir", str(tmp_path))
        assert res.returncode == 0, res.stderr
        assert server.poll() is None  # not ours to stop
        (row,) = read_rows(tmp_path)
        assert row["runtime"] == "endpoint" and row["transfer"] == "shm"
        assert row["image_digest"] is None  # a server outside an image reports no manifest (docker tier: one in an image does)
        wrong = run("bench", "-m", "uni", "-d", "nuclei-sample", "--epochs", "1", "--no-progress",
                    "--endpoint", f"127.0.0.1:{grpc}", "--results-dir", str(tmp_path))
        assert wrong.returncode == 1 and f"the server at 127.0.0.1:{grpc} serves 'phikon', not 'uni'" in wrong.stderr
        missing = run("bench", "-m", "phikon", "-d", "nuclei-sample", "--endpoint", f"127.0.0.1:{free_port()}", "--results-dir", str(tmp_path))
        assert missing.returncode == 1 and "no ready 'features' model at 127.0.0.1:" in missing.stderr
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_an_engine_that_cannot_apply_is_one_line():
    res = run("bench", "-m", "phikon", "-d", "nuclei-sample", "-s", "lora", "--engine", "onnx", "--no-progress")
    assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "--engine onnx runs the frozen extraction" in res.stderr


@pytest.mark.slow
def test_an_onnx_engine_row_has_its_own_key_and_cache_entries_and_says_so(tmp_path):
    args = ("bench", "-m", "phikon", "-d", "nuclei-sample", "--weights", "random", "--runtime", "inprocess", "--epochs", "1",
            "--input-size", "64", "--seed", "7", "--no-progress", "--results-dir", str(tmp_path))
    env = {**os.environ, "PFMBENCH_FEATURES": str(tmp_path / "features"), "PFMBENCH_ONNX": str(tmp_path / "onnx")}
    for extra in ((), ("--engine", "onnx")):
        res = subprocess.run([sys.executable, "-m", "harness.cli", *args, *extra], capture_output=True, text=True, timeout=900, env=env)
        assert res.returncode == 0, res.stderr
    torch_row, onnx_row = sorted(read_rows(tmp_path), key=lambda r: r["engine"] != "torch")
    assert (torch_row["engine"], onnx_row["engine"]) == ("torch", "onnx") and torch_row["run_key"] != onnx_row["run_key"]
    assert "engine onnx" in res.stdout
    # val and test of each engine: nothing shared (the augmented training batches go through the model online, uncached)
    assert len([d for d in (tmp_path / "features").iterdir() if (d / "meta.json").exists()]) == 4
    assert abs(torch_row["mDice"] - onnx_row["mDice"]) < 0.05  # the same decoder on features within fp16 rounding
