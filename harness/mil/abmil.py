"""Gated-attention ABMIL (Ilse et al. 2018), as GPFM's ``att_mil`` and CLAM build it.

A bag of tile embeddings ``[N, D]`` is projected (Linear, ReLU, dropout), each tile gets
an attention score from a tanh branch gated by a sigmoid branch, and the softmax-weighted
sum of the projected tiles is classified. One output is a Cox log-hazard (wsi-survival);
K outputs are class logits (wsi-abmil). The attention weights say which tiles decided.
"""

from __future__ import annotations

import torch
from torch import nn


class GatedABMIL(nn.Module):
    def __init__(self, dim: int, outputs: int, hidden: int = 512, attention: int = 256, dropout: float = 0.25) -> None:
        super().__init__()
        self.project = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.tanh = nn.Sequential(nn.Linear(hidden, attention), nn.Tanh(), nn.Dropout(dropout))
        self.gate = nn.Sequential(nn.Linear(hidden, attention), nn.Sigmoid(), nn.Dropout(dropout))
        self.score = nn.Linear(attention, 1)
        self.head = nn.Linear(hidden, outputs)

    def forward(self, bag: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``bag [N, D]`` -> outputs ``[outputs]`` and attention ``[N]`` (sums to 1)."""
        h = self.project(bag)
        attention = torch.softmax(self.score(self.tanh(h) * self.gate(h)).squeeze(-1), dim=0)
        return self.head(attention @ h), attention
