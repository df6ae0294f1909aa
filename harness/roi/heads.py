"""The two ROI heads on frozen CLS embeddings: GPFM's linear probe and its kNN retrieval.

Both take ``float32 [N, D]`` embeddings and integer labels and return class
probabilities for the test embeddings; model selection uses the validation split only
(GPFM selects on its test split for most sets, see ``docs/gpfm.md``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from harness.metrics.classification import macro_auroc


@dataclass(frozen=True)
class ProbeRecipe:
    """GPFM's ``ROI_tasks/linear.py``: AdamW, cosine to ``min_lr``, early stopping on val macro AUROC."""

    epochs: int = 3000
    patience: int = 100
    lr: float = 5e-4
    min_lr: float = 1e-5
    weight_decay: float = 1e-5
    batch_size: int = 256
    seed: int = 42


@dataclass(frozen=True)
class ProbeResult:
    test_prob: np.ndarray  # [N_test, K] softmax of the selected head
    best_epoch: int  # 1-based
    best_val: float  # val macro AUROC at best_epoch
    epochs_run: int
    trainable_params: int


def _probs(head: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        return torch.softmax(head(x), dim=1).numpy()


def train_linear_probe(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray, test_x: np.ndarray,
                       num_classes: int, recipe: ProbeRecipe = ProbeRecipe(),
                       on_epoch: Callable[[int, float, float], None] | None = None) -> ProbeResult:
    """One ``nn.Linear`` (init N(0, 0.01), zero bias) trained with cross-entropy; the head with the best
    val macro AUROC is kept, and training stops ``patience`` epochs after the last improvement."""
    gen = torch.Generator().manual_seed(recipe.seed)
    x_tr, y_tr = torch.as_tensor(train_x, dtype=torch.float32), torch.as_tensor(train_y, dtype=torch.long)
    x_va, x_te = torch.as_tensor(val_x, dtype=torch.float32), torch.as_tensor(test_x, dtype=torch.float32)
    head = nn.Linear(x_tr.shape[1], num_classes)
    with torch.no_grad():
        head.weight.normal_(0.0, 0.01, generator=gen)
        head.bias.zero_()
    opt = torch.optim.AdamW(head.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=recipe.epochs, eta_min=recipe.min_lr)
    best_val, best_epoch, best_state = -math.inf, 0, {k: v.clone() for k, v in head.state_dict().items()}
    epoch = 0
    for epoch in range(1, recipe.epochs + 1):
        order = torch.randperm(len(x_tr), generator=gen)
        total = 0.0
        for start in range(0, len(order), recipe.batch_size):
            idx = order[start:start + recipe.batch_size]
            loss = nn.functional.cross_entropy(head(x_tr[idx]), y_tr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        sched.step()
        val = macro_auroc(np.asarray(val_y), _probs(head, x_va))
        val = -math.inf if val != val else val
        if val > best_val:
            best_val, best_epoch = val, epoch
            best_state = {k: v.clone() for k, v in head.state_dict().items()}
        if on_epoch:
            on_epoch(epoch, total / len(x_tr), val)
        if epoch - best_epoch >= recipe.patience:
            break
    head.load_state_dict(best_state)
    params = sum(p.numel() for p in head.parameters())
    return ProbeResult(_probs(head, x_te), best_epoch, float(best_val), epoch, params)


@dataclass(frozen=True)
class KnnResult:
    test_prob: np.ndarray  # [N_test, K] softmax of the weighted neighbour votes
    neighbour_labels: np.ndarray  # [N_test, k_max] labels of the nearest training images, nearest first


def knn_retrieval(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, num_classes: int, k_max: int = 5) -> KnnResult:
    """GPFM's ``roi_retrieval.py``: z-score with the training mean and std, Euclidean distance.

    The classifier asks the ``num_classes`` nearest neighbours; their votes weigh
    1.0, 0.9, 0.8, ... (nearest first, floored at 0.1) and the per-class sums go through a
    softmax. ``neighbour_labels`` keeps the ``max(k_max, num_classes)`` nearest for
    retrieval accuracy at k.
    """
    tr = torch.as_tensor(train_x, dtype=torch.float64)
    te = torch.as_tensor(test_x, dtype=torch.float64)
    mean, std = tr.mean(0), tr.std(0).clamp_min(1e-6)
    dist = torch.cdist((te - mean) / std, (tr - mean) / std)
    k = min(max(k_max, num_classes), len(tr))
    nearest = dist.topk(k, dim=1, largest=False).indices.numpy()
    labels = np.asarray(train_y)[nearest]
    votes = np.zeros((len(te), num_classes))
    weights = np.maximum(1.0 - 0.1 * np.arange(num_classes), 0.1)
    for rank in range(min(num_classes, k)):
        np.add.at(votes, (np.arange(len(te)), labels[:, rank]), weights[rank])
    prob = np.exp(votes - votes.max(1, keepdims=True))
    return KnnResult(prob / prob.sum(1, keepdims=True), labels)
