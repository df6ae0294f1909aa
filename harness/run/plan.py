"""Resolve and plan: from the user's choices to a validated config, then to everything its run key needs.

Both steps run for every cell of a grid before the first run starts, so a typo in the
third model's name fails at once instead of after two hours of compute. Nothing here
loads a model or starts a server (the docker image digest aside).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pydantic import ValidationError

from harness.client.feature_cache import host_environment, on_device
from harness.config import DENSEBENCH_INPUT_SIZE, ENGINES, PRESETS, ROI_PRESETS, WSI_PRESETS, RoiConfig, RunConfig, WsiConfig, extract_dtype, run_key
from harness.data.cards import DatasetCard, get_card
from harness.errors import ConfigError, option_problem
from harness.models.spec import ModelSpec, get_spec, resolve_blocks, spec_for_preset
from harness.models.weights import ResolvedWeights, resolve_weights
from harness.runtime import choose_runtime
from harness.util.devices import compute_tag

AnyConfig = RunConfig | RoiConfig | WsiConfig


@dataclass(frozen=True)
class Plan:
    """A run resolved before anything starts: what it reads and the key its row will carry."""

    cfg: AnyConfig
    spec: ModelSpec
    card: DatasetCard
    blocks: tuple[int, ...]
    size: int
    weights: ResolvedWeights
    image_digest: str | None
    run_key: str | None  # None when the image is unknown (a server started elsewhere)
    device: str = "cpu"  # where the backbone computes (resolved)
    engine: str = "torch"  # what runs its forward: torch | compile | onnx
    dtype: str = "bf16"  # its autocast dtype on a GPU (the preset's: fp16 for densebench); a CPU computes in fp32


def resolve_config(task: str, model: str, dataset: str, runtime: str = "auto", preset: str | None = None,
                   **overrides: object) -> tuple[AnyConfig, str]:
    """A full config from CLI-level choices: the task's preset, the card's default epochs, overrides.

    Returns the config and a sentence saying which runtime ``auto`` chose and why.
    """
    get_spec(model)  # fail fast with the list of models
    card = get_card(dataset)
    card.check_task(task)
    if overrides.get("epochs") is None and card.default_epochs:
        overrides["epochs"] = card.default_epochs
    presets = PRESETS if task == "segmentation" else WSI_PRESETS if task.startswith("wsi-") else ROI_PRESETS
    preset = preset or next(iter(presets))
    if preset not in presets:
        raise ConfigError(f"unknown preset '{preset}' for --task {task}", f"use one of {', '.join(presets)}")
    chosen, why = choose_runtime(runtime)
    try:
        if task.startswith("wsi-"):
            cfg: AnyConfig = WsiConfig.from_preset(preset, task=task, model=model, dataset=dataset, runtime=chosen, **overrides)  # type: ignore[arg-type]
        elif task != "segmentation":
            cfg = RoiConfig.from_preset(preset, task=task, model=model, dataset=dataset, runtime=chosen, **overrides)  # type: ignore[arg-type]
        else:
            cfg = RunConfig.from_preset(preset, model=model, dataset=dataset, runtime=chosen, **overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigError(option_problem(exc), "see 'pfmbench bench --help' for the accepted values") from exc
    return cfg, why


def expand_grid(task: str, models: Iterable[str], datasets: Iterable[str], strategies: Iterable[str], seeds: Iterable[int],
                runtime: str = "auto", preset: str | None = None, **overrides: object) -> list[tuple[AnyConfig, str]]:
    """Every cell of models x datasets x strategies x seeds as a resolved config (``bench`` and ``sweep`` share it).

    ROI and slide tasks have no strategy: their cells ignore ``strategies`` (which must be ``frozen``).
    """
    strategies = list(strategies)
    if task != "segmentation" and strategies != ["frozen"]:
        raise ConfigError(f"--task {task} trains a head on frozen CLS embeddings", "drop --strategy")
    out = []
    for model in models:
        for dataset in datasets:
            for strategy in strategies:
                for seed in seeds:
                    extra = dict(overrides, seed=seed) if task != "segmentation" else dict(overrides, seed=seed, strategy=strategy)
                    out.append(resolve_config(task, model, dataset, runtime=runtime, preset=preset, **extra))
    return out


def input_size_for(requested: int | None, card: DatasetCard, spec: ModelSpec, preset: str | None = None) -> int:
    """The square input size: ``requested``, else the preset's fixed size for the model (``densebench``: MUSK 384),
    else the card's rule for the model's patch size; a multiple of the patch size."""
    fixed = DENSEBENCH_INPUT_SIZE.get(spec.name) if preset == "densebench" else None
    size = requested or fixed or card.input_size.for_patch(spec.patch_size)
    if size % spec.patch_size:
        raise ConfigError(f"input size {size} is not a multiple of {spec.name}'s patch size {spec.patch_size}", f"use a multiple of {spec.patch_size}")
    return size


def image_digest(runtime: str, spec: ModelSpec, image: str | None) -> str | None:
    """The identity of the image a docker run uses (``image``, else the model's, built if missing); None for other runtimes."""
    if runtime != "docker":
        return None
    from harness.images.docker import docker_client
    from harness.images.registry import ensure_image, image_identity

    return image_identity(docker_client().images.get(image) if image else ensure_image(spec.name), spec.name)


def _blocks(cfg: AnyConfig, spec: ModelSpec) -> tuple[int, ...]:
    if isinstance(cfg, (RoiConfig, WsiConfig)):
        return (spec.depth - 1,)  # the final-norm CLS of the last block
    try:
        blocks = resolve_blocks(cfg.blocks or spec.blocks, spec.depth)
    except ValueError as exc:
        raise ConfigError(f"--blocks: {exc}", f"'{spec.name}' has {spec.depth} blocks") from exc
    if cfg.strategy in ("cnn_adapter", "transformer_adapter") and len(blocks) != 1:
        raise ConfigError(f"{cfg.strategy} reads one block, got --blocks {','.join(map(str, blocks))}", "leave --blocks out (the last block)")
    if cfg.strategy == "cnn_adapter" and cfg.decoder != "transunet":
        raise ConfigError("cnn_adapter feeds CNN skips into the transunet decoder", "use --decoder transunet")
    if cfg.strategy != "frozen" and cfg.runtime == "endpoint":
        raise ConfigError(f"strategy {cfg.strategy} trains through the backbone, which a feature server cannot do",
                          "drop --endpoint (the job runs in the model's image or locally)")
    return blocks


def plan_run(cfg: AnyConfig, image: str | None = None, device: str = "cpu", engine: str = "torch") -> Plan:
    """Resolve model, card, blocks, input size, weights and (docker) the image: everything the run key needs.

    ``device`` (resolved: ``cpu``, ``cuda:N``) and ``engine`` say how the backbone computes:
    a GPU run, or one through ``torch.compile`` or onnxruntime, has a key of its own.
    """
    spec = spec_for_preset(get_spec(cfg.model), cfg.preset)  # densebench: MUSK normalised as the reference
    if cfg.runtime in ("local", "inprocess"):
        from harness.models.builders import check_packages

        check_packages(spec)  # the backbone is built on this host: a model's own pins (an older timm) must hold here
    card = get_card(cfg.dataset)
    card.check_task(getattr(cfg, "task", "segmentation"))
    blocks = _blocks(cfg, spec)
    size = input_size_for(cfg.input_size, card, spec, cfg.preset)
    weights = resolve_weights(spec, cfg.weights, init_seed=cfg.init_seed)
    digest = image_digest(cfg.runtime, spec, image)
    if engine not in ENGINES:
        raise ConfigError(f"unknown engine '{engine}'", f"use one of {', '.join(ENGINES)}")
    if engine != "torch" and (getattr(cfg, "strategy", "frozen") != "frozen" or cfg.runtime == "endpoint"):
        raise ConfigError(f"--engine {engine} runs the frozen extraction of a server this run starts",
                          "drop --engine for a strategy that trains through the backbone, or for --endpoint")
    dtype = extract_dtype(cfg.preset)
    key = None if cfg.runtime == "endpoint" else run_key(cfg, spec.spec_hash(), card.card_hash(), weights.label, digest, compute_tag(device, engine, dtype))
    return Plan(cfg, spec, card, blocks, size, weights, digest, key, device, engine, dtype)


def feature_environment(plan: Plan) -> str | None:
    """Where a plan's features are computed, as the cache keys it: the image digest (docker) or this host's torch and
    harness, narrowed to the device, engine and dtype; None where that is unknown (a server started elsewhere)."""
    cfg = plan.cfg
    if cfg.runtime == "endpoint" or (cfg.runtime == "docker" and not plan.image_digest):
        return None
    return on_device(plan.image_digest if cfg.runtime == "docker" and plan.image_digest else host_environment(), plan.device, plan.engine, plan.dtype)
