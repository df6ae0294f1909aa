"""``make gpu-check`` is prepared here, where there is no GPU: its plan rehearsed at toy sizes, its failures contained, its refusal one line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from harness.perf.gpu_check import FORWARD_MODELS, Plan, _cell, table_rows
from harness.util.devices import cuda_devices


def test_a_failed_cell_records_its_error_and_the_next_cell_runs():
    logged: list[str] = []
    failed = _cell("forward", {"arch": "ViT-g/14"}, lambda: {"x": 1 / 0}, logged.append)
    assert failed["error"] == "ZeroDivisionError: division by zero" and "Traceback" in failed["traceback"]
    ok = _cell("lora", {"model": "uni", "batch": 16}, lambda: {"step_s": 0.5, "images_per_s": 32.0, "trainable_params": 1, "peak_mem_mb": 9.0},
               logged.append)
    assert ok["error"] is None and ok["step_s"] == 0.5 and len(logged) == 2
    assert table_rows({"cells": [failed, ok]}) == [("forward", "ViT-g/14", "error: ZeroDivisionError: division by zero"),
                                                   ("lora", "uni b16", "0.500 s/step, 9 MB")]


def test_the_gpu_plan_covers_the_architectures_the_targets_name():
    plan = Plan("cuda:0")
    assert set(plan.forward_models) == {"ViT-B/16", "ViT-L/16", "ViT-H/14", "ViT-g/14"} == set(FORWARD_MODELS)
    assert plan.engines == ("torch", "compile") and plan.forward_batch == 64 and plan.size == 224
    assert plan.served_model == "uni" and plan.served_batch == 64 and {"inprocess", "shm", "grpc"} <= set(plan.served_modes)


@pytest.mark.skipif(cuda_devices() > 0, reason="a GPU machine runs the real check (make gpu-check) instead")
def test_gpu_check_on_cuda_without_a_gpu_is_one_line(tmp_path):
    res = subprocess.run([sys.executable, "-m", "harness.cli", "gpu-check", "--out", str(tmp_path / "gc.json")], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1 and "sees no CUDA device" in res.stderr, res.stderr
    assert not (tmp_path / "gc.json").exists()


@pytest.mark.slow
def test_the_cpu_rehearsal_runs_every_section_and_writes_the_json(tmp_path, no_leftover_servers):
    out = tmp_path / "gc.json"
    res = subprocess.run([sys.executable, "-m", "harness.cli", "gpu-check", "--device", "cpu", "--out", str(out)], capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 0, res.stderr
    report = json.loads(out.read_text())
    assert report["meta"]["device"] == "cpu" and report["meta"]["peak_bf16_tflops"] is None
    cells = {c["section"]: c for c in report["cells"]}
    assert set(cells) == {"forward", "served", "bench", "lora"}
    assert all(c["error"] is None for c in report["cells"]), [c["error"] for c in report["cells"]]
    assert cells["forward"]["images_per_s"] > 0 and cells["forward"]["mfu"] is None  # no peak on a CPU: no MFU
    assert [m["mode"] for m in cells["served"]["modes"]] == ["inprocess", "shm"] and cells["served"]["modes"][1]["max_abs_diff"] == 0.0
    assert cells["bench"]["device"] == "cpu" and cells["bench"]["precision"] == "fp32" and 0 <= cells["bench"]["mDice"] <= 1
    assert cells["lora"]["trainable_params"] > 0 and cells["lora"]["step_s"] > 0
    assert "gpu-check on cpu (rehearsal)" in res.stdout
