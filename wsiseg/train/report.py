"""Metric reports over slides: an accumulator of per-slide confusion matrices, and the report it computes.

:class:`MetricAccumulator` collects one confusion matrix per slide; :class:`MetricReport` holds the paper's
and the plain confusion-matrix metrics computed from them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wsiseg.classes import DEFAULT_CLASSES
from wsiseg.train.metrics import (
    DEFAULT_CHUNK_PIXELS,
    PAPER_KEYS,
    aggregate_paper_metrics,
    check_confusion,
    confusion_matrix,
    confusion_metrics,
    paper_metrics_from_confusion,
)

__all__ = ["MetricAccumulator", "MetricReport"]


def _json_float(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


@dataclass(frozen=True, eq=False)
class MetricReport:
    """Result of :meth:`MetricAccumulator.compute`.

    Attributes:
        class_names: Names of classes ``0..C-1``.
        num_slides: Number of slides aggregated.
        num_pixels: Pixels counted over all slides (ignored pixels excluded).
        paper: Paper means ``{"dice", "jaccard", "acc"}`` (nanmean over slides, then over classes).
        paper_per_class: Per-class paper values (length ``C - 1``, classes ``1..C-1``).
        per_slide: ``slide_id -> {"dice", "jaccard", "acc"}`` paper values of each slide.
        confusion: Confusion matrix summed over slides.
        confusion_metrics: :func:`confusion_metrics` of ``confusion``.
    """

    class_names: tuple[str, ...]
    num_slides: int
    num_pixels: int
    paper: dict[str, float]
    paper_per_class: dict[str, np.ndarray]
    per_slide: dict[str, dict[str, np.ndarray]] = field(repr=False)
    confusion: np.ndarray = field(repr=False)
    confusion_metrics: dict[str, Any] = field(repr=False)

    @property
    def mean_dice(self) -> float:
        """The headline: confusion-matrix Dice averaged over the foreground classes present in the truth."""
        return float(self.confusion_metrics["present_mean_dice"])

    @property
    def mean_iou(self) -> float:
        """Confusion-matrix IoU averaged over the foreground classes present in the truth."""
        return float(self.confusion_metrics["present_mean_iou"])

    def _per_class(self, values: Mapping[str, np.ndarray], first: int) -> dict[str, dict[str, Any]]:
        names = self.class_names[first:]
        return {n: {k: _json_float(float(v[i])) for k, v in values.items()} for i, n in enumerate(names)}

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (NaN becomes ``None``, arrays become per-class mappings)."""
        cmm = self.confusion_metrics
        arrays = {k: cmm[k] for k in ("dice", "iou", "precision", "recall")}
        return {
            "class_names": list(self.class_names),
            "mean_dice": _json_float(self.mean_dice),
            "mean_iou": _json_float(self.mean_iou),
            "present_classes": [self.class_names[i] for i in cmm["present_classes"]],
            "num_slides": self.num_slides,
            "num_pixels": self.num_pixels,
            "paper": {
                **{k: _json_float(v) for k, v in self.paper.items()},
                "per_class": self._per_class(self.paper_per_class, 1),
            },
            "per_slide": {s: self._per_class(m, 1) for s, m in self.per_slide.items()},
            "confusion": {
                "pixel_accuracy": _json_float(cmm["pixel_accuracy"]),
                "include_background": cmm["include_background"],
                **{f"mean_{k}": _json_float(cmm[f"mean_{k}"]) for k in arrays},
                "per_class": self._per_class(arrays, 0),
                "support": {n: int(s) for n, s in zip(self.class_names, cmm["support"], strict=True)},
                "matrix": self.confusion.tolist(),
            },
        }

    def to_rows(self) -> list[dict[str, Any]]:
        """Return CSV rows: one per class (background has NaN paper values), then a ``mean`` row.

        The ``mean`` row's ``dice`` and ``iou`` are the headline means over the classes present in the truth.
        """
        cmm = self.confusion_metrics
        rows = []
        for i, name in enumerate(self.class_names):
            paper = {f"paper_{k}": float(v[i - 1]) if i else float("nan") for k, v in self.paper_per_class.items()}
            plain = {k: float(cmm[k][i]) for k in ("dice", "iou", "precision", "recall")}
            rows.append({"class": name, **paper, **plain, "support": int(cmm["support"][i])})
        paper_mean = {f"paper_{k}": v for k, v in self.paper.items()}
        plain_mean = {k: cmm[f"mean_{k}"] for k in ("precision", "recall")}
        plain_mean = {"dice": self.mean_dice, "iou": self.mean_iou, **plain_mean}
        rows.append({"class": "mean", **paper_mean, **plain_mean, "support": self.num_pixels})
        return rows


class MetricAccumulator:
    """Accumulate per-slide confusion matrices and report paper and confusion-matrix metrics.

    ``update`` may be called many times per slide (e.g. once per tile); matrices of the same ``slide_id``
    add up. Paper metrics are computed per slide at :meth:`compute`, then aggregated.

    Args:
        num_classes: Number of classes ``C`` (background 0 included).
        class_names: ``C`` names; defaults to the default class table when ``C`` matches, else ``class_<i>``.
        ignore_index: Target value left out of all counts.
        include_background: Include class 0 in the confusion-matrix macro means.
        chunk_pixels: See :func:`confusion_matrix`.
    """

    def __init__(
        self,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        *,
        ignore_index: int | None = None,
        include_background: bool = False,
        chunk_pixels: int = DEFAULT_CHUNK_PIXELS,
    ) -> None:
        if class_names is None:
            default = DEFAULT_CLASSES.names
            class_names = default if len(default) == num_classes else [f"class_{i}" for i in range(num_classes)]
        if num_classes < 1 or len(class_names) != num_classes:
            msg = f"need num_classes >= 1 and one name per class, got {num_classes} and {list(class_names)}"
            raise ValueError(msg)
        self.num_classes = num_classes
        self.class_names = tuple(class_names)
        self.ignore_index = ignore_index
        self.include_background = include_background
        self.chunk_pixels = chunk_pixels
        self._slides: dict[str, np.ndarray] = {}

    def update(self, pred: Any, target: Any, slide_id: str) -> np.ndarray:
        """Add ``pred``/``target`` pixels to slide ``slide_id``; return this call's confusion matrix."""
        cm = confusion_matrix(
            pred, target, self.num_classes, ignore_index=self.ignore_index, chunk_pixels=self.chunk_pixels
        )
        self.add_confusion(cm, slide_id)
        return cm

    def add_confusion(self, cm: Any, slide_id: str) -> None:
        """Add a confusion matrix counted elsewhere (e.g. by a federated client) to slide ``slide_id``."""
        arr = check_confusion(cm)
        if arr.shape != (self.num_classes, self.num_classes):
            msg = f"confusion matrix shape {arr.shape} does not match {self.num_classes} classes"
            raise ValueError(msg)
        key = str(slide_id)
        self._slides[key] = self._slides.get(key, np.zeros_like(arr)) + arr

    def merge(self, other: MetricAccumulator) -> None:
        """Add every slide of ``other`` (same number of classes) into this accumulator."""
        for slide_id, cm in other.slide_confusions.items():
            self.add_confusion(cm, slide_id)

    def reset(self) -> None:
        """Forget all slides."""
        self._slides.clear()

    @property
    def slide_confusions(self) -> dict[str, np.ndarray]:
        """A copy of the ``slide_id -> confusion matrix`` mapping."""
        return {k: v.copy() for k, v in self._slides.items()}

    def compute(self) -> MetricReport:
        """Compute per-slide paper metrics, aggregate them and the summed confusion matrix.

        Raises:
            ValueError: If nothing was added yet.
        """
        if not self._slides:
            msg = "no slides were added; call update() before compute()"
            raise ValueError(msg)
        per_slide = {s: paper_metrics_from_confusion(cm) for s, cm in self._slides.items()}
        agg = aggregate_paper_metrics(list(per_slide.values()))
        total = np.sum(list(self._slides.values()), axis=0)
        return MetricReport(
            class_names=self.class_names,
            num_slides=len(per_slide),
            num_pixels=int(total.sum()),
            paper={k: agg[k] for k in PAPER_KEYS},
            paper_per_class=agg["per_class"],
            per_slide=per_slide,
            confusion=total,
            confusion_metrics=confusion_metrics(total, include_background=self.include_background),
        )
