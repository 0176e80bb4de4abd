"""Every ranking metric against numbers worked out by hand."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from pipeline_tasks.core import metrics as M

# Three users, top-3 lists over an 8-item catalogue (items 6 and 7 never recommended).
RANKED = np.array(
    [
        [4, 2, 0],  # target 2 at rank 1 (0-based)
        [1, 5, 3],  # target 1 at rank 0
        [0, 3, 4],
    ]
)  # target 5 missing
TARGETS = np.array([2, 1, 5])
CTX = M.EvalContext(n_items=8)


def test_hits_gives_zero_based_rank_or_minus_one():
    assert M.hits(RANKED, TARGETS, 3).tolist() == [1, 0, -1]
    assert M.hits(RANKED, TARGETS, 1).tolist() == [-1, 0, -1]


def test_recall_is_hit_rate_at_k():
    assert M.recall(RANKED, TARGETS, 3, CTX) == pytest.approx(2 / 3)
    assert M.recall(RANKED, TARGETS, 1, CTX) == pytest.approx(1 / 3)


def test_ndcg_discounts_by_log2_of_rank():
    expected = (1 / math.log2(3) + 1 / math.log2(2) + 0) / 3
    assert M.ndcg(RANKED, TARGETS, 3, CTX) == pytest.approx(expected)
    assert M.ndcg(RANKED, TARGETS, 1, CTX) == pytest.approx(1 / 3)


def test_mrr_averages_reciprocal_ranks_with_zero_for_misses():
    assert M.mrr(RANKED, TARGETS, 3, CTX) == pytest.approx((1 / 2 + 1 + 0) / 3)


def test_per_user_values_average_to_the_metric():
    for name, per_user in M.PER_USER.items():
        assert per_user(RANKED, TARGETS, 3).mean() == pytest.approx(M.METRICS[name](RANKED, TARGETS, 3, CTX))
    assert M.user_ndcg(RANKED, TARGETS, 3).tolist() == pytest.approx([1 / math.log2(3), 1.0, 0.0])


def test_misses_raise_no_numpy_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        M.ndcg(RANKED, TARGETS, 3, CTX)
        M.mrr(RANKED, TARGETS, 3, CTX)


def test_coverage_counts_distinct_items_in_top_k_over_catalogue():
    assert M.coverage(RANKED, TARGETS, 3, CTX) == pytest.approx(6 / 8)  # items 0..5
    assert M.coverage(RANKED, TARGETS, 1, CTX) == pytest.approx(3 / 8)  # {4, 1, 0}


def test_long_tail_share_is_share_of_slots_holding_tail_items():
    ctx = M.EvalContext(n_items=6, long_tail=np.array([False, False, True, True, True, True]))
    # top-2 slots: 4,2 | 1,5 | 0,3 -> tail items: 4,2,5,3 = 4 of 6
    assert M.long_tail_share(RANKED, TARGETS, 2, ctx) == pytest.approx(4 / 6)


def test_novelty_is_mean_self_information_with_add_one_smoothing():
    pop = np.array([3.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    ctx = M.EvalContext(n_items=6, item_popularity=pop)
    p = (pop + 1) / (pop.sum() + 6)  # [0.4, 0.2, 0.1, 0.1, 0.1, 0.1]
    top1 = [4, 1, 0]
    assert M.novelty(RANKED, TARGETS, 1, ctx) == pytest.approx(np.mean([-math.log2(p[i]) for i in top1]))


def test_empty_inputs_give_zero():
    empty = np.zeros((0, 3), dtype=int)
    for fn in M.METRICS.values():
        assert fn(empty, np.zeros(0, dtype=int), 3, CTX) == 0.0


def test_compute_all_names_every_metric_at_its_k():
    out = M.compute_all(RANKED, TARGETS, CTX, which=(("recall", 1), ("ndcg", 3)))
    assert out == {"recall@1": pytest.approx(1 / 3), "ndcg@3": pytest.approx(M.ndcg(RANKED, TARGETS, 3, CTX))}


def test_top_k_excludes_seen_items_and_breaks_ties_by_item_index():
    scores = np.array([[0.1, 0.9, 0.5, 0.5, 0.0], [1.0, 1.0, 1.0, 1.0, 1.0]])
    ranked = M.top_k(scores, [np.array([1]), np.array([], dtype=int)], 3)
    assert ranked.tolist() == [[2, 3, 0], [0, 1, 2]]


def test_top_k_caps_k_at_catalogue_size():
    assert M.top_k(np.array([[0.2, 0.1]]), [np.array([], dtype=int)], 5).tolist() == [[0, 1]]


def test_make_context_marks_all_but_the_head_share_as_long_tail():
    ctx = M.make_context(5, np.array([0, 0, 0, 3, 3, 1]), head_share=0.4)
    assert ctx.item_popularity.tolist() == [3, 1, 0, 2, 0]
    assert ctx.long_tail.tolist() == [False, True, True, False, True]


def test_ranking_length_and_metric_set_follow_evaluate_ks():
    assert M.ranking_length([10]) == 20
    assert M.ranking_length([10, 50]) == 50
    names = [f"{m}@{k}" for m, k in M.metric_set([10, 50])]
    assert names[: len(M.HEADLINE)] == [f"{m}@{k}" for m, k in M.HEADLINE]
    assert {"recall@50", "ndcg@50"} <= set(names) and len(names) == len(set(names))
