"""How an lmms-eval metric becomes an accuracy in percent, from results.json and recomputed from the samples."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["METRICS", "MetricRule", "aggregate_scores", "is_number", "metric_of", "sample_outcome"]


@dataclass(frozen=True)
class MetricRule:
    """How one lmms-eval metric turns into an accuracy in percent.

    Attributes:
        scale: results.json value * scale = percent (LongVideoBench reports a fraction).
        kind: ``micro`` (mean over documents), ``answered`` (mean over documents with a parsed answer,
            MVBench's rule), ``macro`` (mean over categories of the per-category accuracy, MLVU dev's rule;
            ``groups`` fixes the categories, an empty one counting 0 as in lmms-eval), ``external``
            (scored by a server: not recomputable from the samples).
    """

    scale: float = 1.0
    kind: str = "micro"
    groups: tuple[str, ...] = ()


METRICS: dict[str, MetricRule] = {
    "videomme_perception_score": MetricRule(),
    "mlvu_percetion_score": MetricRule(
        kind="macro", groups=("anomaly_reco", "count", "ego", "needle", "order", "plotQA", "topic_reasoning")
    ),
    "mvbench_accuracy": MetricRule(kind="answered"),
    "lvb_acc": MetricRule(scale=100.0),
    "score": MetricRule(scale=100.0),  # egoschema_subset: fraction correct
    "submission": MetricRule(kind="external"),  # egoschema: EgoSchema's validation server, percent
}


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def sample_outcome(metric: str, value: Any) -> tuple[float | None, bool, str | None]:
    """``(score in [0, 1] or None, answered, category)`` of one sample's metric value."""
    if is_number(value):
        return float(value), True, None
    if not isinstance(value, Mapping):
        return None, True, None
    if metric == "videomme_perception_score":
        if is_number(value.get("score")):
            return float(value["score"]), True, None
        return float(str(value.get("pred_answer", "")).lower() == str(value.get("answer", "")).lower()), True, None
    if metric == "mlvu_percetion_score":
        return float(value.get("pred_answer") == value.get("answer")), True, value.get("task_type")
    if metric == "mvbench_accuracy":
        score = value.get("score")
        return (float(score) if is_number(score) else 0.0), value.get("pred_answer", "") != "", None
    if metric == "lvb_acc":
        return float(value.get("parsed_pred") == value.get("answer")), True, None
    if metric == "score" and "ground_truth" in value:
        return float(str(value.get("ground_truth")) == str(value.get("pred"))), True, None
    if is_number(value.get("score")):
        return float(value["score"]), True, None
    return None, True, None


def aggregate_scores(rule: MetricRule, rows: Sequence[tuple[float | None, bool, str | None]]) -> float | None:
    """The task's accuracy in percent from per-sample outcomes (None when not recomputable)."""
    if rule.kind == "external" or not rows or any(score is None for score, _, _ in rows):
        return None
    if rule.kind == "answered":
        answered = [score for score, ok, _ in rows if ok]
        return 100.0 * sum(answered) / len(answered) if answered else 0.0
    if rule.kind == "macro":
        by_group: dict[str, list[float]] = defaultdict(list)
        for score, _, group in rows:
            by_group[str(group)].append(score)
        groups = rule.groups or tuple(sorted(by_group))
        per_group = [100.0 * sum(by_group[g]) / len(by_group[g]) if by_group.get(g) else 0.0 for g in groups]
        return sum(per_group) / len(per_group) if per_group else None
    return 100.0 * sum(score for score, _, _ in rows) / len(rows)


def metric_of(entry: Mapping[str, Any]) -> str | None:
    """The metric name of a results.json task entry (``"<metric>,none"`` keys, stderr excluded)."""
    names = [k.split(",")[0] for k, v in entry.items() if "," in k and "_stderr" not in k and is_number(v)]
    for name in names:
        if name in METRICS:
            return name
    return names[0] if names else None
