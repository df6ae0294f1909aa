"""One device policy for every command that computes: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``.

``auto`` is CUDA (the first GPU) when there is one, else the CPU. Asking for CUDA where
there is none is a one-line error, never a silent CPU run. The answer is resolved once,
in the harness, and handed to whatever computes: the decoder trained here, a local
server (``CUDA_VISIBLE_DEVICES`` = that GPU), a model container (a Docker device request
for that GPU) and a training job. Inside a server or a job the chosen GPU is therefore
always ``cuda`` (index 0 of what it sees). Every row records the device and its facts
(:func:`device_facts`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import ConfigError, DeviceError

if TYPE_CHECKING:
    from harness.models.spec import ModelSpec

#: What ``--device`` accepts, for help texts and errors.
DEVICE_HELP = "auto (CUDA when there is a GPU, else CPU) | cpu | cuda | cuda:N"
#: The autocast dtypes a frozen extraction can run under on a GPU (``--dtype`` of the server); a CPU computes in fp32.
EXTRACT_DTYPES = ("bf16", "fp16")
#: The default: bf16 keeps fp32's range (no overflow in a large model's activations).
#: The ``densebench`` preset uses fp16, as the reference does (:data:`harness.config.PRESET_EXTRACT_DTYPE`).
DEFAULT_EXTRACT_DTYPE = "bf16"
_FORM = re.compile(r"(auto|cpu|cuda(:\d+)?)")


def cuda_devices() -> int:
    """How many CUDA devices this process's torch can use (0 without a GPU or with a CPU-only torch)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_device(request: str | None = "auto") -> str:
    """``request`` as a concrete torch device: ``cpu`` or ``cuda:N``; a one-line error when it cannot be had.

    ``None`` means ``auto``. A GPU index past the last GPU and CUDA on a machine without
    one are :class:`DeviceError`; a malformed value is a :class:`ConfigError`.
    """
    asked = (request or "auto").strip().lower()
    if not _FORM.fullmatch(asked):
        raise ConfigError(f"--device takes {DEVICE_HELP}; got {request!r}", "e.g. --device cuda:0, or --device auto")
    if asked == "cpu":
        return "cpu"
    count = cuda_devices()
    if asked == "auto":
        return "cuda:0" if count else "cpu"
    index = int(asked.partition(":")[2] or 0)
    if count == 0:
        import torch

        build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
        raise DeviceError(f"--device {asked}: torch {torch.__version__} ({build}) sees no CUDA device on this machine",
                          "use --device cpu, or --device auto (CUDA only where there is a GPU)")
    if index >= count:
        raise DeviceError(f"--device {asked}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}", f"use --device cuda:{count - 1} or lower")
    return f"cuda:{index}"


def gpu_index(device: str) -> int | None:
    """The GPU of a resolved device (``cuda:N`` -> N), or None for the CPU."""
    return int(device.partition(":")[2] or 0) if device.startswith("cuda") else None


def inside_device(device: str) -> str:
    """The device a server or job given only ``device``'s GPU sees it as: ``cuda`` (its index 0) or ``cpu``."""
    return "cpu" if gpu_index(device) is None else "cuda"


def visible_devices_env(device: str) -> dict[str, str]:
    """``CUDA_VISIBLE_DEVICES`` for a local subprocess on ``device``: that GPU alone, or none (a CPU server allocates nothing on a GPU)."""
    index = gpu_index(device)
    return {"CUDA_VISIBLE_DEVICES": "" if index is None else str(index)}


def docker_device_requests(device: str) -> list[Any]:
    """The Docker device request that hands ``device``'s GPU to a container (NVIDIA container runtime); none for the CPU."""
    index = gpu_index(device)
    if index is None:
        return []
    import docker.types

    return [docker.types.DeviceRequest(device_ids=[str(index)], capabilities=[["gpu"]])]


def check_dtype(dtype: str) -> str:
    """``dtype`` if it is an extraction dtype, else a :class:`ValueError` naming the choices."""
    if dtype not in EXTRACT_DTYPES:
        raise ValueError(f"unknown extraction dtype '{dtype}' (one of {', '.join(EXTRACT_DTYPES)})")
    return dtype


def autocast(dtype: str) -> str:
    """The precision label of a frozen extraction under ``dtype`` autocast: ``bf16-autocast`` or ``fp16-autocast``."""
    return f"{check_dtype(dtype)}-autocast"


def precision(device: str, on_gpu: str) -> str:
    """What a row records as its precision: ``on_gpu`` (an extraction's :func:`autocast`, a training job's ``fp16-amp``) on a GPU, ``fp32`` on a CPU."""
    return "fp32" if gpu_index(device) is None else on_gpu


def compute_tag(device: str, engine: str = "torch", dtype: str = DEFAULT_EXTRACT_DTYPE) -> str:
    """What a run key and a feature-cache key add for how the backbone computed ("" for eager torch on a CPU: those keys never changed).

    A GPU's bf16 numbers differ from a CPU's fp32 ones, kernels differ between GPU models,
    and ``torch.compile`` or onnxruntime round differently from eager torch: a row or a
    cached grid computed one way is not another's.
    """
    parts = [] if engine == "torch" else [f"engine-{engine}"]
    index = gpu_index(device)
    if index is not None:
        import torch

        parts.append(f"{autocast(dtype)}:{torch.cuda.get_device_name(index) if index < cuda_devices() else 'gpu'}")
    return ":".join(parts)


#: Images per extraction request on a CPU: a larger batch only adds latency there.
CPU_EXTRACT_BATCH = 8
#: Bytes one image costs per token and width unit in a ViT forward under autocast, the tapped
#: outputs aside: qkv (3), attention output (1), MLP hidden (4) and residuals, kept by
#: PyTorch's allocator between kernels; 2 bytes each, rounded up (measured peaks are below).
_ACTIVATION_BYTES = 2 * 12
#: Share of the free GPU memory a batch may take: the rest is the allocator's and the in-flight requests'.
_MEMORY_SHARE = 0.5


def batch_for_memory(free_bytes: int, spec: ModelSpec, size: int, n_blocks: int, largest: int, smallest: int = CPU_EXTRACT_BATCH) -> int:
    """The largest power-of-two batch (``smallest`` to ``largest``) whose forward fits half of ``free_bytes`` after the weights.

    Per image: the token sequence times the width times :data:`_ACTIVATION_BYTES`, plus the
    fp16 grids of the ``n_blocks`` tapped blocks that leave the server.
    """
    h, w = spec.grid(size, size)
    tokens = h * w + spec.prefix_tokens
    per_image = tokens * spec.embed_dim * (_ACTIVATION_BYTES + 2 * n_blocks)
    weights = int(spec.params_m * 1e6) * 2
    budget = max(0, free_bytes - weights) * _MEMORY_SHARE
    batch = smallest
    while batch * 2 <= largest and batch * 2 * per_image <= budget:
        batch *= 2
    return batch


def extraction_batch(device: str, spec: ModelSpec, size: int, n_blocks: int, largest: int) -> int:
    """Images per extraction request: :data:`CPU_EXTRACT_BATCH` on a CPU; on a GPU the most its free memory holds, up to ``largest``."""
    index = gpu_index(device)
    if index is None or index >= cuda_devices():
        return CPU_EXTRACT_BATCH
    import torch

    free, _ = torch.cuda.mem_get_info(index)
    return batch_for_memory(free, spec, size, n_blocks, largest)


def _driver_version() -> str | None:
    """The NVIDIA driver's version, from NVML (nvidia-ml-py), else the kernel module's own file; None without one."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
            return version.decode() if isinstance(version, bytes) else str(version)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no driver, no library: fall through to the file
        pass
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        return None
    found = re.search(r"Kernel Module\s+(?:for \S+\s+)?([\d.]+)", text)
    return found.group(1) if found else None


def device_facts(device: str) -> dict[str, str | None]:
    """The row columns that say where a run computed: device, GPU model, driver, CUDA and torch versions."""
    import torch

    index = gpu_index(device)
    gpu = index is not None and index < cuda_devices()
    return {
        "device": device,
        "gpu_model": torch.cuda.get_device_name(index) if gpu else None,
        "gpu_driver": _driver_version() if gpu else None,
        "cuda_version": torch.version.cuda if gpu else None,
        "torch_version": torch.__version__,
    }
