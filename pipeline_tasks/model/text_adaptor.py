"""The text adaptor: pooled sentence-encoder output -> the recommender's item space.

`train.adaptor_experts: 0` keeps one linear projection (towers.ItemTower); n > 0 builds TextAdaptor,
UniSRec's mixture of n parametric-whitening experts. It trains on the cached pooled vectors alone
(model/text_cache.py), so with `finetune: frozen` the encoder never runs during training.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class TextAdaptor(nn.Module):
    """UniSRec's MoE adaptor (Hou et al., KDD 2022): n experts, each a parametric whitening of the
    pooled text ((x - b_k) W_k, a learned centre and a linear map), mixed by a softmax gate over x.

    Why: a sentence encoder's space is anisotropic (all vectors share a large common direction) and
    made for sentence similarity, not for "bought next"; whitening re-centres it and the experts
    let different kinds of items (say, ink and furniture) take different maps. It trains on the
    cached pooled vectors alone, so the encoder never runs in training (finetune: frozen).
    The gate is noisy while training (learned noise scale, as in UniSRec) so every expert learns.
    """

    def __init__(self, hidden_size: int, dim: int, n_experts: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.centres = nn.Parameter(torch.zeros(n_experts, hidden_size))
        self.maps = nn.Parameter(torch.empty(n_experts, hidden_size, dim))
        for k in range(n_experts):  # each expert starts as nn.Linear's default map would
            nn.init.kaiming_uniform_(self.maps.data[k].T, a=math.sqrt(5))
        self.gate = nn.Parameter(torch.zeros(hidden_size, n_experts))
        self.gate_noise = nn.Parameter(torch.zeros(hidden_size, n_experts))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """(n, hidden) pooled text -> (n, dim)."""
        x = self.dropout(pooled)
        logits = x @ self.gate
        if self.training:
            logits = logits + torch.randn_like(logits) * (F.softplus(x @ self.gate_noise) + 1e-2)
        weights = torch.softmax(logits, dim=-1)  # (n, experts)
        experts = torch.einsum("nkh,khd->nkd", x[:, None, :] - self.centres[None], self.maps)
        return (weights.unsqueeze(-1) * experts).sum(dim=1)
