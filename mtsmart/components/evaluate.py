"""Dev-set evaluation: predictions in dataset order, metrics per evaluation, the GLUE-style mean."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from mtsmart.tasks.batch import Batch
from mtsmart.arithmetic.metrics import compute_metrics, glue_average
from mtsmart.model.multitask import task_output
from mtsmart.tasks.spec import TaskSpec
from mtsmart.tasks.types import task_type_of


@dataclass
class EvalSet:
    """One evaluation: e.g. `mnli_m` = task mnli on its dev_matched split."""

    name: str
    spec: TaskSpec
    batches: Sequence[Batch]  # in any order; example_ids restore dataset order


@dataclass
class TaskPredictions:
    """Raw outputs in dataset order: logits (B, C), scores (B,), or ranking grids (G, Cmax) + mask."""

    outputs: np.ndarray
    mask: np.ndarray | None
    labels: np.ndarray | None


def _ranking_rows(output: torch.Tensor, batch: Batch) -> list[tuple[np.ndarray, np.ndarray]]:
    scores = output.detach().float().cpu().numpy()
    mask = batch.candidate_mask.cpu().numpy()
    return [(scores[g], mask[g]) for g in range(scores.shape[0])]


def _pad_rows(rows: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(scores) for scores, _ in rows)
    scores = np.full((len(rows), width), -np.inf, dtype=np.float32)
    mask = np.zeros((len(rows), width), dtype=bool)
    for g, (row_scores, row_mask) in enumerate(rows):
        scores[g, : len(row_scores)] = row_scores
        mask[g, : len(row_mask)] = row_mask
    return scores, mask


def collect(spec: TaskSpec, outputs: Iterable[tuple[Batch, torch.Tensor]]) -> TaskPredictions:
    """Task outputs of batches (any order) → TaskPredictions in dataset order (by example_ids)."""
    grouped = task_type_of(spec).grouped
    ids: list[int] = []
    rows: list = []
    labels: list = []
    for batch, output in outputs:
        ids.extend(batch.example_ids)
        if grouped:
            rows.extend(_ranking_rows(output, batch))
        else:
            rows.extend(output.detach().float().cpu().numpy())
        if batch.labels is not None:
            labels.extend(batch.labels.cpu().numpy())
    order = np.argsort(np.asarray(ids), kind="stable")
    ordered = [rows[i] for i in order]
    gold = np.asarray([labels[i] for i in order]) if len(labels) == len(ids) else None
    if grouped:
        scores, mask = _pad_rows(ordered)
        return TaskPredictions(outputs=scores, mask=mask, labels=gold)
    # Regression heads trained on standardised targets give scores in the task's units here.
    return TaskPredictions(outputs=task_type_of(spec).to_task_units(np.stack(ordered), spec), mask=None, labels=gold)


@torch.inference_mode()
def predict(model: nn.Module, batches: Iterable[Batch], spec: TaskSpec, device: torch.device, autocast) -> TaskPredictions:
    """Run the model over `batches` (eval mode) and return outputs in dataset order."""
    was_training = model.training
    model.eval()

    def outputs():
        for batch in batches:
            batch = batch.to(device)
            with autocast():
                yield batch, task_output(model, batch)

    try:
        return collect(spec, outputs())
    finally:
        model.train(was_training)


def metrics_of(spec: TaskSpec, predictions: TaskPredictions) -> dict[str, float]:
    if predictions.labels is None:
        raise ValueError(f"task {spec.name}: cannot compute metrics of unlabelled data")
    packed = task_type_of(spec).metric_inputs(predictions.labels, predictions.outputs, predictions.mask)
    return compute_metrics(spec.metrics, packed)


def evaluate(model: nn.Module, eval_sets: Sequence[EvalSet], device: torch.device, autocast) -> dict[str, float]:
    """{"<eval name>/<metric>": value, ..., "avg": GLUE-style mean}."""
    results: dict[str, float] = {}
    for eval_set in eval_sets:
        predictions = predict(model, eval_set.batches, eval_set.spec, device, autocast)
        for metric, value in metrics_of(eval_set.spec, predictions).items():
            results[f"{eval_set.name}/{metric}"] = value
    results["avg"] = glue_average(results, {e.name: list(e.spec.metrics) for e in eval_sets})
    return results
