"""`pfmbench perf`: every transfer mode measured side by side, the cache's epoch speed-up, streaming RSS."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from harness.perf.transfer import cache_epoch_perf, run_perf, stream_rss_perf


@pytest.mark.slow
def test_every_served_mode_is_measured_against_in_process(no_leftover_servers):
    report = run_perf(["lunit_vits8"], [2], [64], modes=("inprocess", "shm", "grpc", "http"), iters=2, log=lambda _: None)
    by_mode = {r.mode: r for r in report.transfer}
    assert sorted(by_mode) == ["grpc", "http", "inprocess", "shm"]
    assert by_mode["inprocess"].ratio_to_inprocess == 1.0
    out_mb = 2 * (8 * 8 * 384 + 384) * 2 / 1e6  # fp16 tokens [2, 1, 8, 8, 384] and cls [2, 1, 384] per call
    for r in report.transfer:
        assert r.error is None and r.rounds == 3  # three interleaved rounds (A B C D A B C D ...), two timed calls each
        assert r.images_per_s > 0 and r.p50_ms <= r.p90_ms <= r.p99_ms
        assert r.images_per_s_min <= r.images_per_s <= r.images_per_s_max
        assert r.ratio_min <= r.ratio_to_inprocess <= r.ratio_max  # the median of per-round ratios, with its spread
        assert abs(r.out_mb_per_s - out_mb / (r.p50_ms / 1e3)) < 1e-6 * r.out_mb_per_s + 1e-9
        assert r.max_abs_diff is not None and r.max_abs_diff <= 1e-3


@pytest.mark.slow
def test_the_onnx_export_run_by_onnxruntime_matches_eager_torch_in_process_and_served(no_leftover_servers):
    report = run_perf(["lunit_vits8"], [3], [64], modes=("inprocess", "onnx", "onnx-shm"), iters=1, log=lambda _: None)
    by_mode = {r.mode: r for r in report.transfer}
    assert by_mode["inprocess"].max_abs_diff == 0.0
    for mode in ("onnx", "onnx-shm"):  # fp16 outputs of layer-normed tokens: a few units in the last place
        assert 0.0 <= by_mode[mode].max_abs_diff <= 1e-2, (mode, by_mode[mode].max_abs_diff)
        assert by_mode[mode].images_per_s > 0


@pytest.mark.slow
def test_torch_compile_matches_eager_torch():
    report = run_perf(["lunit_vits8"], [2], [32], modes=("inprocess", "compile"), iters=1, log=lambda _: None)
    compiled = next(r for r in report.transfer if r.mode == "compile")
    assert compiled.max_abs_diff is not None and compiled.max_abs_diff <= 1e-2 and compiled.images_per_s > 0


@pytest.mark.slow
def test_streaming_into_the_cache_keeps_the_harness_memory_flat(tmp_path, no_leftover_servers):
    """256 images' grids (154 MB) go to disk; if they were held, RSS would grow by that much."""
    res = stream_rss_perf("lunit_vits8", images=256, size=224, batch=16, blocks=(0,), cache_dir=tmp_path, log=lambda _: None)
    assert res["written_gb"] == round(256 * 28 * 28 * 384 * 2 / 1e9, 3)
    assert res["rss_growth_after_first_tenth_mb"] < 50, res["rss_samples"]
    assert list(tmp_path.iterdir()) == []  # the cache entry is removed afterwards


def test_a_decoder_epoch_from_the_cache_is_timed_against_online_extraction():
    (res,) = cache_epoch_perf("lunit_vits8", size=64, repeats=1, decoders=("linear",), log=lambda _: None)
    assert res["images"] == 25 and res["decoder"] == "linear" and res["epoch_cached_s"] > 0
    assert res["cache_mb"] == round(25 * 8 * 8 * 384 * 2 / 1e6, 1)
    assert np.isclose(res["speedup"], res["epoch_online_s"] / res["epoch_cached_s"], rtol=0.05)
    # how much faster is a measurement of `make perf` (docs/performance.md), not a unit-test threshold


@pytest.mark.slow
def test_perf_cli_writes_json_and_prints_the_table(tmp_path, no_leftover_servers):
    out = tmp_path / "perf.json"
    res = subprocess.run([sys.executable, "-m", "harness.cli", "perf", "--models", "lunit_vits8", "--batches", "2", "--sizes", "64",
                          "--modes", "inprocess,shm", "--iters", "1", "--no-cache-epoch", "--stream-images", "32", "--stream-size", "64",
                          "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr
    doc = json.loads(out.read_text())
    assert [r["mode"] for r in doc["results"]] == ["inprocess", "shm"] and doc["cache"] is None
    assert doc["stream"]["images"] == 32 and doc["meta"]["cpu_count"]
    assert "vs in-process" in res.stdout and "harness RSS peak" in res.stdout


def test_a_mode_that_fails_records_its_error_the_others_are_measured_and_the_json_is_written(tmp_path, no_leftover_servers):
    """A local server that cannot become healthy in 1 s: its cell holds the error, in-process is still measured, exit 1 after the JSON."""
    out = tmp_path / "perf.json"
    res = subprocess.run([sys.executable, "-m", "harness.cli", "perf", "--models", "lunit_vits8", "--batches", "2", "--sizes", "32",
                          "--modes", "inprocess,shm", "--no-cache-epoch", "--stream-images", "0", "--out", str(out)],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "PFMBENCH_STARTUP_TIMEOUT": "1"})
    assert res.returncode == 1, res.stderr
    by_mode = {r["mode"]: r for r in json.loads(out.read_text())["results"]}
    assert by_mode["inprocess"]["error"] is None and by_mode["inprocess"]["images_per_s"] > 0 and by_mode["inprocess"]["rounds"] == 3
    assert "did not become healthy within 1 s" in by_mode["shm"]["error"] and by_mode["shm"]["images_per_s"] == 0.0
    assert "error: ServerError" in res.stdout


def test_an_unknown_mode_is_a_one_line_error():
    res = subprocess.run([sys.executable, "-m", "harness.cli", "perf", "--modes", "inprocess,carrier-pigeon"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 1
    assert "stream" not in res.stdout  # refused before any measurement
    assert "unknown perf mode 'carrier-pigeon'" in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr


@pytest.mark.slow
def test_the_fp16_graph_a_gpu_runs_matches_eager_torch_within_half_precision(tmp_path):
    """The CUDA provider's graph, run here by the CPU provider: weights in fp16, the same features within fp16 rounding."""
    import onnx

    from harness.models.builders import build_extractor
    from harness.models.spec import get_spec
    from harness.models.weights import ResolvedWeights
    from harness.serve.onnx import OnnxExtractor

    spec, weights = get_spec("lunit_vits8"), ResolvedWeights.random(0)
    extractor = build_extractor(spec, weights).eval()
    images = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    want, _ = extractor.extract(images)
    half = OnnxExtractor(extractor, weights, "cpu", directory=tmp_path, fp16=True)
    got, _ = half.extract(images)
    (graph,) = tmp_path.glob("*/fp16/model.onnx")
    initializers = onnx.load(str(graph), load_external_data=False).graph.initializer
    assert {onnx.TensorProto.DataType.Name(t.data_type) for t in initializers if t.dims and np.prod(t.dims) > 1000} == {"FLOAT16"}
    diff = float(np.abs(got.astype(np.float32) - want.astype(np.float32)).max())
    assert got.dtype == np.float16 and got.shape == want.shape and 0 < diff <= 0.05 * float(np.abs(want).max()), diff
    assert OnnxExtractor(extractor, weights, "cpu", directory=tmp_path).fp16 is False  # a CPU runs the fp32 graph
