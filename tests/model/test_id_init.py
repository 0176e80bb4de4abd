"""Item-ID rows started from text (train.id_init=text): the catalogue text's principal components on a
fresh run, kept on a resume, and on a warm night a new item placed where the champion's rows map its text."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from pipeline_tasks.core.errors import ParamsError
from pipeline_tasks.model import baselines, fitting
from pipeline_tasks.model.text_adaptor import ids_for_new_items, ids_from_text
from pipeline_tasks.model.trainer import Trainer


def test_text_rows_are_the_top_principal_components_scaled_to_the_asked_spread():
    g = torch.Generator().manual_seed(0)
    pooled = 2.0 + torch.randn(300, 12, generator=g) * torch.logspace(0, -2, 12)
    rows = ids_from_text(pooled, dim=4, std=0.3)
    assert rows is not None and rows.shape == (300, 4)
    assert float(rows.std()) == pytest.approx(0.3, rel=1e-4)
    # The columns are uncorrelated projections, strongest first: the text's main directions.
    covariance = torch.cov(rows.double().T)
    assert (covariance - torch.diag(torch.diagonal(covariance))).abs().max() < 1e-6
    assert (torch.diagonal(covariance).diff() < 0).all()
    # Identical texts start at the same row.
    same = ids_from_text(torch.cat([pooled[:1], pooled]), dim=4, std=0.3)
    assert same is not None and torch.allclose(same[0], same[1], atol=1e-6)


def test_a_dim_wider_than_the_catalogue_pads_and_identical_texts_give_no_start():
    rows = ids_from_text(torch.randn(3, 5), dim=8, std=0.1)
    assert rows is not None and rows.shape == (3, 8) and torch.isfinite(rows).all()
    assert ids_from_text(torch.ones(6, 5), dim=4, std=0.1) is None


def test_new_items_land_where_the_known_rows_map_their_text():
    g = torch.Generator().manual_seed(1)
    # Text that varies in 3 directions of 6 (the map reads the top principal coordinates, as many
    # as the rows have columns).
    pooled = torch.randn(40, 3, generator=g) @ torch.randn(3, 6, generator=g) + 5.0
    mapping, bias = torch.randn(6, 3, generator=g), torch.randn(3, generator=g)
    truth = pooled @ mapping + bias
    known = torch.ones(40, dtype=torch.bool)
    known[[3, 17, 31]] = False
    rows = truth.clone()
    rows[~known] = 0.0  # a warm night's new items start at zero
    placed = ids_for_new_items(pooled, rows, known)
    torch.testing.assert_close(placed, truth, atol=1e-4, rtol=1e-4)
    assert torch.equal(placed[known], truth[known])  # the champion's rows are kept as they are


@pytest.fixture
def text_started(tiny_params):
    params = copy.deepcopy(tiny_params)
    params["train"].update(finetune="frozen", id_init="text", id_init_std=0.3, epochs=1, dropout=0.0)
    return params


def topic_of(item_id: str) -> str:
    return item_id[1]  # conftest.item_table: i<topic><j>


def test_an_id_only_model_starts_from_its_catalogue_text(text_started, tiny_split):
    params = copy.deepcopy(text_started)
    params["train"]["use_text"] = False
    trainer = Trainer(params, tiny_split, checkpoint_dir=None)
    trainer.start_ids_from_text()
    rows = trainer.model.item_tower.id_embedding.weight.detach()
    expected = ids_from_text(trainer.text_table_for_ids().cpu(), rows.shape[1], 0.3)
    assert expected is not None
    torch.testing.assert_close(rows, expected)
    # The tiny catalogue's texts name their topic: rows of one topic start closer than rows of two.
    unit = F.normalize(rows, dim=-1)
    topics = [topic_of(item) for item in trainer.data.item_ids]
    same = [float(unit[a] @ unit[b]) for a in range(len(topics)) for b in range(a) if topics[a] == topics[b]]
    other = [float(unit[a] @ unit[b]) for a in range(len(topics)) for b in range(a) if topics[a] != topics[b]]
    assert min(same) > max(other) - 1e-6 or sum(same) / len(same) > sum(other) / len(other) + 0.5
    # The ID baseline stays an ID baseline: SASRec-ID never starts from text.
    assert baselines.sasrec_params(params)["train"]["id_init"] == "random"


def test_a_random_start_and_a_text_start_differ_only_in_the_id_rows(text_started, tiny_split):
    random_start = copy.deepcopy(text_started)
    random_start["train"]["id_init"] = "random"
    a, b = Trainer(text_started, tiny_split, None), Trainer(random_start, tiny_split, None)
    a.start_ids_from_text()
    b.start_ids_from_text()
    assert not torch.equal(a.model.item_tower.id_embedding.weight, b.model.item_tower.id_embedding.weight)
    torch.testing.assert_close(a.model.item_tower.projection.weight, b.model.item_tower.projection.weight)


def test_a_resumed_run_keeps_its_trained_rows(text_started, tiny_split, tmp_path):
    first = Trainer(text_started, tiny_split, checkpoint_dir=tmp_path / "ckpt")
    first.train(None)
    first.save_checkpoint()
    trained = first.model.item_tower.id_embedding.weight.detach().clone()
    resumed = Trainer(text_started, tiny_split, checkpoint_dir=tmp_path / "ckpt")
    resumed.resume()
    resumed.train(None)  # the run had finished: nothing to do, and no second start from text
    assert torch.equal(resumed.model.item_tower.id_embedding.weight.detach(), trained)


def test_a_warm_night_places_an_id_only_models_new_items_by_their_text(text_started, tiny_split, tmp_path):
    params = copy.deepcopy(text_started)
    params["train"].update(use_text=False, warm_epochs=1)
    fitting.fit(params, tiny_split, output_dir=tmp_path / "champion")
    # Make the champion one that never saw three items (one of each of three topics): its ID list
    # drops them, so tonight they are new (rows are matched by item id, warm_start.rows_by_item_id).
    ids_file = tmp_path / "champion" / "item_ids.json"
    champion_ids = json.loads(ids_file.read_text())
    new = [item for item in champion_ids if item.endswith("5")][:3]
    ids_file.write_text(json.dumps([item for item in champion_ids if item not in new]))

    warm = Trainer(params, tiny_split, checkpoint_dir=None, warm_from=tmp_path / "champion")
    before = warm.model.item_tower.id_embedding.weight.detach().clone()
    position = {item: row for row, item in enumerate(warm.data.item_ids)}
    assert all(float(before[position[item]].abs().sum()) == 0.0 for item in new), "new rows start at zero"
    warm.start_ids_from_text()
    rows = F.normalize(warm.model.item_tower.id_embedding.weight.detach(), dim=-1)
    kept = [row for item, row in position.items() if item not in new]
    assert torch.equal(warm.model.item_tower.id_embedding.weight.detach()[kept], before[kept])
    known = torch.tensor([item not in new for item in warm.data.item_ids])
    expected = ids_for_new_items(warm.text_table_for_ids().cpu(), before, known)
    torch.testing.assert_close(warm.model.item_tower.id_embedding.weight.detach(), expected)
    # The map itself is checked exactly in test_new_items_land_where_the_known_rows_map_their_text;
    # the tiny random encoder's texts are too alike for a topic check here.
    assert all(float(rows[position[item]].norm()) > 0.5 for item in new), "every new item has a direction"


def test_an_id_only_model_started_from_text_says_it_needs_the_encoder(text_started, tiny_split):
    params = copy.deepcopy(text_started)
    params["train"].update(use_text=False, encoder="/no/such/encoder")
    with pytest.raises(ParamsError, match=r"train.id_init=text reads the item text .* or set train.id_init=random"):
        fitting.fit(params, tiny_split)
    params["train"]["id_init"] = "random"  # at random it needs no encoder
    assert fitting.fit(params, tiny_split)["epochs"] == 1


def test_an_unknown_id_start_is_refused_with_the_choices(text_started, tiny_split):
    params = copy.deepcopy(text_started)
    params["train"]["id_init"] = "pca"
    with pytest.raises(ParamsError, match="train.id_init='pca' is unknown; use one of random, text"):
        Trainer(params, tiny_split, None)
