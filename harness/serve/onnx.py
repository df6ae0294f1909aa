"""Token extraction through onnxruntime: the torch extractor, exported to ONNX and run by another engine.

Why: onnxruntime fuses attention and layer norms on its own, and on a GPU its CUDA (or
TensorRT) execution provider is a serving path that does not depend on the PyTorch
build. The export is the same ``TokenExtractor`` the torch path runs (preprocessing
included: uint8 ``[B, H, W, 3]`` in, fp16 grids out), so parity with torch is a direct
comparison (``pfmbench perf --modes inprocess,onnx`` reports it as ``max_abs_diff``).

A graph is exported per (tapped blocks, input height, width) with a dynamic batch
dimension, on first use, into ``$PFMBENCH_CACHE/onnx/<model>-<hash>/model.onnx`` (the
hash covers spec, weights, blocks and size; written in a temporary folder and renamed),
and reused after. On a GPU the session runs an fp16 copy of that graph
(``fp16/model.onnx`` beside it: onnxruntime's float16 conversion, uint8 input and fp16
outputs kept), so the CUDA provider computes in half precision as TensorRT's fp16 does;
a CPU runs the fp32 graph.
Execution providers (:func:`providers_for`): on a GPU, TensorRT in fp16 (with its engine
cache beside the graph) where the TensorRT libraries are installed, then CUDA; both need
the ``onnxruntime-gpu`` wheel instead of the CPU one (``make setup-gpu``). ``--engine onnx``
on a GPU without them is an error, never a silent run on the CPU provider.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path

import numpy as np
import torch
from torch import nn

from harness import constants
from harness.errors import DeviceError
from harness.models.builders import TokenExtractor
from harness.models.spec import resolve_blocks
from harness.models.weights import ResolvedWeights
from harness.util.atomic import atomic_directory

log = logging.getLogger("pfmbench.onnx")


class _Export(nn.Module):
    """What the graph computes: preprocessing, the tapped blocks, fp16 outputs."""

    def __init__(self, extractor: TokenExtractor, blocks: tuple[int, ...]) -> None:
        super().__init__()
        self.extractor, self.blocks = extractor, blocks

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens, cls = self.extractor(self.extractor.preprocess(images), self.blocks)
        return tokens.to(torch.float16), cls.to(torch.float16)


def onnx_dir() -> Path:
    return constants.ONNX_DIR


def half_precision(graph: Path) -> Path:
    """The fp16 copy of the graph at ``graph`` (converted now if not there yet), in ``fp16/`` beside it.

    Weights and activations in fp16, the graph's uint8 input and fp16 outputs as they were;
    its weights go to one external file (a ViT-g's exceed protobuf's 2 GB).
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    target = graph.parent / "fp16"
    if (target / "model.onnx").is_file():
        return target / "model.onnx"
    log.info("converting %s to fp16", graph)
    half = convert_float_to_float16(onnx.load(str(graph)), keep_io_types=True)
    with atomic_directory(target) as tmp:
        onnx.save(half, str(tmp / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True, location="model.onnx.data")
    return target / "model.onnx"


def export(extractor: TokenExtractor, weights: ResolvedWeights, blocks: tuple[int, ...], height: int, width: int,
           directory: Path | None = None) -> Path:
    """The ONNX file of ``extractor`` for these blocks and input size (exported now if not there yet)."""
    spec = extractor.spec
    ident = f"{spec.spec_hash()}|{weights.label}|{weights.init_seed}|{blocks}|{height}x{width}"
    entry = (directory or onnx_dir()) / f"{spec.name}-{hashlib.sha256(ident.encode()).hexdigest()[:16]}"
    if (entry / "model.onnx").is_file():
        return entry / "model.onnx"
    # the graph and its external weight file (models over 2 GB) are written side by side, then the folder is renamed
    log.info("exporting %s blocks %s at %dx%d to %s", spec.name, list(blocks), height, width, entry)
    module = _Export(extractor.cpu().eval(), blocks).eval()
    sample = torch.zeros(2, height, width, 3, dtype=torch.uint8)
    with atomic_directory(entry) as tmp, torch.no_grad():  # a concurrent export of the same graph may win the rename
        torch.onnx.export(module, (sample,), str(tmp / "model.onnx"), dynamo=True, input_names=["images"], output_names=["tokens", "cls"],
                          dynamic_shapes={"images": {0: torch.export.Dim("batch", max=4096)}}, verbose=False)
    return entry / "model.onnx"


def providers_for(device: str, available: list[str], cache_dir: Path) -> list[str | tuple[str, dict[str, object]]]:
    """The execution providers, best first, for ``device`` given onnxruntime's ``available`` ones.

    CPU: the CPU provider. GPU: TensorRT (fp16, engines cached in ``cache_dir``) if
    available, then CUDA, then CPU for the few nodes neither takes; a
    :class:`~harness.errors.DeviceError` when neither GPU provider is there.
    """
    if not device.startswith("cuda"):
        return ["CPUExecutionProvider"]
    index = int(device.partition(":")[2] or 0)
    chosen: list[str | tuple[str, dict[str, object]]] = []
    if "TensorrtExecutionProvider" in available:
        chosen.append(("TensorrtExecutionProvider", {"device_id": index, "trt_fp16_enable": True, "trt_engine_cache_enable": True,
                                                     "trt_engine_cache_path": str(cache_dir)}))
    if "CUDAExecutionProvider" in available:
        chosen.append(("CUDAExecutionProvider", {"device_id": index}))
    if not chosen:
        raise DeviceError(f"--engine onnx on {device}: this onnxruntime has only {', '.join(available)} (the CPU wheel)",
                          "install the GPU set (make setup-gpu: onnxruntime-gpu), or use --engine torch")
    return [*chosen, "CPUExecutionProvider"]


class OnnxExtractor:
    """``extract(images, blocks)`` as :class:`~harness.models.builders.TokenExtractor` has it, run by onnxruntime."""

    def __init__(self, extractor: TokenExtractor, weights: ResolvedWeights, device: str = "cpu", directory: Path | None = None,
                 fp16: bool | None = None) -> None:
        import onnxruntime as ort

        self.extractor, self.weights, self.directory = extractor, weights, directory
        self.fp16 = device.startswith("cuda") if fp16 is None else fp16  # the fp16 graph on a GPU (:func:`half_precision`)
        if device.startswith("cuda") and hasattr(ort, "preload_dlls"):
            ort.preload_dlls()  # the CUDA libraries of the nvidia-* wheels torch uses: no system CUDA needed
        self.providers = providers_for(device, ort.get_available_providers(), (directory or onnx_dir()) / "tensorrt")
        self._sessions: dict[tuple, object] = {}
        self._lock = threading.Lock()

    def session(self, blocks: tuple[int, ...], height: int, width: int):
        import onnxruntime as ort

        key = (blocks, height, width)
        with self._lock:
            if key not in self._sessions:
                path = export(self.extractor, self.weights, blocks, height, width, self.directory)
                if self.fp16:
                    path = half_precision(path)
                self._sessions[key] = ort.InferenceSession(str(path), providers=self.providers)
            return self._sessions[key]

    def extract(self, images: np.ndarray, blocks: tuple[int, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
        spec = self.extractor.spec
        idx = resolve_blocks(blocks or spec.blocks, spec.depth)
        images = np.ascontiguousarray(images, dtype=np.uint8)
        _, h, w, _ = images.shape
        tokens, cls = self.session(idx, h, w).run(None, {"images": images})
        return tokens, cls
