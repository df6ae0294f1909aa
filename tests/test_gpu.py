"""What only a GPU can show: the half-precision extraction, the GPU engines, a row computed on CUDA.

Marked ``gpu``: the fast tier deselects them, and everywhere else they skip with that
reason on a machine without CUDA. ``make gpu-check`` runs them after its figures.
"""

from __future__ import annotations

import numpy as np
import pytest

from harness.models.builders import build_extractor
from harness.models.spec import get_spec
from harness.models.weights import ResolvedWeights
from harness.util.devices import cuda_devices

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(cuda_devices() == 0, reason="needs a CUDA device (make gpu-check runs these on one)")]

IMAGES = np.random.default_rng(0).integers(0, 256, (4, 224, 224, 3), dtype=np.uint8)


def _relative_gap(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got.astype(np.float32) - want.astype(np.float32)).max() / np.abs(want.astype(np.float32)).max())


@pytest.fixture(scope="module")
def cpu_features() -> np.ndarray:
    """uni's fp32 features on the CPU: what every GPU path is held against."""
    return build_extractor(get_spec("uni"), ResolvedWeights.random(0)).eval().extract(IMAGES)[0]


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_half_precision_extraction_on_the_gpu_matches_the_cpus_fp32(dtype, cpu_features):
    from harness.serve.engines import build_engine

    got, _ = build_engine(get_spec("uni"), ResolvedWeights.random(0), "cuda:0", "torch", dtype).extract(IMAGES)
    assert got.dtype == np.float16 and got.shape == cpu_features.shape
    assert _relative_gap(got, cpu_features) < (0.02 if dtype == "fp16" else 0.05)


@pytest.mark.parametrize("engine", ["compile", "onnx"])
def test_the_gpu_engines_match_eager_torch(engine, cpu_features):
    from harness.serve.engines import build_engine

    if engine == "onnx":
        import onnxruntime

        assert "CUDAExecutionProvider" in onnxruntime.get_available_providers(), "run make setup-gpu first: the CPU onnxruntime is installed"
    got, _ = build_engine(get_spec("uni"), ResolvedWeights.random(0), "cuda:0", engine, "fp16").extract(IMAGES)
    assert _relative_gap(got, cpu_features) < 0.05


def test_a_gpu_batch_is_larger_than_a_cpus():
    from harness.serve import protocol
    from harness.util.devices import CPU_EXTRACT_BATCH, extraction_batch

    assert extraction_batch("cuda:0", get_spec("uni"), 224, 1, protocol.MAX_BATCH) > CPU_EXTRACT_BATCH


def test_a_frozen_row_on_the_gpu_says_where_and_how_it_computed(tmp_path):
    from harness.run.lifecycle import execute
    from harness.run.plan import resolve_config

    cfg, _ = resolve_config("segmentation", "phikon", "nuclei-sample", runtime="local", weights="random", epochs=1)
    row = execute(cfg, results_dir=tmp_path, device="cuda", feature_cache=False)
    assert row.device == "cuda:0" and row.gpu_model and row.cuda_version and row.gpu_driver
    assert row.precision == "fp16-autocast" and row.engine in ("torch", "compile")  # densebench: the reference's fp16
    assert 0.0 <= row.mDice <= 1.0


def test_a_slide_row_trains_its_abmil_head_on_the_gpu(tmp_path):
    """wsi-abmil on CUDA: bags extracted in fp16/bf16 autocast, the ABMIL head trained on the GPU, the row says so."""
    from harness.run.lifecycle import execute
    from harness.run.plan import resolve_config

    cfg, _ = resolve_config("wsi-abmil", "phikon", "slides-sample", runtime="inprocess", epochs=5, input_size=112, n_bootstrap=50)
    row = execute(cfg, results_dir=tmp_path, device="cuda:0")
    assert row.device == "cuda:0" and row.precision.endswith("-autocast") and row.tiles == 280
    assert 0 <= row.macro_auroc <= 1
