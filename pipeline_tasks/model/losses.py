"""The next-item losses of TextSeqRec (and SASRec-ID): a full softmax over the catalogue, or a
sampled softmax with a logQ correction where the catalogue is too large (trainer.resolve_loss)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sampled_softmax_loss(
    users: torch.Tensor,
    targets: torch.Tensor,
    candidates: torch.Tensor,
    candidate_vectors: torch.Tensor,
    log_q: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Softmax cross-entropy of each target against a shared candidate set, logQ-corrected.

    users (N, dim), targets (N,) item indices; candidates (C,) sorted unique item indices holding
    every target; candidate_vectors (C, dim); log_q (C,) log sampling probability of each candidate.
    Candidates are deduplicated, so a sampled negative equal to the positive (an accidental hit)
    is the positive's own column, never a competing one. Subtracting log q removes the popularity
    bias of popularity-sampled (and in-batch) negatives.
    """
    logits = users @ candidate_vectors.T / temperature - log_q[None, :]
    labels = torch.searchsorted(candidates, targets)
    assert bool((candidates[labels] == targets).all()), "every target must be among the candidates"
    return F.cross_entropy(logits.float(), labels)


def full_softmax_loss(
    users: torch.Tensor, targets: torch.Tensor, item_vectors: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Softmax cross-entropy of each target against every item of the catalogue.

    users (N, dim), targets (N,) item indices, item_vectors (n_items, dim). No sampling, so no
    correction: the gradient is the exact one of the ranking the evaluation does (full ranking),
    which is what lets SASRec-style models match BERT4Rec (Klenitskiy & Vasilev, RecSys 2023).
    """
    logits = users @ item_vectors.T / temperature
    return F.cross_entropy(logits.float(), targets)
