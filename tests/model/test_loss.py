"""train.loss: a full softmax over the catalogue where it fits, sampled negatives beyond."""

from __future__ import annotations

import copy

import pytest
import torch

from pipeline_tasks.core.errors import ParamsError
from pipeline_tasks.model import baselines, losses
from pipeline_tasks.model.trainer import Trainer


def id_only(params: dict, **train) -> dict:
    params = copy.deepcopy(params)
    params["train"].update(use_text=False, use_id_embedding=True, **train)
    return params


def test_the_full_softmax_is_the_sampled_loss_with_every_item_a_candidate_and_no_correction():
    torch.manual_seed(0)
    users = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    items = torch.nn.functional.normalize(torch.randn(12, 8), dim=-1)
    targets = torch.tensor([0, 3, 3, 7, 11])
    full = losses.full_softmax_loss(users, targets, items, 0.1)
    every = torch.arange(12)
    assert torch.allclose(full, losses.sampled_softmax_loss(users, targets, every, items, torch.zeros(12), 0.1))
    some = torch.tensor([0, 3, 7, 11])  # fewer competitors: a smaller loss
    assert losses.sampled_softmax_loss(users, targets, some, items[some], torch.zeros(4), 0.1) < full


def test_auto_takes_the_softmax_while_the_catalogue_fits(tiny_params, tiny_split):
    assert Trainer(id_only(tiny_params), tiny_split, checkpoint_dir=None).loss == "softmax"  # 24 items
    assert Trainer(id_only(tiny_params, softmax_max_items=23), tiny_split, checkpoint_dir=None).loss == "sampled"
    assert Trainer(id_only(tiny_params, loss="sampled"), tiny_split, checkpoint_dir=None).loss == "sampled"
    with pytest.raises(ParamsError, match="train.loss='full'"):
        Trainer(id_only(tiny_params, loss="full"), tiny_split, checkpoint_dir=None)


def rows_with_gradient(params: dict, root) -> int:
    """Item-ID rows that one step on the first training window moves."""
    trainer = Trainer(params, root, checkpoint_dir=None)
    inputs, targets = trainer.data.inputs[:1], trainer.data.targets[:1]
    trainer.batch_loss(inputs, targets).backward()
    grad = trainer.model.item_tower.id_embedding.weight.grad
    return int((grad.abs().sum(dim=1) > 0).sum())


def test_the_softmax_pushes_every_item_the_sampled_loss_only_its_candidates(tiny_params, tiny_split):
    """One window of at most 8 items: the sampled loss without negatives reaches only the window's
    items; the softmax reaches all 24 (each one is a negative of every position)."""
    assert rows_with_gradient(id_only(tiny_params, loss="softmax"), tiny_split) == 24
    assert rows_with_gradient(id_only(tiny_params, loss="sampled", n_negatives=0), tiny_split) <= 9


def test_sasrec_id_trains_with_the_same_loss_as_the_text_model(params):
    params = copy.deepcopy(params)
    params["train"]["loss"] = "sampled"
    assert baselines.sasrec_params(params)["train"]["loss"] == "sampled"
