"""Evaluation metrics of the task files (`metrics:` key), GLUE conventions, numpy/scipy only.

Every metric returns a Python float on the ×1 scale (0.871, not 87.1):
- accuracy, f1, acc_at_1, mrr lie in [0, 1];
- mcc, pearson, spearman lie in [-1, 1] (a worse-than-chance model is negative).

Undefined values are 0.0, never NaN, so one degenerate evaluation cannot turn a GLUE average
into NaN: MCC with a constant prediction or constant gold (as sklearn), F1 with no positive
prediction and no positive gold (sklearn's zero_division=0), and Pearson / Spearman with a
constant input (no association can be measured; scipy would return NaN and warn).

All metrics go through one call, `compute_metrics(names, Predictions(...))`:
- classification: `Predictions(gold=labels, pred=class_ids)`, both (N,);
- regression: `Predictions(gold=scores, pred=predicted_scores)`, both (N,);
- ranking: `Predictions(gold=target, scores=grid, mask=candidate_mask)` with the (G, C) score
  grid of `Ranking.task_output`, the (G, C) bool mask of real candidates and the (G,) index of
  each group's positive candidate (the batch's ranking labels).
Arrays may be numpy arrays or CPU tensors (anything `np.asarray` accepts).

Results of several evaluations share one dict under keys "<eval name>/<metric>", e.g.
"mrpc/f1"; `glue_average` reads that format.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import scipy.stats


@dataclass(frozen=True)
class Predictions:
    """What a model produced for one evaluation, with the gold answers.

    gold: (N,) class ids or scores; for ranking, (G,) index of each group's positive candidate.
    pred: (N,) predicted class ids or scores; not used by the ranking metrics.
    scores: (G, C) float ranking scores; values in absent slots are ignored.
    mask: (G, C) bool, True where a group has a real candidate.
    """

    gold: Any
    pred: Any = None
    scores: Any = None
    mask: Any = None


# ----------------------------------------------------------------------------- input checks


def _pair(name: str, pred: Any, gold: Any) -> tuple[np.ndarray, np.ndarray]:
    """pred and gold as equal-length, non-empty 1-D arrays; ValueError naming the metric."""
    if pred is None:
        raise ValueError(f"{name}: needs predictions (Predictions.pred is None)")
    pred, gold = np.asarray(pred), np.asarray(gold)
    if pred.ndim != 1 or gold.ndim != 1:
        raise ValueError(f"{name}: pred and gold must be 1-D, got shapes {pred.shape} and {gold.shape}")
    if len(pred) != len(gold):
        raise ValueError(f"{name}: pred has {len(pred)} values but gold has {len(gold)}")
    if len(pred) == 0:
        raise ValueError(f"{name}: no examples (empty pred and gold)")
    return pred, gold


def _real_pair(name: str, pred: Any, gold: Any) -> tuple[np.ndarray, np.ndarray]:
    """As `_pair`, as float64, refusing NaN / inf (which would make a correlation NaN)."""
    pred, gold = _pair(name, pred, gold)
    pred, gold = pred.astype(np.float64), gold.astype(np.float64)
    if not (np.isfinite(pred).all() and np.isfinite(gold).all()):
        raise ValueError(f"{name}: pred and gold must be finite numbers (found NaN or inf)")
    return pred, gold


def _ranking_inputs(name: str, scores: Any, mask: Any, target: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """scores (G, C) float64, mask (G, C) bool, target (G,) int64, checked for consistency."""
    if scores is None or mask is None:
        raise ValueError(f"{name}: a ranking metric needs Predictions.scores and Predictions.mask")
    scores, mask, target = np.asarray(scores, dtype=np.float64), np.asarray(mask), np.asarray(target)
    if scores.ndim != 2 or mask.shape != scores.shape:
        raise ValueError(f"{name}: scores and mask must both be (G, C), got {scores.shape} and {mask.shape}")
    if mask.dtype != np.bool_:
        raise ValueError(f"{name}: mask must be bool, got dtype {mask.dtype}")
    if target.shape != (scores.shape[0],):
        raise ValueError(f"{name}: target must be (G,) = ({scores.shape[0]},), got {target.shape}")
    if scores.shape[0] == 0:
        raise ValueError(f"{name}: no query groups (G = 0)")
    if not np.issubdtype(target.dtype, np.integer):
        raise ValueError(f"{name}: target must hold integer candidate indices, got dtype {target.dtype}")
    groups = np.arange(scores.shape[0])
    outside = (target < 0) | (target >= scores.shape[1])
    if outside.any():
        g = int(groups[outside][0])
        raise ValueError(f"{name}: group {g}: target {int(target[g])} is outside 0..{scores.shape[1] - 1}")
    absent = ~mask[groups, target]
    if absent.any():
        g = int(groups[absent][0])
        raise ValueError(f"{name}: group {g}: target slot {int(target[g])} is not a real candidate (mask is False)")
    if np.isnan(scores[mask]).any():
        raise ValueError(f"{name}: scores of real candidates hold NaN")
    return scores, mask, target.astype(np.int64)


# ----------------------------------------------------------------------------- classification


def accuracy(pred: Any, gold: Any) -> float:
    """Fraction of examples with pred == gold. pred, gold: (N,)."""
    pred, gold = _pair("accuracy", pred, gold)
    return float(np.mean(pred == gold))


def f1(pred: Any, gold: Any, positive: Any = 1) -> float:
    """Binary F1 of the `positive` class (GLUE MRPC / QQP), 2·TP / (2·TP + FP + FN).

    pred, gold: (N,) class ids. No positive prediction and no positive gold gives 0.0
    (sklearn's zero_division=0); no positive prediction alone gives TP = 0, hence 0.0.
    """
    pred, gold = _pair("f1", pred, gold)
    predicted, actual = pred == positive, gold == positive
    true_pos = int(np.sum(predicted & actual))
    false_pos = int(np.sum(predicted & ~actual))
    false_neg = int(np.sum(~predicted & actual))
    denominator = 2 * true_pos + false_pos + false_neg
    return 0.0 if denominator == 0 else 2 * true_pos / denominator


def mcc(pred: Any, gold: Any) -> float:
    """Matthews correlation coefficient (GLUE CoLA), multiclass form as sklearn, in [-1, 1].

    pred, gold: (N,) class ids. From the confusion matrix with s = N samples, c = correct,
    t_k / p_k = gold / predicted count of class k:
        MCC = (c·s − Σ t_k p_k) / sqrt((s² − Σ p_k²) (s² − Σ t_k²)),
    which for two classes is (TP·TN − FP·FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)).
    0.0 when the denominator is 0 (constant pred or constant gold), as sklearn.
    """
    pred, gold = _pair("mcc", pred, gold)
    classes, codes = np.unique(np.concatenate([gold, pred]), return_inverse=True)
    gold_codes, pred_codes = codes[: len(gold)], codes[len(gold):]
    gold_counts = np.bincount(gold_codes, minlength=len(classes)).astype(np.float64)  # t_k
    pred_counts = np.bincount(pred_codes, minlength=len(classes)).astype(np.float64)  # p_k
    samples, correct = float(len(gold)), float(np.sum(gold_codes == pred_codes))
    covariance = correct * samples - gold_counts @ pred_counts
    pred_variance = samples**2 - pred_counts @ pred_counts
    gold_variance = samples**2 - gold_counts @ gold_counts
    if pred_variance == 0.0 or gold_variance == 0.0:
        return 0.0
    return float(covariance / np.sqrt(pred_variance * gold_variance))


# ----------------------------------------------------------------------------- regression


def pearson(pred: Any, gold: Any) -> float:
    """Pearson correlation (GLUE STS-B), scipy.stats.pearsonr; 0.0 if an input is constant.

    pred, gold: (N,) scores. A constant input (including N = 1) has zero variance, so the
    correlation is undefined; it is reported as 0.0 ("no association") instead of NaN.
    """
    pred, gold = _real_pair("pearson", pred, gold)
    if np.ptp(pred) == 0.0 or np.ptp(gold) == 0.0:
        return 0.0
    return float(scipy.stats.pearsonr(pred, gold).statistic)


def spearman(pred: Any, gold: Any) -> float:
    """Spearman rank correlation (GLUE STS-B), scipy.stats.spearmanr; 0.0 if an input is constant.

    pred, gold: (N,) scores. Ties get their average rank; the value is the Pearson correlation
    of the ranks. A constant input (including N = 1) is reported as 0.0 instead of NaN.
    """
    pred, gold = _real_pair("spearman", pred, gold)
    if np.ptp(pred) == 0.0 or np.ptp(gold) == 0.0:
        return 0.0
    return float(scipy.stats.spearmanr(pred, gold).statistic)


# ----------------------------------------------------------------------------- ranking


def _target_ranks(name: str, scores: Any, mask: Any, target: Any) -> np.ndarray:
    """(G,) 1-based rank of each group's positive among its real candidates, ties pessimistic.

    rank = number of real candidates scoring >= the positive (the positive counts itself), so
    a candidate tied with the positive is ranked above it: a model that gives every candidate
    the same score gets rank C_g, not 1. Scores in absent slots are ignored.
    """
    scores, mask, target = _ranking_inputs(name, scores, mask, target)
    target_score = scores[np.arange(len(target)), target]  # (G,)
    at_least_as_good = mask & (scores >= target_score[:, None])  # (G, C)
    return at_least_as_good.sum(axis=1)


def acc_at_1(scores: Any, mask: Any, target: Any) -> float:
    """Fraction of groups whose positive strictly outscores every other real candidate.

    scores (G, C) float, mask (G, C) bool, target (G,) int. Ties count against the positive.
    """
    return float(np.mean(_target_ranks("acc_at_1", scores, mask, target) == 1))


def mrr(scores: Any, mask: Any, target: Any) -> float:
    """Mean reciprocal rank of the positive among each group's real candidates.

    scores (G, C) float, mask (G, C) bool, target (G,) int. Ties count against the positive
    (a positive tied with k others has rank k + 1 + the number scoring strictly higher).
    """
    return float(np.mean(1.0 / _target_ranks("mrr", scores, mask, target)))


# ----------------------------------------------------------------------------- one entry point

Metric = Callable[[Predictions], float]

# Keys match `task_spec.KNOWN_METRICS`. F1 scores class id 1, i.e. the second entry of a task's
# `labels` list (MRPC "equivalent", QQP "duplicate").
METRICS: dict[str, Metric] = {
    "accuracy": lambda p: accuracy(p.pred, p.gold),
    "f1": lambda p: f1(p.pred, p.gold, positive=1),
    "mcc": lambda p: mcc(p.pred, p.gold),
    "pearson": lambda p: pearson(p.pred, p.gold),
    "spearman": lambda p: spearman(p.pred, p.gold),
    "acc_at_1": lambda p: acc_at_1(p.scores, p.mask, p.gold),
    "mrr": lambda p: mrr(p.scores, p.mask, p.gold),
}


def compute_metrics(metric_names: Sequence[str], predictions: Predictions) -> dict[str, float]:
    """{metric name: value} for one evaluation; unknown names are a ValueError."""
    unknown = [name for name in metric_names if name not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; known: {sorted(METRICS)}")
    if not metric_names:
        raise ValueError("compute_metrics: no metric names given")
    return {name: METRICS[name](predictions) for name in metric_names}


def glue_average(results: dict[str, float], metrics_by_eval: dict[str, list[str]]) -> float:
    """GLUE-style score: mean over evaluations of the mean of each evaluation's metrics.

    results: {"<eval name>/<metric>": value}; metrics_by_eval: {eval name: [metric, ...]}.
    An evaluation with two metrics (MRPC accuracy + F1, STS-B Pearson + Spearman) counts once,
    with their mean, as on the GLUE leaderboard.
    """
    if not metrics_by_eval:
        raise ValueError("glue_average: no evaluations given")
    per_eval = []
    for eval_name, metric_names in metrics_by_eval.items():
        if not metric_names:
            raise ValueError(f"glue_average: evaluation {eval_name!r} lists no metrics")
        keys = [f"{eval_name}/{metric}" for metric in metric_names]
        missing = [key for key in keys if key not in results]
        if missing:
            raise ValueError(f"glue_average: results lack {missing}; present: {sorted(results)}")
        per_eval.append(sum(results[key] for key in keys) / len(keys))
    return float(sum(per_eval) / len(per_eval))
