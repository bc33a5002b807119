"""Metrics against values worked out by hand and against naive pure-Python implementations."""
from __future__ import annotations

import math
import random
import warnings

import numpy as np
import pytest
import torch

from mtsmart.arithmetic.metrics import (
    METRICS,
    Predictions,
    acc_at_1,
    accuracy,
    compute_metrics,
    f1,
    glue_average,
    mcc,
    mrr,
    pearson,
    spearman,
)
from mtsmart.tasks.spec import KNOWN_METRICS

# ----------------------------------------------------------------------------- naive references


def naive_f1(pred, gold, positive=1):
    tp = sum(1 for p, g in zip(pred, gold) if p == positive and g == positive)
    fp = sum(1 for p, g in zip(pred, gold) if p == positive and g != positive)
    fn = sum(1 for p, g in zip(pred, gold) if p != positive and g == positive)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def naive_binary_mcc(pred, gold):
    tp = sum(1 for p, g in zip(pred, gold) if p == 1 and g == 1)
    tn = sum(1 for p, g in zip(pred, gold) if p == 0 and g == 0)
    fp = sum(1 for p, g in zip(pred, gold) if p == 1 and g == 0)
    fn = sum(1 for p, g in zip(pred, gold) if p == 0 and g == 1)
    denominator = (tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)
    return (tp * tn - fp * fn) / math.sqrt(denominator) if denominator else 0.0


def naive_pearson(x, y):
    """Textbook r = Σ(x−x̄)(y−ȳ) / sqrt(Σ(x−x̄)² Σ(y−ȳ)²)."""
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy)


def naive_average_ranks(values):
    """1-based ranks; a run of tied values all get the mean of the positions they occupy."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for position in range(start, end + 1):
            ranks[order[position]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def naive_spearman(x, y):
    return naive_pearson(naive_average_ranks(x), naive_average_ranks(y))


def naive_rank_of_target(scores, mask, target):
    """Position of the target after sorting real candidates by score, ties placed before it."""
    real = [c for c in range(len(scores)) if mask[c]]
    ahead = sorted(real, key=lambda c: (-scores[c], c == target))  # ties: others first
    return ahead.index(target) + 1


# ----------------------------------------------------------------------------- classification


def test_accuracy_by_hand():
    # matches at positions 0 and 2 of 4 -> 2/4
    assert accuracy([1, 0, 1, 1], [1, 1, 1, 0]) == 0.5


def test_f1_by_hand():
    # pred [1 1 0 0 1] vs gold [1 0 1 0 1]: TP = 2 (0, 4), FP = 1 (1), FN = 1 (2)
    # F1 = 2·2 / (2·2 + 1 + 1) = 4/6; precision = recall = 2/3 agree.
    assert f1([1, 1, 0, 0, 1], [1, 0, 1, 0, 1]) == pytest.approx(2 / 3)


def test_f1_other_positive_class():
    # positive = 0: pred [1 1 0 0 1] vs gold [1 0 1 0 1]: TP = 1 (3), FP = 1 (2), FN = 1 (1)
    # F1 = 2 / (2 + 1 + 1) = 0.5
    assert f1([1, 1, 0, 0, 1], [1, 0, 1, 0, 1], positive=0) == pytest.approx(0.5)


def test_f1_without_positive_predictions_is_zero():
    # TP = 0, FN = 2: F1 = 0 / (0 + 0 + 2) = 0
    assert f1([0, 0, 0], [1, 0, 1]) == 0.0
    # no positive anywhere: 0 / 0 -> 0.0 as sklearn's zero_division=0
    assert f1([0, 0, 0], [0, 0, 0]) == 0.0


def test_mcc_two_by_two_by_hand():
    # gold [1 1 1 1 0 0 0], pred [1 1 1 0 0 0 1]: TP = 3, FN = 1, TN = 2, FP = 1
    # MCC = (TP·TN − FP·FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN))
    #     = (6 − 1) / sqrt(4·4·3·3) = 5/12
    assert mcc([1, 1, 1, 0, 0, 0, 1], [1, 1, 1, 1, 0, 0, 0]) == pytest.approx(5 / 12)


def test_mcc_three_classes_by_hand():
    # gold [0 1 2 0], pred [0 2 2 0]: s = 4, correct c = 3, t = (2, 1, 1), p = (2, 0, 2)
    # cov = c·s − Σ t_k p_k = 12 − (4 + 0 + 2) = 6; s² − Σp² = 16 − 8 = 8; s² − Σt² = 16 − 6 = 10
    # MCC = 6 / sqrt(80)
    assert mcc([0, 2, 2, 0], [0, 1, 2, 0]) == pytest.approx(6 / math.sqrt(80))


def test_mcc_extremes_and_undefined():
    assert mcc([0, 1, 0, 1], [0, 1, 0, 1]) == pytest.approx(1.0)
    assert mcc([1, 0, 1, 0], [0, 1, 0, 1]) == pytest.approx(-1.0)
    assert mcc([1, 1, 1, 1], [0, 1, 0, 1]) == 0.0  # constant prediction: (TN+FN) = 0
    assert mcc([0, 1, 0, 1], [1, 1, 1, 1]) == 0.0  # constant gold


# ----------------------------------------------------------------------------- regression


def test_pearson_by_hand():
    # x = [1 2 3 4], y = [2 1 4 3], both means 2.5
    # dx = [-1.5 -.5 .5 1.5], dy = [-.5 -1.5 1.5 .5]: Σdx·dy = 4·0.75 = 3, Σdx² = Σdy² = 5
    # r = 3 / 5
    assert pearson([1, 2, 3, 4], [2, 1, 4, 3]) == pytest.approx(0.6)


def test_spearman_with_ties_by_hand():
    # pred [10 20 20 30] -> average ranks [1 2.5 2.5 4]; gold [1 3 2 4] -> ranks [1 3 2 4]
    # Pearson of ranks: dx = [-1.5 0 0 1.5], dy = [-1.5 .5 -.5 1.5]
    # Σdx·dy = 4.5, Σdx² = 4.5, Σdy² = 5 -> r = 4.5 / sqrt(22.5) = sqrt(0.9)
    # (the no-ties shortcut 1 − 6Σd²/(n(n²−1)) would give 0.95: ties need the rank Pearson)
    assert spearman([10, 20, 20, 30], [1, 3, 2, 4]) == pytest.approx(math.sqrt(0.9))


def test_correlations_of_constant_input_are_zero_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scipy would warn (ConstantInputWarning) and give NaN
        assert pearson([3.0, 3.0, 3.0], [1.0, 2.0, 3.0]) == 0.0
        assert spearman([1.0, 2.0, 3.0], [5.0, 5.0, 5.0]) == 0.0
        assert pearson([1.0], [2.0]) == 0.0  # one example is constant too
        assert spearman([1.0], [2.0]) == 0.0


def test_correlations_refuse_nan():
    with pytest.raises(ValueError, match="pearson"):
        pearson([1.0, float("nan")], [1.0, 2.0])
    with pytest.raises(ValueError, match="spearman"):
        spearman([1.0, 2.0], [float("inf"), 2.0])


# ----------------------------------------------------------------------------- ranking

MASK_BY_COUNT = {1: [True, False, False], 2: [True, True, False], 3: [True, True, True]}


def test_mrr_and_acc_at_1_by_hand_with_candidate_counts_one_to_three():
    scores = np.array(
        [
            [0.2, 9.0, 9.0],  # 1 candidate; absent slots score higher but are ignored -> rank 1
            [0.5, 0.1, -1e9],  # 2 candidates, target 1 below candidate 0 -> rank 2
            [0.3, 0.7, 0.3],  # 3 candidates, target 0: 0.7 above, 0.3 tied counts against -> rank 3
            [0.1, 0.9, 0.4],  # 3 candidates, target 1 strictly best -> rank 1
        ]
    )
    mask = np.array([MASK_BY_COUNT[1], MASK_BY_COUNT[2], MASK_BY_COUNT[3], MASK_BY_COUNT[3]])
    target = np.array([0, 1, 0, 1])
    # MRR = (1 + 1/2 + 1/3 + 1) / 4 = 17/24; acc@1 = 2/4
    assert mrr(scores, mask, target) == pytest.approx(17 / 24)
    assert acc_at_1(scores, mask, target) == 0.5


def test_all_tied_group_ranks_positive_last():
    # three real candidates with equal scores: pessimistic rank 3, so MRR 1/3 and acc@1 0
    scores, mask, target = np.zeros((1, 3)), np.ones((1, 3), dtype=bool), np.array([2])
    assert mrr(scores, mask, target) == pytest.approx(1 / 3)
    assert acc_at_1(scores, mask, target) == 0.0


def test_ranking_rejects_masked_target_and_bad_shapes():
    scores, mask = np.zeros((2, 3)), np.array([MASK_BY_COUNT[1], MASK_BY_COUNT[3]])
    with pytest.raises(ValueError, match=r"mrr: group 0: target slot 2 is not a real candidate"):
        mrr(scores, mask, np.array([2, 0]))
    with pytest.raises(ValueError, match=r"acc_at_1: group 1: target 3 is outside"):
        acc_at_1(scores, mask, np.array([0, 3]))
    with pytest.raises(ValueError, match=r"mrr: target must be \(G,\)"):
        mrr(scores, mask, np.array([0]))
    with pytest.raises(ValueError, match="mrr: no query groups"):
        mrr(np.zeros((0, 3)), np.zeros((0, 3), dtype=bool), np.zeros(0, dtype=np.int64))


# ----------------------------------------------------------------------------- random vs naive


def test_metrics_match_naive_implementations_on_random_inputs():
    rng = random.Random(0)
    for trial in range(30):
        n = rng.randint(2, 40)
        pred = [rng.randint(0, 1) for _ in range(n)]
        gold = [rng.randint(0, 1) for _ in range(n)]
        assert accuracy(pred, gold) == pytest.approx(sum(p == g for p, g in zip(pred, gold)) / n)
        assert f1(pred, gold) == pytest.approx(naive_f1(pred, gold))
        assert mcc(pred, gold) == pytest.approx(naive_binary_mcc(pred, gold))
        # integer-valued scores give many ties, exercising average ranks
        x = [float(rng.randint(0, 5)) for _ in range(n)]
        y = [rng.gauss(0.0, 1.0) + 0.3 * v for v in x]
        if len(set(x)) > 1:
            assert pearson(x, y) == pytest.approx(naive_pearson(x, y))
            assert spearman(x, y) == pytest.approx(naive_spearman(x, y))


def test_ranking_matches_naive_implementation_on_random_inputs():
    rng = random.Random(1)
    groups, width = 50, 4
    scores = [[float(rng.randint(0, 3)) for _ in range(width)] for _ in range(groups)]  # many ties
    mask = [[True] * rng.randint(1, width) for _ in range(groups)]
    mask = [row + [False] * (width - len(row)) for row in mask]
    target = [rng.randrange(sum(row)) for row in mask]
    ranks = [naive_rank_of_target(s, m, t) for s, m, t in zip(scores, mask, target)]
    arrays = np.array(scores), np.array(mask), np.array(target)
    assert mrr(*arrays) == pytest.approx(sum(1 / r for r in ranks) / groups)
    assert acc_at_1(*arrays) == pytest.approx(sum(r == 1 for r in ranks) / groups)


def test_mcc_and_f1_match_sklearn_multiclass():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(2)
    for _ in range(10):
        gold, pred = rng.integers(0, 3, size=30), rng.integers(0, 3, size=30)
        assert mcc(pred, gold) == pytest.approx(metrics.matthews_corrcoef(gold, pred))
        binary_gold, binary_pred = gold % 2, pred % 2
        assert f1(binary_pred, binary_gold) == pytest.approx(metrics.f1_score(binary_gold, binary_pred))


# ----------------------------------------------------------------------------- one entry point


def test_registry_covers_the_task_file_metrics():
    assert set(METRICS) == set(KNOWN_METRICS)


def test_compute_metrics_for_each_task_type():
    classification = compute_metrics(["accuracy", "f1", "mcc"], Predictions(gold=[1, 0, 1, 1], pred=[1, 1, 1, 0]))
    # TP = 2, FP = 1, FN = 1 -> F1 = 4/6; TN = 0 -> (TP·TN − FP·FN) = −1 over sqrt(3·3·1·1)
    assert classification == pytest.approx({"accuracy": 0.5, "f1": 2 / 3, "mcc": -1 / 3})
    regression = compute_metrics(["pearson", "spearman"], Predictions(gold=[2, 1, 4, 3], pred=[1, 2, 3, 4]))
    assert regression == pytest.approx({"pearson": 0.6, "spearman": 0.6})  # ranks equal the values
    ranking = Predictions(
        gold=torch.tensor([1, 0]),  # tensors work as well as arrays
        scores=torch.tensor([[0.1, 0.8, -1e9], [0.2, 0.5, 0.1]]),
        mask=torch.tensor([[True, True, False], [True, True, True]]),
    )
    # group 0: target best -> rank 1; group 1: 0.5 above 0.2 -> rank 2
    assert compute_metrics(["acc_at_1", "mrr"], ranking) == pytest.approx({"acc_at_1": 0.5, "mrr": 0.75})
    for value in (*classification.values(), *regression.values()):
        assert type(value) is float


def test_compute_metrics_errors_name_the_metric():
    with pytest.raises(ValueError, match="unknown metric"):
        compute_metrics(["bleu"], Predictions(gold=[1], pred=[1]))
    with pytest.raises(ValueError, match="f1: pred has 3 values but gold has 4"):
        compute_metrics(["f1"], Predictions(gold=[1, 0, 1, 1], pred=[1, 1, 1]))
    with pytest.raises(ValueError, match="accuracy: no examples"):
        compute_metrics(["accuracy"], Predictions(gold=[], pred=[]))
    with pytest.raises(ValueError, match="mcc: needs predictions"):
        compute_metrics(["mcc"], Predictions(gold=[1, 0]))
    with pytest.raises(ValueError, match="mrr: a ranking metric needs"):
        compute_metrics(["mrr"], Predictions(gold=[0], pred=[0]))


def test_glue_average_averages_within_an_evaluation_first():
    results = {
        "mrpc/accuracy": 0.8, "mrpc/f1": 0.9,  # -> 0.85
        "rte/accuracy": 0.6,  # -> 0.6
        "stsb/pearson": 0.7, "stsb/spearman": 0.5,  # -> 0.6
        "cola/mcc": 0.1,  # not asked for: ignored
    }
    by_eval = {"mrpc": ["accuracy", "f1"], "rte": ["accuracy"], "stsb": ["pearson", "spearman"]}
    # (0.85 + 0.6 + 0.6) / 3; a flat mean over the five values would give 0.7
    assert glue_average(results, by_eval) == pytest.approx(2.05 / 3)


def test_glue_average_errors():
    with pytest.raises(ValueError, match=r"results lack \['rte/accuracy'\]"):
        glue_average({"mrpc/f1": 0.9}, {"rte": ["accuracy"]})
    with pytest.raises(ValueError, match="no evaluations"):
        glue_average({"mrpc/f1": 0.9}, {})
    with pytest.raises(ValueError, match="'rte' lists no metrics"):
        glue_average({"mrpc/f1": 0.9}, {"rte": []})
