"""The heads and loss terms of GPFM's unified distillation.

Expert distillation (one :class:`ExpertHead` per teacher; the same head maps the CLS
and the patch tokens): CLS ``1 - cos``, patches ``0.9 (1 - cos) + 0.1 SmoothL1`` against the
teacher grid resized bicubically to the student's. Self-distillation (DINOv2): DINO on
the CLS of every crop against the EMA teacher's global crops, iBOT on masked patch
tokens, both through one shared :class:`DinoHead` with softmax centering, and KoLeo on
the student's global CLS.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ExpertHead(nn.Module):
    """GPFM's ``DINOHead(nlayers=1)`` per teacher: Linear to the bottleneck, L2-normalise, weight-normed Linear to the teacher's width."""

    def __init__(self, dim: int, teacher_dim: int, bottleneck: int = 256) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, bottleneck)
        self.last = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck, teacher_dim, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(F.normalize(self.proj(x), dim=-1))


class DinoHead(nn.Module):
    """DINOv2's projection head: a 3-layer MLP to the bottleneck, L2-normalise, weight-normed prototypes."""

    def __init__(self, dim: int, prototypes: int, hidden: int, bottleneck: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, bottleneck))
        self.last_layer = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck, prototypes, bias=False))
        with torch.no_grad():
            self.last_layer.parametrizations.weight.original0.fill_(1.0)
        self.last_layer.parametrizations.weight.original0.requires_grad_(False)  # DINO fixes the weight-norm gain at 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))


def cls_cosine_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """GPFM's ``radio`` CLS loss: 1 - mean cosine similarity."""
    return 1.0 - F.cosine_similarity(student, teacher, dim=-1).mean()


def resize_grid(teacher: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Teacher tokens ``[B, h, w, D]`` bicubically resized to the student's grid, returned as ``[B, H*W, D]``."""
    if teacher.shape[1:3] != grid:
        teacher = F.interpolate(teacher.permute(0, 3, 1, 2), size=grid, mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
    return teacher.reshape(teacher.shape[0], -1, teacher.shape[-1])


def patch_feature_loss(student: torch.Tensor, teacher: torch.Tensor, cos_weight: float = 0.9, l1_weight: float = 0.1) -> torch.Tensor:
    """GPFM's ``FeatureLoss``: ``cos_weight (1 - mean cos) + l1_weight SmoothL1`` (beta 1, mean)."""
    cos = 1.0 - F.cosine_similarity(student, teacher, dim=-1).mean()
    return cos_weight * cos + l1_weight * F.smooth_l1_loss(student, teacher)


def centered_softmax(logits: torch.Tensor, center: torch.Tensor, temp: float) -> torch.Tensor:
    return F.softmax((logits - center) / temp, dim=-1)


def dino_loss(student_logits: list[torch.Tensor], teacher_probs: list[torch.Tensor], student_temp: float) -> torch.Tensor:
    """Cross-entropy of every student crop against each teacher global crop except its own view."""
    total, pairs = student_logits[0].new_zeros(()), 0
    for t_index, t in enumerate(teacher_probs):
        for s_index, s in enumerate(student_logits):
            if s_index == t_index:
                continue
            total = total + torch.sum(-t * F.log_softmax(s / student_temp, dim=-1), dim=-1).mean()
            pairs += 1
    return total / max(pairs, 1)


def ibot_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, masks: torch.Tensor, student_temp: float) -> torch.Tensor:
    """Cross-entropy on masked patches (``[N, P, K]`` logits and probs, ``bool [N, P]`` masks); per-image mean, then over masked images."""
    if not masks.any():
        return student_logits.new_zeros(())
    per_token = torch.sum(-teacher_probs * F.log_softmax(student_logits / student_temp, dim=-1), dim=-1)
    counts = masks.sum(1)
    per_image = (per_token * masks).sum(1) / counts.clamp_min(1)
    return per_image[counts > 0].mean()


def koleo_loss(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Kozachenko-Leonenko entropy estimator: ``-mean log`` of each normalised vector's nearest-neighbour distance."""
    if len(x) < 2:
        return x.new_zeros(())
    x = F.normalize(x, dim=-1, eps=eps)
    dots = x @ x.t()
    dots.fill_diagonal_(-2.0)
    nearest = dots.argmax(dim=1)
    dist = (x - x[nearest]).norm(dim=-1)
    return -torch.log(dist + eps).mean()
