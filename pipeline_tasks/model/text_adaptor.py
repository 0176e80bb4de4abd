"""The text adaptor: pooled sentence-encoder output -> the recommender's item space.

`train.text_whitening: true` first whitens the pooled text with the catalogue's own statistics
(TextWhitening: fixed, not learned). `train.adaptor_experts: 0` then keeps one linear projection
(towers.ItemTower); n > 0 builds TextAdaptor, UniSRec's mixture of n parametric-whitening experts.
Both train on the cached pooled vectors alone (model/text_cache.py), so with `finetune: frozen` the
encoder never runs during training.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# Whitening divides each principal direction by its standard deviation. A sentence encoder's output
# has directions of (numerically) zero variance, and a catalogue smaller than the hidden size has
# more: each direction's variance is floored at this share of the mean one, so a new item's stray
# component there is amplified at most 1/sqrt(floor) times, not 1/sqrt(0). Office valid NDCG@10 by
# floor: 1e-4 0.0892, 1e-3 0.0894, 1e-2 0.0877, 5e-2 0.0860 (README, "Text whitening and length").
WHITENING_FLOOR = 1e-3


class TextWhitening(nn.Module):
    """pooled -> (pooled - mean) V diag(1 / sqrt(variance)): PCA whitening fitted once on the catalogue.

    Why: a frozen sentence encoder's vectors share a few dominant directions (on Office the mean
    vector alone holds 27% of their squared length), so cosine and a freshly initialised projection
    see mostly what every item has in common. Whitened, every direction starts with equal weight and
    the projection learns which ones predict "bought next" (Zhang et al., "Are ID embeddings
    necessary? Whitening pre-extracted text embeddings for sequential recommendation", 2023).
    Measured: README, "Text whitening and length". The statistics are buffers: saved with the
    model and in training checkpoints, copied by a warm start, never changed by training; `fit`
    sets them (the trainer, before the first step of a fresh run).
    """

    centre: torch.Tensor  # buffers, declared for the type checker
    matrix: torch.Tensor

    def __init__(self, hidden_size: int):
        super().__init__()
        self.register_buffer("centre", torch.zeros(hidden_size))
        self.register_buffer("matrix", torch.eye(hidden_size))  # the identity until fitted

    @torch.no_grad()
    def fit(self, pooled: torch.Tensor) -> None:
        """Set the statistics from (n_items, hidden) pooled text (float64: eigh of a near-singular matrix)."""
        centre, variances, directions = principal_axes(pooled)
        variances = variances.clamp(min=0.0)
        floor = WHITENING_FLOOR * float(variances.mean()) or 1.0  # an all-equal catalogue: centre only
        self.centre.copy_(centre.to(self.centre.dtype))
        self.matrix.copy_((directions / torch.sqrt(variances + floor)).to(self.matrix.dtype))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return (pooled - self.centre.to(pooled.dtype)) @ self.matrix.to(pooled.dtype)


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


def text_map(hidden_size: int, dim: int, experts: int, dropout: float, whitening: bool) -> nn.Module:
    """The item tower's pooled text -> dim map: one linear projection (0 experts) or a TextAdaptor,
    after a TextWhitening when `whitening` (then a Sequential: whitening, map)."""
    mapping = TextAdaptor(hidden_size, dim, experts, dropout) if experts else nn.Linear(hidden_size, dim)
    return nn.Sequential(TextWhitening(hidden_size), mapping) if whitening else mapping


def fit_whitening(projection: nn.Module | None, pooled: torch.Tensor) -> None:
    """Fit a text map's whitening (if it has one) on the catalogue's (n_items, hidden) pooled text."""
    if isinstance(projection, nn.Sequential) and isinstance(projection[0], TextWhitening):
        projection[0].fit(pooled)


def principal_axes(pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float64 mean, covariance eigenvalues (ascending) and eigenvectors (columns) of (n, hidden)
    pooled text: what whitening and the text start of ID rows are both built on."""
    x = pooled.detach().double()
    centre = x.mean(dim=0)
    centred = x - centre
    variances, directions = torch.linalg.eigh(centred.T @ centred / max(1, len(x) - 1))
    return centre, variances, directions


def principal_coordinates(pooled: torch.Tensor, k: int) -> torch.Tensor:
    """(n, k) float64: the centred pooled text on its top k principal directions (zero-padded past
    the catalogue's rank)."""
    centre, variances, directions = principal_axes(pooled)
    centred = pooled.detach().double() - centre
    top = directions[:, variances.argsort(descending=True)[: min(k, len(variances))]]
    coordinates = torch.zeros(len(pooled), k, dtype=torch.float64)
    coordinates[:, : top.shape[1]] = centred @ top
    return coordinates


def ids_from_text(pooled: torch.Tensor, dim: int, std: float) -> torch.Tensor | None:
    """(n_items, dim) item-ID rows that start where the text puts each item: the catalogue's pooled
    text on its top `dim` principal components, scaled so the matrix's standard deviation is `std`.

    Why: an ID embedding learns only from its item's interactions; started at random, a rare item's
    row stays near noise. Started from text (as from PCA-reduced language-model embeddings, Harte et
    al., RecSys 2023), alike items begin close and training moves every row freely from there.
    None when the texts do not differ (nothing to start from).
    """
    rows = principal_coordinates(pooled, dim)
    spread = rows.std()
    if not torch.isfinite(spread) or spread <= 1e-9:
        return None
    return (rows * (std / spread)).float()


def ids_for_new_items(pooled: torch.Tensor, rows: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """`rows` with each unknown item's row set to where the known rows' text -> ID map places its text.

    A warm night's new items: the champion's rows are kept, and a least-squares linear map from the
    text's top principal coordinates (as many as the rows have columns, plus a bias: fewer unknowns
    than a catalogue has items, where the raw hidden size may have more) to them places each new
    item among the items it reads like.
    """
    features = principal_coordinates(pooled, rows.shape[1])
    features = torch.cat([features, features.new_ones(len(features), 1)], dim=1)
    solution = torch.linalg.lstsq(features[known], rows[known].double(), driver="gelsd").solution
    out = rows.clone()
    out[~known] = (features[~known] @ solution).to(rows.dtype)
    return out
