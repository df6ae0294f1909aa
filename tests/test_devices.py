"""One device policy: auto | cpu | cuda[:N] resolved once; CUDA where there is none is one line, never a silent CPU run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import docker.types
import pytest
import torch

from harness.errors import ConfigError, DeviceError
from harness.models.spec import get_spec
from harness.models.weights import ResolvedWeights
from harness.runtime.docker import server_container
from harness.util.devices import cuda_devices, device_facts, docker_device_requests, inside_device, precision, resolve_device, visible_devices_env


def test_auto_is_the_first_gpu_where_there_is_one_else_the_cpu():
    assert resolve_device("auto") == resolve_device(None) == ("cuda:0" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == resolve_device(" CPU ") == "cpu"


def test_a_gpu_this_machine_lacks_is_a_device_error_naming_the_fix():
    missing = f"cuda:{cuda_devices()}"  # one past the last GPU: none here, on a GPU machine the next index
    with pytest.raises(DeviceError) as err:
        resolve_device(missing)
    assert err.value.fix.startswith("use --device")
    if cuda_devices() == 0:
        with pytest.raises(DeviceError, match="sees no CUDA device"):
            resolve_device("cuda")


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "cuda0", "tpu", "cuda:-1"])
def test_a_malformed_device_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="--device takes"):
        resolve_device(bad)


def test_a_chosen_gpu_reaches_subprocesses_and_containers_as_that_gpu_alone():
    assert visible_devices_env("cuda:3") == {"CUDA_VISIBLE_DEVICES": "3"}
    assert visible_devices_env("cpu") == {"CUDA_VISIBLE_DEVICES": ""}
    assert inside_device("cuda:3") == "cuda" and inside_device("cpu") == "cpu"
    (request,) = docker_device_requests("cuda:1")
    assert isinstance(request, docker.types.DeviceRequest)
    assert request["DeviceIDs"] == ["1"] and request["Capabilities"] == [["gpu"]]
    assert docker_device_requests("cpu") == []
    assert precision("cpu", "bf16-autocast") == "fp32" and precision("cuda:0", "bf16-autocast") == "bf16-autocast"


def test_the_server_container_of_a_gpu_run_requests_that_gpu_and_serves_on_cuda():
    args = server_container(get_spec("phikon"), ResolvedWeights.random(0), "cuda:2", "pfmbench-test", "token")
    assert [r["DeviceIDs"] for r in args["device_requests"]] == [["2"]]
    assert args["command"][args["command"].index("--device") + 1] == "cuda"
    assert args["command"][args["command"].index("--dtype") + 1] == "bf16"
    fp16 = server_container(get_spec("phikon"), ResolvedWeights.random(0), "cuda:0", "pfmbench-test", "token", dtype="fp16")
    assert fp16["command"][fp16["command"].index("--dtype") + 1] == "fp16"
    cpu = server_container(get_spec("phikon"), ResolvedWeights.random(0), "cpu", "pfmbench-test", "token", dtype="fp16")
    assert cpu["device_requests"] == [] and cpu["command"][cpu["command"].index("--device") + 1] == "cpu"
    assert "--dtype" not in cpu["command"]  # a CPU computes in fp32 (and an older image's server knows no --dtype)
    assert all(host == "127.0.0.1" for host, _ in cpu["ports"].values())


def test_device_facts_name_the_torch_and_no_gpu_on_the_cpu():
    facts = device_facts("cpu")
    assert facts == {"device": "cpu", "gpu_model": None, "gpu_driver": None, "cuda_version": None, "torch_version": torch.__version__}


@pytest.mark.skipif(cuda_devices() > 0, reason="on a GPU machine --device cuda is served; the error needs a machine without one")
def test_bench_on_cuda_without_a_gpu_is_one_line_and_writes_nothing(tmp_path):
    res = subprocess.run([sys.executable, "-m", "harness.cli", "bench", "-m", "phikon", "-d", "nuclei-sample", "--device", "cuda",
                          "--no-progress", "--results-dir", str(tmp_path / "results")], capture_output=True, text=True, timeout=300)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --device cuda: torch") and "--device cpu" in lines[0], res.stderr
    assert not Path(tmp_path / "results").exists()


def test_onnx_on_a_gpu_takes_tensorrt_in_fp16_then_cuda_and_without_either_is_an_error(tmp_path):
    from harness.serve.onnx import providers_for

    assert providers_for("cpu", ["CPUExecutionProvider"], tmp_path) == ["CPUExecutionProvider"]
    chosen = providers_for("cuda:1", ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"], tmp_path)
    assert [p if isinstance(p, str) else p[0] for p in chosen] == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    trt, cuda = chosen[0][1], chosen[1][1]  # type: ignore[index]
    assert trt["trt_fp16_enable"] is True and trt["device_id"] == 1 and trt["trt_engine_cache_path"] == str(tmp_path) and cuda == {"device_id": 1}
    with pytest.raises(DeviceError) as err:
        providers_for("cuda:0", ["CPUExecutionProvider"], tmp_path)
    assert "make setup-gpu" in err.value.fix


def test_the_onnx_engine_asked_for_a_gpu_never_runs_on_the_cpu_provider():
    import onnxruntime as ort

    from harness.serve.engines import build_engine

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider (the GPU set): nothing to refuse")
    with pytest.raises(DeviceError, match="--engine onnx on cuda:0: this onnxruntime has only"):
        build_engine(get_spec("phikon"), ResolvedWeights.random(0), "cuda:0", "onnx")


def test_the_gpu_compose_overlay_reserves_one_gpu_for_every_server():
    import yaml

    root = Path(__file__).resolve().parent.parent / "compose"
    servers = yaml.safe_load((root / "serve.yml").read_text())["services"]
    overlay = yaml.safe_load((root / "serve.gpu.yml").read_text())["services"]
    assert set(overlay) == set(servers)
    ids = []
    for name, service in overlay.items():
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"] and len(device["device_ids"]) == 1, name
        ids += device["device_ids"]
    assert len(set(ids)) == len(ids)  # one server per GPU


def test_features_computed_on_a_gpu_are_cached_apart_from_a_cpus():
    from harness.client.feature_cache import host_environment, on_device

    env = host_environment()
    assert on_device(env, "cpu") == env  # CPU keys are what they were before devices were recorded
    gpu = on_device(env, "cuda:0")
    assert gpu != env and gpu.startswith(f"{env}:bf16-autocast:")


def test_a_gpu_run_has_a_run_key_of_its_own_and_a_cpu_runs_key_is_unchanged():
    from harness.run.plan import plan_run, resolve_config

    cfg, _ = resolve_config("segmentation", "phikon", "nuclei-sample", runtime="local", weights="random", epochs=2)
    cpu = plan_run(cfg, device="cpu").run_key
    assert plan_run(cfg).run_key == cpu
    assert plan_run(cfg, device="cuda:0").run_key not in (None, cpu)


def test_densebench_extracts_in_fp16_on_a_gpu_as_the_reference_and_corrected_in_bf16():
    from harness.run.plan import plan_run, resolve_config

    plans = {}
    for preset in ("densebench", "corrected"):
        cfg, _ = resolve_config("segmentation", "phikon", "nuclei-sample", runtime="local", preset=preset, weights="random", epochs=2)
        plans[preset] = (plan_run(cfg, device="cpu"), plan_run(cfg, device="cuda:0"))
    assert plans["densebench"][1].dtype == "fp16" and plans["corrected"][1].dtype == "bf16"
    # the dtype is in a GPU run's compute tag; a CPU run's key is the one it always had
    from harness.client.feature_cache import host_environment, on_device
    from harness.util.devices import compute_tag

    assert compute_tag("cpu", dtype="fp16") == "" and compute_tag("cuda:0", dtype="fp16").startswith("fp16-autocast:")
    assert on_device(host_environment(), "cuda:0", dtype="fp16") != on_device(host_environment(), "cuda:0", dtype="bf16")
    with pytest.raises(ValueError, match="one of bf16, fp16"):
        compute_tag("cuda:0", dtype="fp8")


def test_the_server_argument_sets_the_extractors_autocast_dtype():
    from harness.serve.engines import build_engine

    spec, weights = get_spec("phikon"), ResolvedWeights.random(0)
    assert build_engine(spec, weights, "cpu", dtype="fp16").autocast_dtype == torch.float16  # type: ignore[attr-defined]
    assert build_engine(spec, weights, "cpu").autocast_dtype == torch.bfloat16  # type: ignore[attr-defined]
    out = subprocess.run([sys.executable, "-m", "harness.serve", "--model", "phikon", "--dtype", "fp8"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "invalid choice: 'fp8'" in out.stderr


def test_a_gpu_batch_grows_with_free_memory_and_stays_within_the_servers_largest():
    from harness.serve import protocol
    from harness.util.devices import CPU_EXTRACT_BATCH, batch_for_memory, extraction_batch

    uni, giant = get_spec("uni"), get_spec("h_optimus_0")  # ViT-L/16, ViT-g/14
    gib = 1 << 30
    assert extraction_batch("cpu", uni, 224, 1, protocol.MAX_BATCH) == CPU_EXTRACT_BATCH
    sizes = [batch_for_memory(int(free * gib), uni, 224, 1, protocol.MAX_BATCH) for free in (0.5, 1, 4, 139)]
    assert sizes == sorted(sizes) and sizes[0] == CPU_EXTRACT_BATCH and sizes[-1] == protocol.MAX_BATCH
    # a wider model with more taps gets fewer images out of the same memory
    assert batch_for_memory(8 * gib, giant, 224, 4, 256) < batch_for_memory(8 * gib, uni, 224, 1, 256)
    assert all(b & (b - 1) == 0 for b in sizes)  # powers of two: shapes torch.compile and TensorRT see again


def test_auto_engine_is_compile_only_where_it_measured_faster_on_that_gpu(tmp_path, monkeypatch):
    from harness.perf import engine_choice
    from harness.run.plan import resolve_config

    store = tmp_path / "engines.json"
    frozen, _ = resolve_config("segmentation", "uni", "nuclei-sample", runtime="local", weights="random", epochs=1)
    lora, _ = resolve_config("segmentation", "uni", "nuclei-sample", runtime="local", weights="random", epochs=1, strategy="lora")
    assert engine_choice.choose_engine("onnx", frozen, "cpu", store)[0] == "onnx"  # asked for: as it is
    assert engine_choice.choose_engine("auto", frozen, "cpu", store)[0] == "torch"
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "NVIDIA H200")  # a GPU's name is all the choice reads of it
    engine, why = engine_choice.choose_engine("auto", frozen, "cuda:0", store)
    assert engine == "torch" and "never measured on NVIDIA H200" in why
    engine_choice.record("NVIDIA H200", "uni", "torch", 1000.0, store)
    engine_choice.record("NVIDIA H200", "uni", "compile", 1030.0, store)
    assert engine_choice.choose_engine("auto", frozen, "cuda:0", store)[0] == "torch"  # 3% is noise
    engine_choice.record("NVIDIA H200", "uni", "compile", 1400.0, store)
    engine, why = engine_choice.choose_engine("auto", frozen, "cuda:0", store)
    assert engine == "compile" and "1.40x" in why
    assert engine_choice.choose_engine("auto", lora, "cuda:0", store)[0] == "torch"  # trains through the backbone: not a served extraction
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "NVIDIA A100-SXM4-80GB")
    assert engine_choice.choose_engine("auto", frozen, "cuda:0", store)[0] == "torch"  # measured on another GPU model
