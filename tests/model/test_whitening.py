"""Text whitening (train.text_whitening): fitted once on the catalogue's pooled text, never trained,
saved with the model, kept by a warm night, and harmless to an item the catalogue did not span."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from pipeline_tasks.data.dataset import load_split
from pipeline_tasks.model import fitting, warm_start
from pipeline_tasks.model import recommender as M
from pipeline_tasks.model.text_adaptor import WHITENING_FLOOR, TextWhitening
from pipeline_tasks.model.training_data import item_text


def anisotropic(n: int, hidden: int, seed: int = 0) -> torch.Tensor:
    """Vectors that share a large common direction and have very unequal variances (as a sentence encoder's)."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.logspace(0, -3, hidden)  # variances 1 .. 1e-6: the weakest are below the floor
    return 1.0 + torch.randn(n, hidden, generator=g) * scales


def test_whitened_catalogue_vectors_are_centred_and_decorrelated_with_variance_v_over_v_plus_floor():
    pooled = anisotropic(500, 16)
    whitening = TextWhitening(16)
    assert torch.equal(whitening(pooled), pooled), "the identity until fitted"
    whitening.fit(pooled)
    out = whitening(pooled).double()
    assert out.mean(dim=0).abs().max() < 1e-4  # float32 buffers
    covariance = torch.cov(out.T)
    off_diagonal = covariance - torch.diag(torch.diagonal(covariance))
    assert off_diagonal.abs().max() < 1e-4
    # Each principal direction's variance v becomes v / (v + floor): 1 for the strong ones, and the
    # weak ones (below the floor) are damped rather than amplified to 1.
    variances = torch.linalg.eigvalsh(torch.cov(pooled.double().T))
    floor = WHITENING_FLOOR * float(variances.mean())
    np.testing.assert_allclose(torch.diagonal(covariance).numpy(), (variances / (variances + floor)).numpy(), rtol=1e-3)
    assert float(covariance[-1, -1]) > 0.95 and float(covariance[0, 0]) < 0.05


def test_a_direction_the_catalogue_never_varies_in_is_not_blown_up():
    # A catalogue smaller than the hidden size: most directions have no variance at all.
    pooled = anisotropic(5, 32)
    whitening = TextWhitening(32)
    whitening.fit(pooled)
    stray = pooled.mean(dim=0) + torch.randn(32) * 1e-3  # a new item: the mean plus a little of everything
    mean_variance = float(torch.linalg.eigvalsh(torch.cov(pooled.double().T)).clamp(min=0).mean())
    # No direction is divided by less than the floor's standard deviation.
    bound = 1e-3 * 32**0.5 * 3 / (WHITENING_FLOOR * mean_variance) ** 0.5
    assert float(whitening(stray).norm()) < bound
    assert torch.isfinite(whitening(stray)).all()


@pytest.fixture
def whitened_model(tiny_params, tiny_split, tmp_path):
    params = copy.deepcopy(tiny_params)
    params["train"].update(finetune="frozen", text_whitening=True, epochs=2)
    fitting.fit(params, tiny_split, output_dir=tmp_path / "model")
    return params, tiny_split, tmp_path / "model"


def test_training_fits_the_whitening_on_the_catalogue_and_serving_applies_it(whitened_model):
    params, root, model_dir = whitened_model
    rec = M.Recommender.load(model_dir)
    assert json.loads((model_dir / "config.json").read_text())["text_whitening"] is True
    whitening, projection = rec.model.item_tower.projection
    assert isinstance(whitening, TextWhitening) and isinstance(projection, torch.nn.Linear)
    items = load_split(root).items  # a loaded model keeps no texts: the split's catalogue
    by_id = {r["item_id"]: item_text(r) for r in items.to_dict(orient="records")}
    texts = [by_id[i] for i in rec.item_ids]
    # Fitted, not the identity, and exactly the catalogue's statistics: training never moved them.
    pooled = rec.model.encode_pooled(rec.model.tokenize(texts))
    expected = TextWhitening(whitening.matrix.shape[0])
    expected.fit(pooled)
    torch.testing.assert_close(whitening.matrix, expected.matrix, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(whitening.centre, expected.centre)
    # Serving an item from its text (a cold item's path) goes through the same whitening.
    indices = list(range(len(rec.item_ids)))
    np.testing.assert_allclose(rec.encode_items(texts, indices), rec.item_table, atol=1e-4)


def test_a_warm_night_keeps_the_champions_whitening_and_a_raw_champion_cannot_seed(whitened_model, tmp_path):
    params, root, champion_dir = whitened_model
    champion = M.Recommender.load(champion_dir).model.item_tower.projection[0]
    params = copy.deepcopy(params)
    params["train"].update(epochs=1, warm_epochs=1)
    fitting.fit_final(params, root, output_dir=tmp_path / "warm", checkpoint_dir=None, warm_from=champion_dir)
    warm = M.Recommender.load(tmp_path / "warm").model.item_tower.projection[0]
    # The projection learnt on the champion's whitening; refitting it would move every text vector.
    assert torch.equal(warm.matrix, champion.matrix) and torch.equal(warm.centre, champion.centre)

    config = warm_start.saved_config(champion_dir)
    raw = {**params["train"], "text_whitening": False}
    assert "text_whitening True vs False" in (warm_start.mismatch(config, raw) or "")
    del config["text_whitening"]  # a model saved before whitening existed was raw
    assert "text_whitening False vs True" in (warm_start.mismatch(config, params["train"]) or "")


def test_a_checkpoint_keeps_the_fitted_whitening_for_a_resumed_run(tiny_params, tiny_split, tmp_path):
    from pipeline_tasks.model.trainer import Trainer

    params = copy.deepcopy(tiny_params)
    params["train"].update(finetune="frozen", text_whitening=True, epochs=1)
    first = Trainer(params, tiny_split, checkpoint_dir=tmp_path / "ckpt")
    first.train(None)
    first.save_checkpoint()
    fitted = first.model.item_tower.projection[0].matrix
    assert not torch.equal(fitted, torch.eye(fitted.shape[0]))
    resumed = Trainer(params, tiny_split, checkpoint_dir=tmp_path / "ckpt")
    resumed.resume()
    # A resumed run never refits (its text table may have moved with a trained encoder): the buffers
    # come from the checkpoint, or its weights would meet another whitening than they learnt on.
    assert torch.equal(resumed.model.item_tower.projection[0].matrix, fitted)
