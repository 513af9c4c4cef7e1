"""Vectorised ranking metrics against a slow per-query reference, on hand-built and seeded cases."""

from __future__ import annotations

import numpy as np
import pytest

from model.evaluate import EvaluationError, evaluate_rank, format_table


def reference_metrics(scores: np.ndarray, q_pids: np.ndarray, g_pids: np.ndarray, max_rank: int) -> dict:
    """Rank each query with a plain loop: sort by descending score, ties by ascending gallery index."""
    cmc_total = [0.0] * max_rank
    ap_total = inp_total = 0.0
    valid = 0
    for q in range(len(q_pids)):
        ranking = sorted(range(len(g_pids)), key=lambda g, q=q: (-scores[q, g], g))
        relevant = [g_pids[g] == q_pids[q] for g in ranking]
        if not any(relevant):
            continue
        valid += 1
        first_hit = relevant.index(True)  # 0-based rank of the first match
        for k in range(max_rank):
            cmc_total[k] += 1.0 if first_hit <= k else 0.0
        precisions = []
        hits = 0
        for position, is_relevant in enumerate(relevant, start=1):
            if is_relevant:
                hits += 1
                precisions.append(hits / position)
        ap_total += sum(precisions) / len(precisions)
        last_position = max(p for p, r in enumerate(relevant, start=1) if r)
        inp_total += sum(relevant) / last_position
    return {
        "cmc": [c / valid for c in cmc_total],
        "mAP": ap_total / valid,
        "mINP": inp_total / valid,
        "valid": valid,
    }


def assert_matches_reference(scores, q_pids, g_pids, max_rank=10):
    scores, q_pids, g_pids = np.asarray(scores, dtype=np.float64), np.asarray(q_pids), np.asarray(g_pids)
    fast = evaluate_rank(scores, q_pids, g_pids, max_rank=max_rank)
    slow = reference_metrics(scores, q_pids, g_pids, max_rank)
    # Both sum the same float64 terms in different orders: agreement to 1e-12 is rounding only.
    np.testing.assert_allclose(fast.cmc, slow["cmc"], rtol=0, atol=1e-12)
    assert fast.mAP == pytest.approx(slow["mAP"], abs=1e-12)
    assert fast.mINP == pytest.approx(slow["mINP"], abs=1e-12)
    assert fast.valid_queries == slow["valid"]
    return fast


def test_single_query_by_hand():
    # Gallery ranked by score: g2 (pid 1), g0 (pid 0), g3 (pid 1), g1 (pid 2). Query pid 1.
    scores = np.array([[0.5, 0.1, 0.9, 0.3]])
    metrics = assert_matches_reference(scores, [1], [0, 2, 1, 1], max_rank=4)
    assert metrics.cmc.tolist() == [1.0, 1.0, 1.0, 1.0]
    # Relevant at positions 1 and 3: AP = (1/1 + 2/3) / 2; INP = 2 relevant / last at position 3.
    assert metrics.mAP == pytest.approx((1 + 2 / 3) / 2)
    assert metrics.mINP == pytest.approx(2 / 3)


def test_ties_keep_gallery_order():
    # All scores tie, so the ranking is the gallery order: the relevant item at index 2 ranks third.
    scores = np.zeros((1, 4))
    metrics = assert_matches_reference(scores, [7], [1, 2, 7, 3], max_rank=4)
    assert metrics.cmc.tolist() == [0.0, 0.0, 1.0, 1.0]
    assert metrics.mAP == pytest.approx(1 / 3)
    assert metrics.mINP == pytest.approx(1 / 3)


def test_ties_between_relevant_and_not():
    # g0 and g3 tie at the top; g0 (irrelevant) ranks first because its index is lower.
    scores = np.array([[0.8, 0.2, 0.2, 0.8, 0.5]])
    metrics = assert_matches_reference(scores, [4], [9, 4, 9, 4, 9], max_rank=5)
    # Ranking: g0, g3, g4, g1, g2 -> relevant at positions 2 and 4.
    assert metrics.cmc.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0]
    assert metrics.mAP == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert metrics.mINP == pytest.approx(2 / 4)


def test_several_queries_several_relevant():
    scores = np.array(
        [
            [0.9, 0.8, 0.7, 0.6, 0.5, 0.4],
            [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
            [0.3, 0.3, 0.9, 0.3, 0.1, 0.3],
        ]
    )
    q_pids = [0, 1, 2]
    g_pids = [0, 1, 2, 0, 1, 2]
    metrics = assert_matches_reference(scores, q_pids, g_pids, max_rank=6)
    # Query 0 finds pid 0 first; query 1 finds pid 1 second (g5 pid 2 first); query 2 first.
    assert metrics.cmc[0] == pytest.approx(2 / 3)
    assert metrics.cmc[1] == pytest.approx(1.0)


def test_query_without_relevant_item_is_left_out():
    scores = np.array([[0.9, 0.1], [0.2, 0.8]])
    metrics = assert_matches_reference(scores, [0, 5], [0, 1], max_rank=2)
    assert metrics.valid_queries == 1
    assert metrics.num_queries == 2
    assert metrics.cmc.tolist() == [1.0, 1.0]


def test_no_relevant_item_at_all_raises():
    with pytest.raises(EvaluationError, match="none of the 2 queries"):
        evaluate_rank(np.zeros((2, 2)), [5, 6], [0, 1])


def test_shape_mismatch_raises():
    with pytest.raises(EvaluationError, match=r"shape \(num_query, num_gallery\) = \(2, 3\)"):
        evaluate_rank(np.zeros((2, 2)), [0, 1], [0, 1, 2])


def test_gallery_shorter_than_max_rank():
    scores = np.array([[0.1, 0.9]])
    metrics = assert_matches_reference(scores, [0], [0, 1], max_rank=5)
    assert metrics.cmc.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("seed", range(6))
def test_random_cases_match_reference(seed):
    rng = np.random.default_rng(seed)
    num_query, num_gallery, num_ids = rng.integers(5, 40), rng.integers(5, 60), rng.integers(2, 12)
    q_pids = rng.integers(0, num_ids, num_query)
    g_pids = rng.integers(0, num_ids, num_gallery)
    # Rounded scores make ties frequent, so the tie rule is exercised on every seed.
    scores = np.round(rng.normal(size=(num_query, num_gallery)), 1)
    assert_matches_reference(scores, q_pids, g_pids, max_rank=10)


def test_blocks_of_queries_agree(monkeypatch):
    rng = np.random.default_rng(11)
    scores = np.round(rng.normal(size=(50, 30)), 1)
    q_pids, g_pids = rng.integers(0, 6, 50), rng.integers(0, 6, 30)
    whole = evaluate_rank(scores, q_pids, g_pids)
    monkeypatch.setattr("model.evaluate.QUERY_BLOCK", 7)
    blocked = evaluate_rank(scores, q_pids, g_pids)
    np.testing.assert_allclose(blocked.cmc, whole.cmc, atol=1e-12)
    assert blocked.mAP == pytest.approx(whole.mAP, abs=1e-12)
    assert blocked.mINP == pytest.approx(whole.mINP, abs=1e-12)


def test_summary_and_table_in_percent():
    metrics = evaluate_rank(np.array([[0.5, 0.1, 0.9, 0.3]]), [1], [0, 2, 1, 1], max_rank=10)
    summary = metrics.summary()
    assert summary["rank1"] == 100.0
    assert summary["mAP"] == pytest.approx(83.33, abs=0.01)
    table = format_table({"text_to_image": summary, "image_to_image": None})
    assert "text->image" in table
    assert "83.33" in table
