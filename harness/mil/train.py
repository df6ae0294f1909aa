"""Train ABMIL on slide bags: a class per slide with early stopping, or a Cox risk per case over folds.

``train_classifier`` follows GPFM's WSI protocol: Adam (lr 2e-4, weight decay 1e-4), one bag
per step drawn by class-weighted sampling (each class equally often), the model of the
epoch with the lowest validation loss kept, training stopped after ``patience`` epochs
without a better one. ``train_survival`` fits the negative Cox partial log-likelihood
(``torchsurv``, Efron ties) on batches of case bags for a fixed number of epochs, since
GPFM's survival folds have no validation part. Both are seeded: same seed, same numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from harness.mil.abmil import GatedABMIL

Bag = np.ndarray  # fp16/fp32 [N, D], usually a memory map of the feature cache


@dataclass(frozen=True)
class MilRecipe:
    epochs: int
    patience: int
    lr: float
    weight_decay: float
    hidden: int
    attention: int
    dropout: float
    batch_size: int
    seed: int


@dataclass(frozen=True)
class ClassifierResult:
    test_prob: np.ndarray  # [n_test, K]
    best_epoch: int
    best_val: float  # validation loss of the kept model
    trainable_params: int
    epochs_run: int


def _tensor(bag: Bag, device: str) -> torch.Tensor:
    return torch.from_numpy(np.asarray(bag, np.float32)).to(device)


def _model(dim: int, outputs: int, recipe: MilRecipe, device: str) -> tuple[GatedABMIL, torch.optim.Optimizer]:
    torch.manual_seed(recipe.seed)
    model = GatedABMIL(dim, outputs, recipe.hidden, recipe.attention, recipe.dropout).to(device)
    return model, torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)


@torch.no_grad()
def predict(model: nn.Module, bags: Sequence[Bag], device: str) -> np.ndarray:
    """Model outputs ``[n, outputs]`` (eval mode: no dropout)."""
    model.eval()
    return np.stack([model(_tensor(b, device))[0].float().cpu().numpy() for b in bags]) if bags else np.zeros((0, 1))


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


def train_classifier(train: Sequence[Bag], y_train: np.ndarray, val: Sequence[Bag], y_val: np.ndarray, test: Sequence[Bag],
                     num_classes: int, recipe: MilRecipe, device: str = "cpu",
                     on_epoch: Callable[[int, float, float], None] | None = None) -> ClassifierResult:
    """ABMIL for slide classes; returns the kept model's test probabilities."""
    model, opt = _model(train[0].shape[1], num_classes, recipe, device)
    counts = np.bincount(y_train, minlength=num_classes).astype(np.float64)
    weights = 1.0 / counts[y_train]
    rng = np.random.default_rng(recipe.seed)
    loss_fn = nn.CrossEntropyLoss()
    y_val_t = torch.as_tensor(y_val, dtype=torch.long)
    best = (float("inf"), 0, {k: v.detach().clone() for k, v in model.state_dict().items()})
    epoch = 0
    for epoch in range(1, recipe.epochs + 1):
        model.train()
        total = 0.0
        for i in rng.choice(len(train), size=len(train), replace=True, p=weights / weights.sum()):
            logits, _ = model(_tensor(train[i], device))
            loss = loss_fn(logits[None], torch.tensor([int(y_train[i])], device=device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
        val_loss = float(loss_fn(torch.from_numpy(predict(model, val, device)), y_val_t))
        if on_epoch:
            on_epoch(epoch, total / len(train), val_loss)
        if val_loss < best[0]:
            best = (val_loss, epoch, {k: v.detach().clone() for k, v in model.state_dict().items()})
        elif epoch - best[1] >= recipe.patience:
            break
    model.load_state_dict(best[2])
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return ClassifierResult(_softmax(predict(model, test, device)), best[1], best[0], trainable, epoch)


def train_survival(train: Sequence[Bag], time: np.ndarray, event: np.ndarray, recipe: MilRecipe, device: str = "cpu",
                   on_epoch: Callable[[int, float], None] | None = None) -> GatedABMIL:
    """ABMIL for a case's log-hazard, fitted by the Cox partial likelihood on batches of ``recipe.batch_size`` cases.

    A batch without an observed event carries no likelihood and is skipped.
    """
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torchsurv's torch.jit.script at import
        from torchsurv.loss.cox import neg_partial_log_likelihood

    model, opt = _model(train[0].shape[1], 1, recipe, device)
    rng = np.random.default_rng(recipe.seed)
    t, e = torch.as_tensor(time, dtype=torch.float32), torch.as_tensor(event, dtype=torch.bool)
    for epoch in range(1, recipe.epochs + 1):
        model.train()
        losses = []
        order = rng.permutation(len(train))
        for start in range(0, len(order), recipe.batch_size):
            idx = order[start:start + recipe.batch_size]
            if not e[idx].any():
                continue
            risk = torch.stack([model(_tensor(train[i], device))[0][0] for i in idx]).cpu()
            loss = neg_partial_log_likelihood(risk, e[idx], t[idx], ties_method="efron", reduction="mean")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        if on_epoch:
            on_epoch(epoch, float(np.mean(losses)) if losses else float("nan"))
    return model
