"""The distillation loop: student + EMA teacher + served experts, checkpointed and resumable.

Each step: crops and masks of the step (seeded by the step), the experts' features of the
global crops (asked one step ahead, or read from the teacher cache), the student's masked
global forward and plain local forward, the EMA teacher's global forward, the five loss
families, one AdamW step with DINOv2's schedules, the EMA update. Every
``checkpoint_every`` steps the whole state goes to ``checkpoint.pt`` atomically; run the
same command again and it resumes there. ``losses.jsonl`` holds one line per step.
"""

from __future__ import annotations

import copy
import json
import math
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from harness.client.feature_cache import FeatureCache
from harness.data.cards import get_card
from harness.data.formats import read_image
from harness.data.loader import dataset_root, discover, split
from harness.distill.config import DistillConfig
from harness.distill.crops import Batch, fixed_global_view, make_batch
from harness.distill.losses import DinoHead, ExpertHead, centered_softmax, cls_cosine_loss, dino_loss, ibot_loss, koleo_loss, patch_feature_loss, resize_grid
from harness.distill.teachers import TeacherCache, TeacherOutput, TeacherPool
from harness.errors import ConfigError
from harness.train.checkpoint import save_checkpoint
from harness.util.progress import progress_bar

CHECKPOINT = "checkpoint.pt"
LOSSES = "losses.jsonl"
CONFIG = "distill.json"
STUDENT = "student.pt"


class Student(nn.Module):
    """A timm DINOv2-style ViT plus the iBOT mask token (kept outside the backbone, which is what gets exported)."""

    backbone: Any  # timm's VisionTransformer: its private steps (_pos_embed, patch_drop) are called one by one
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, cfg: DistillConfig) -> None:
        super().__init__()
        import timm

        spec = cfg.student_spec()
        self.backbone = timm.create_model(spec.constructor, pretrained=False, drop_path_rate=cfg.drop_path, **spec.kwargs)
        self.mask_token = nn.Parameter(torch.zeros(1, cfg.embed_dim))
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1) * 255.0, persistent=False)

    def forward(self, images: torch.Tensor, masks: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """uint8 ``[N, H, W, 3]`` -> final-norm CLS ``[N, D]``, patch tokens ``[N, P, D]``, and the grid ``(h, w)``."""
        bb = self.backbone
        x = (images.permute(0, 3, 1, 2).float() - self.mean) / self.std
        x = bb.patch_embed(x)  # [N, h, w, D] (dynamic_img_size)
        grid = (x.shape[1], x.shape[2])
        if masks is not None:
            flat = x.reshape(x.shape[0], -1, x.shape[-1])
            flat = torch.where(masks[..., None], self.mask_token.to(flat.dtype), flat)
            x = flat.reshape(x.shape)
        x = bb.norm(bb.blocks(bb.norm_pre(bb.patch_drop(bb._pos_embed(x)))))
        prefix = bb.num_prefix_tokens
        return x[:, 0], x[:, prefix:], grid


class Heads(nn.Module):
    def __init__(self, cfg: DistillConfig, teacher_dims: dict[str, int]) -> None:
        super().__init__()
        self.dino = DinoHead(cfg.embed_dim, cfg.prototypes, cfg.head_hidden, cfg.head_bottleneck)
        self.experts = nn.ModuleDict({n: ExpertHead(cfg.embed_dim, d, cfg.expert_bottleneck) for n, d in teacher_dims.items()})


def load_images(cfg: DistillConfig, data_dir: Path | None = None) -> list[np.ndarray]:
    """The training split of ``cfg.dataset`` at its original resolution (distillation never sees val or test)."""
    card = get_card(cfg.dataset)
    samples = split(card, discover(card, dataset_root(card, data_dir)))["train"]
    if cfg.max_images:
        samples = samples[:cfg.max_images]
    images = [read_image(card, s.image) for s in samples]
    small = [s.image.name for s, im in zip(samples, images) if min(im.shape[:2]) < cfg.local_size]
    if small:
        raise ConfigError(f"{len(small)} images of {cfg.dataset} are smaller than the {cfg.local_size} px local crop (e.g. {small[0]})",
                          "pick a dataset with larger images")
    return images


def _schedule(step: int, total: int, start: float, end: float, warmup: int = 0, warmup_from: float = 0.0) -> float:
    """Linear warmup from ``warmup_from`` to ``start``, then cosine from ``start`` to ``end``."""
    if step < warmup:
        return warmup_from + (start - warmup_from) * step / max(warmup, 1)
    progress = (step - warmup) / max(total - warmup, 1)
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * min(progress, 1.0)))


def _param_groups(student: Student, heads: Heads, cfg: DistillConfig) -> list[dict]:
    """Layer-wise lr decay (``layer_decay`` per block from the top), patch embedding x ``patch_embed_lr_mult``,
    no weight decay on biases, norms, tokens and positions (DINOv2's ``get_params_groups``)."""
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
    depth = cfg.depth

    def layer_of(name: str) -> int:
        if name.startswith("backbone.blocks."):
            return int(name.split(".")[2]) + 1
        if name.startswith(("backbone.patch_embed", "backbone.cls_token", "backbone.pos_embed", "backbone.reg_token", "mask_token")):
            return 0
        return depth + 1

    for module, prefix in ((student, ""), (heads, "heads.")):
        for name, p in module.named_parameters():
            full = prefix + name
            scale = cfg.layer_decay ** (depth + 1 - layer_of(full)) if not full.startswith("heads.") else 1.0
            if "patch_embed" in full:
                scale *= cfg.patch_embed_lr_mult
            no_wd = p.ndim == 1 or full.endswith(("cls_token", "pos_embed", "mask_token", "reg_token")) or "gamma" in full
            groups.setdefault((scale, no_wd), []).append(p)
    return [{"params": ps, "lr_scale": scale, "apply_wd": not no_wd} for (scale, no_wd), ps in groups.items()]


@dataclass
class StepTimes:
    teacher_wait_s: list[float]  # time a step blocked on its crops and teacher features (prepared one step ahead)
    student_s: list[float]  # student + EMA teacher forward, backward, optimiser
    teacher_request_s: list[float] = field(default_factory=list)  # one batch through every teacher, concurrently

    def summary(self) -> dict[str, float]:
        def med(v: list[float]) -> float:
            return statistics.median(v) if v else 0.0

        return {"teacher_request_s": med(self.teacher_request_s), "teacher_wait_s": med(self.teacher_wait_s), "student_s": med(self.student_s),
                "step_s": med([a + b for a, b in zip(self.teacher_wait_s, self.student_s)])}


class Distiller:
    """All trainable state of a run, and one :meth:`step`."""

    def __init__(self, cfg: DistillConfig, teacher_dims: dict[str, int]) -> None:
        torch.manual_seed(cfg.seed)
        self.cfg = cfg
        self.student = Student(cfg)
        self.heads = Heads(cfg, teacher_dims)
        self.teacher: Any = copy.deepcopy(self.student.backbone).requires_grad_(False).eval()  # no drop path in the EMA teacher
        self.teacher_head = copy.deepcopy(self.heads.dino).requires_grad_(False).eval()
        self.dino_center = torch.zeros(1, cfg.prototypes)
        self.ibot_center = torch.zeros(1, 1, cfg.prototypes)
        self.opt = torch.optim.AdamW(_param_groups(self.student, self.heads, cfg), lr=cfg.lr, betas=(0.9, 0.999))
        self.step_index = 0

    def state_dict(self) -> dict:
        return {"student": self.student.state_dict(), "heads": self.heads.state_dict(), "teacher": self.teacher.state_dict(),
                "teacher_head": self.teacher_head.state_dict(), "dino_center": self.dino_center, "ibot_center": self.ibot_center,
                "opt": self.opt.state_dict(), "step": self.step_index, "config_hash": self.cfg.config_hash()}

    def load_state_dict(self, state: dict) -> None:
        self.student.load_state_dict(state["student"])
        self.heads.load_state_dict(state["heads"])
        self.teacher.load_state_dict(state["teacher"])
        self.teacher_head.load_state_dict(state["teacher_head"])
        self.dino_center, self.ibot_center = state["dino_center"], state["ibot_center"]
        self.opt.load_state_dict(state["opt"])
        self.step_index = state["step"]

    def _teacher_forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            x = (images.permute(0, 3, 1, 2).float() - self.student.mean) / self.student.std
            tokens = self.teacher.forward_features(x)
            return tokens[:, 0], tokens[:, self.teacher.num_prefix_tokens:]

    def step(self, batch: Batch, experts: dict[str, TeacherOutput]) -> dict[str, float]:
        """One optimiser step; returns every loss term (and the total) as floats."""
        cfg, s = self.cfg, self.step_index
        lr = _schedule(s, cfg.steps, cfg.lr, cfg.min_lr, cfg.warmup_steps)
        wd = _schedule(s, cfg.steps, cfg.weight_decay[0], cfg.weight_decay[1])
        momentum = _schedule(s, cfg.steps, cfg.ema_momentum, 1.0)
        t_temp = cfg.warmup_teacher_temp + (cfg.teacher_temp - cfg.warmup_teacher_temp) * min(1.0, s / max(cfg.teacher_temp_warmup_steps, 1))
        for group in self.opt.param_groups:
            group["lr"] = lr * group["lr_scale"]
            group["weight_decay"] = wd if group["apply_wd"] else 0.0

        self.student.train()
        globals_ = torch.from_numpy(batch.global_crops)
        masks = torch.from_numpy(batch.masks)
        n_img = len(batch.index)
        s_cls, s_patch, grid = self.student(globals_, masks)
        local_cls = self.student(torch.from_numpy(batch.local_crops))[0] if len(batch.local_crops) else s_cls[:0]
        t_cls, t_patch = self._teacher_forward(globals_)

        # self-distillation: DINO on the CLS of every crop, iBOT on masked patches, one shared head
        t_cls_logits = self.teacher_head(t_cls)
        t_probs = centered_softmax(t_cls_logits, self.dino_center, t_temp).detach()
        s_logits = self.heads.dino(torch.cat([s_cls, local_cls]))
        views = list(s_logits.split(n_img))  # global view 0, global view 1, then each local crop
        losses = {"dino": dino_loss(views, list(t_probs.split(n_img)), cfg.student_temp)}
        if masks.any():
            t_patch_logits = self.teacher_head(t_patch)
            t_patch_probs = centered_softmax(t_patch_logits, self.ibot_center, t_temp).detach()
            losses["ibot"] = ibot_loss(self.heads.dino(s_patch), t_patch_probs, masks, cfg.student_temp)
        else:
            t_patch_logits = None
            losses["ibot"] = s_cls.new_zeros(())
        losses["koleo"] = torch.stack([koleo_loss(c) for c in s_cls.split(n_img)]).sum() / 2

        # expert distillation: one head per served teacher
        for name, expert in experts.items():
            head = self.heads.experts[name]
            t_c = torch.from_numpy(np.asarray(expert.cls, np.float32))
            t_g = resize_grid(torch.from_numpy(np.asarray(expert.grid, np.float32)), grid)
            losses[f"{name}.cls"] = cls_cosine_loss(head(s_cls), t_c)
            losses[f"{name}.patch"] = patch_feature_loss(head(s_patch), t_g, cfg.patch_cos, cfg.patch_smooth_l1)

        weights = {"dino": cfg.dino_weight, "ibot": cfg.ibot_weight, "koleo": cfg.koleo_weight}
        weights.update({f"{n}.cls": cfg.cls_weights[n] for n in experts})
        weights.update({f"{n}.patch": cfg.patch_weights[n] for n in experts})
        total = torch.stack([weights[k] * v for k, v in losses.items()]).sum()
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        if s < cfg.freeze_last_layer_steps:
            for p in self.heads.dino.last_layer.parameters():
                p.grad = None
        params = [p for g in self.opt.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        self.opt.step()

        with torch.no_grad():  # EMA teacher and centers
            for t_p, s_p in zip(self.teacher.parameters(), self.student.backbone.parameters()):
                t_p.mul_(momentum).add_(s_p.detach(), alpha=1 - momentum)
            for t_p, s_p in zip(self.teacher_head.parameters(), self.heads.dino.parameters()):
                t_p.mul_(momentum).add_(s_p.detach(), alpha=1 - momentum)
            self.dino_center.mul_(cfg.center_momentum).add_(t_cls_logits.mean(0, keepdim=True), alpha=1 - cfg.center_momentum)
            if t_patch_logits is not None:
                masked = t_patch_logits[masks]
                self.ibot_center.mul_(cfg.center_momentum).add_(masked.mean(0).view(1, 1, -1), alpha=1 - cfg.center_momentum)
        self.step_index += 1
        out = {k: float(v.detach()) for k, v in losses.items()}
        out["total"] = float(total.detach())
        return out


def _trim_log(path: Path, steps: int) -> None:
    """Keep the first ``steps`` lines: steps after the last checkpoint are redone on resume."""
    if not path.exists():
        return
    lines = path.read_text().splitlines()[:steps]
    path.write_text("".join(line + "\n" for line in lines))


@dataclass(frozen=True)
class DistillResult:
    run_dir: Path
    steps: int
    resumed_from: int
    times: dict[str, float]
    first: dict[str, float]  # mean of each loss term over the first tenth of the steps after the teacher-temperature warm-up
    last: dict[str, float]  # ... and over the last tenth
    transfer: str
    teacher_features: str = "asked every step"  # with the teacher cache: which teachers' features were read from disk, which computed


def loss_trend(rows: list[dict[str, float]], settled_from: int = 0) -> tuple[dict[str, float], dict[str, float]]:
    """Mean of each loss term over the first and the last tenth of the steps from ``settled_from`` on.

    DINO and iBOT are cross-entropies against the teacher's distribution, whose entropy
    rises by construction while the teacher temperature warms up (0.04 -> 0.07); the
    trend is read after that warm-up, when the target has stopped moving.
    """
    settled = [r for r in rows if r["step"] > settled_from] or rows
    n = max(1, len(settled) // 10)
    keys = [k for k in settled[0] if k != "step"]
    return ({k: statistics.fmean(r[k] for r in settled[:n]) for k in keys}, {k: statistics.fmean(r[k] for r in settled[-n:]) for k in keys})


def distill(cfg: DistillConfig, run_dir: Path, data_dir: Path | None = None, show_progress: bool = False,
            on_step: Callable[[int, dict[str, float]], None] | None = None) -> DistillResult:
    """Run (or resume) distillation into ``run_dir``; returns timings and the loss trend."""
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = run_dir / CONFIG
    if cfg_path.exists():
        previous = DistillConfig(**json.loads(cfg_path.read_text()))
        if previous.config_hash() != cfg.config_hash():
            raise ConfigError(f"{run_dir} holds a run with another configuration ({previous.config_hash()} vs {cfg.config_hash()})",
                              "pass a new --out directory, or the same options as that run")
    cfg_path.write_text(json.dumps(cfg.model_dump(mode="json"), indent=1, sort_keys=True))
    images = load_images(cfg, data_dir)
    log_path = run_dir / LOSSES
    with TeacherPool(cfg.teachers, cfg.teacher_weights, cfg.runtime) as pool:
        dims = {n: pool.specs[n].embed_dim for n in cfg.teachers}
        model = Distiller(cfg, dims)
        ckpt = run_dir / CHECKPOINT
        if ckpt.exists():
            model.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=False))
        resumed_from = model.step_index
        _trim_log(log_path, resumed_from)
        cache = None
        teacher_features = "asked every step"
        with progress_bar(show_progress) as bar:
            if cfg.teacher_cache:
                views = np.stack([fixed_global_view(im, cfg.global_size) for im in images])
                task = bar.add_task(f"teacher features ({', '.join(cfg.teachers)}), once", total=len(views), info="")
                cache = TeacherCache(pool, views, on_batch=lambda n: bar.advance(task, n), store=FeatureCache(), dataset=cfg.dataset)
                computed = [n for n in cfg.teachers if n not in cache.from_store]
                teacher_features = "; ".join(p for p in (f"{', '.join(cache.from_store)} from the feature cache" if cache.from_store else "",
                                                         f"{', '.join(computed)} computed" if computed else "") if p)
                pool.request_s.clear()  # the step timings below are about steps
            task = bar.add_task("distill", total=cfg.steps, completed=resumed_from, info="")
            times = StepTimes([], [])

            def prepare(step: int) -> tuple[Batch, dict[str, TeacherOutput]]:
                """Crops of ``step`` and their teacher features: runs in the background, one step ahead."""
                batch = make_batch(cfg, images, step, fixed_globals=cache is not None)
                return batch, (cache.lookup(batch.index) if cache is not None else pool.ask(batch.global_crops))

            with log_path.open("a") as log, ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch") as prefetch:
                ahead = prefetch.submit(prepare, resumed_from) if resumed_from < cfg.steps else None
                for step in range(resumed_from, cfg.steps):
                    waited = time.perf_counter()
                    batch, experts = ahead.result()  # type: ignore[union-attr]
                    times.teacher_wait_s.append(time.perf_counter() - waited)
                    ahead = prefetch.submit(prepare, step + 1) if step + 1 < cfg.steps else None  # the teachers work meanwhile
                    started = time.perf_counter()
                    losses = model.step(batch, experts)
                    times.student_s.append(time.perf_counter() - started)
                    log.write(json.dumps({"step": step + 1, **{k: round(v, 6) for k, v in losses.items()}}) + "\n")
                    log.flush()
                    bar.update(task, advance=1, info=" ".join(f"{k} {v:.3f}" for k, v in losses.items() if k != "total"))
                    if on_step:
                        on_step(step + 1, losses)
                    if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
                        save_checkpoint(model.state_dict(), ckpt)
        times.teacher_request_s = list(pool.request_s)
        transfer = pool.transfer
    save_checkpoint({"backbone": model.student.backbone.state_dict(), "config": cfg.model_dump(mode="json")}, run_dir / STUDENT)
    rows = [json.loads(line) for line in log_path.read_text().splitlines()]
    first, last = loss_trend(rows, cfg.teacher_temp_warmup_steps)
    return DistillResult(run_dir, cfg.steps, resumed_from, times.summary(), first, last, transfer, teacher_features)
