"""Segmentation metrics on integer label masks: confusion matrices, the DHUnet paper metrics, an accumulator.

Two families of numbers, both derived from per-slide confusion matrices (rows = target, cols = prediction):

* **Paper metrics** (DHUnet ``utils.calculate_metric_perpatch`` and ``test.inference``). Per slide and per
  foreground class ``c = 1..C-1`` (background 0 excluded) a binary one-vs-rest comparison of
  ``P = pred == c`` and ``G = target == c``: Dice ``2|P∩G|/(|P|+|G|)``, Jaccard ``|P∩G|/|P∪G|`` and
  Acc ``(TP+TN)/N`` over all ``N`` pixels of the slide, background included. Special cases: P and G both
  empty give 1, 1, 1; P empty with G non-empty gives 0, 0, 0; P non-empty with G empty gives NaN (skipped,
  not penalised). Slides are aggregated by a nanmean over slides per class, then a nanmean over classes.
  The official code adds 1e-9 to numerators and denominators; here the ratios are exact.
* **Confusion-matrix metrics** on the matrix summed over slides (:func:`confusion_metrics`).

Confusion matrices are counted with ``np.bincount`` over ``target * C + pred`` in chunks of ``chunk_pixels``
pixels, so the int64 temporaries stay bounded (about ``3 * 8 * chunk_pixels`` bytes) even for a
20000 x 20000 mask. Counts simply add, so chunking never changes the result.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from wsiseg.errors import DataError

__all__ = [
    "DEFAULT_CHUNK_PIXELS",
    "PAPER_KEYS",
    "LabelRangeError",
    "aggregate_paper_metrics",
    "check_confusion",
    "confusion_matrix",
    "confusion_metrics",
    "paper_metrics_from_confusion",
    "paper_metrics_per_class",
]

#: Pixels per bincount chunk (4 Mi px: three int64 temporaries of 32 MiB each).
DEFAULT_CHUNK_PIXELS = 1 << 22
#: Names of the per-class paper metrics, in reporting order.
PAPER_KEYS = ("dice", "jaccard", "acc")


class LabelRangeError(DataError, ValueError):
    """A label mask holds class ids outside ``[0, num_classes)``."""


def _as_label_array(x: Any, what: str) -> np.ndarray:
    """Return ``x`` (numpy array, torch tensor or array-like) as an integer numpy array."""
    if hasattr(x, "detach"):  # torch.Tensor, converted without importing torch here
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.dtype == np.bool_:
        return arr.view(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        msg = f"{what} must hold integer class ids, got dtype {arr.dtype}; pass argmax labels, not scores"
        raise TypeError(msg)
    return arr


def _check_range(values: np.ndarray, num_classes: int, what: str) -> None:
    """Raise :class:`LabelRangeError` naming the values of ``values`` outside ``[0, num_classes)``."""
    if values.size == 0 or (values.min() >= 0 and values.max() < num_classes):
        return
    bad = np.unique(values[(values < 0) | (values >= num_classes)])
    shown = ", ".join(str(int(v)) for v in bad[:10]) + (", ..." if bad.size > 10 else "")
    msg = (
        f"{what} holds class ids {shown} outside [0, {num_classes}); "
        "remap the mask, raise num_classes or set ignore_index"
    )
    raise LabelRangeError(msg)


def _iter_chunks(pred: np.ndarray, target: np.ndarray, chunk_pixels: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield flat ``(pred, target)`` chunks of about ``chunk_pixels`` pixels without copying whole masks."""
    if pred.ndim <= 1 or (pred.flags.c_contiguous and target.flags.c_contiguous):
        flat_p, flat_t = pred.reshape(-1), target.reshape(-1)
        for start in range(0, flat_p.size, chunk_pixels):
            yield flat_p[start : start + chunk_pixels], flat_t[start : start + chunk_pixels]
        return
    row = max(1, int(np.prod(pred.shape[1:])))
    step = max(1, chunk_pixels // row)
    for start in range(0, pred.shape[0], step):
        yield pred[start : start + step].reshape(-1), target[start : start + step].reshape(-1)


def confusion_matrix(
    pred: Any,
    target: Any,
    num_classes: int,
    *,
    ignore_index: int | None = None,
    chunk_pixels: int = DEFAULT_CHUNK_PIXELS,
) -> np.ndarray:
    """Count pixels per (target class, predicted class) pair.

    Args:
        pred: Predicted class ids, any shape (numpy array or torch tensor, integer or bool).
        target: Ground-truth class ids, same shape as ``pred``.
        num_classes: Number of classes ``C``.
        ignore_index: Target value whose pixels are left out entirely (may lie outside ``[0, C)``).
        chunk_pixels: Pixels counted per ``np.bincount`` call; bounds memory, never changes the result.

    Returns:
        ``(C, C)`` int64 matrix; ``cm[t, p]`` is the number of pixels with target ``t`` predicted as ``p``.

    Raises:
        ValueError: If the shapes differ, or ``num_classes``/``chunk_pixels`` are below 1.
        LabelRangeError: If ``target`` or ``pred`` hold ids outside ``[0, C)`` (message names them).
        TypeError: If a mask is not an integer or bool array.
    """
    if num_classes < 1 or chunk_pixels < 1:
        msg = f"num_classes and chunk_pixels must be >= 1, got {num_classes} and {chunk_pixels}"
        raise ValueError(msg)
    pred_arr = _as_label_array(pred, "prediction")
    target_arr = _as_label_array(target, "target")
    if pred_arr.shape != target_arr.shape:
        msg = f"prediction shape {pred_arr.shape} differs from target shape {target_arr.shape}"
        raise ValueError(msg)
    counts = np.zeros(num_classes * num_classes, dtype=np.int64)
    for p, t in _iter_chunks(pred_arr, target_arr, chunk_pixels):
        if ignore_index is not None:
            keep = t != ignore_index
            p, t = p[keep], t[keep]
        _check_range(t, num_classes, "target")
        _check_range(p, num_classes, "prediction")
        index = t.astype(np.int64)
        index *= num_classes
        index += p
        counts += np.bincount(index, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def check_confusion(cm: Any) -> np.ndarray:
    """Return ``cm`` as a square, non-negative integer matrix, or raise ``DataError``."""
    arr = np.asarray(cm)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1] or (arr.size and arr.min() < 0):
        msg = f"a confusion matrix must be square with non-negative counts, got shape {arr.shape}"
        raise ValueError(msg)
    return arr.astype(np.int64, copy=False)


def paper_metrics_from_confusion(cm: Any, *, nan_if_target_empty: bool = False) -> dict[str, np.ndarray]:
    """Per-class DHUnet paper metrics (Dice, Jaccard, one-vs-rest Acc) of one slide's confusion matrix.

    Args:
        cm: ``(C, C)`` confusion matrix of one slide (rows = target, cols = prediction).
        nan_if_target_empty: Use the official *patch validation* rule instead (``validate_single_patch``):
            every class absent from the target is NaN, whatever was predicted.

    Returns:
        ``{"dice", "jaccard", "acc"}``, each a float64 array of length ``C - 1`` for classes ``1..C-1``.
        P and G both empty give 1; P empty with G non-empty gives 0; P non-empty with G empty gives NaN.
    """
    cm = check_confusion(cm)
    tp = np.diag(cm)[1:].astype(np.float64)
    gt = cm.sum(axis=1)[1:].astype(np.float64)
    pr = cm.sum(axis=0)[1:].astype(np.float64)
    tn = float(cm.sum()) - gt - pr + tp
    with np.errstate(divide="ignore", invalid="ignore"):
        values = {
            "dice": 2.0 * tp / (pr + gt),
            "jaccard": tp / (pr + gt - tp),
            "acc": (tp + tn) / float(cm.sum()),
        }
    both_empty = (pr == 0) & (gt == 0)
    missed = (pr == 0) & (gt > 0)
    skipped = gt == 0 if nan_if_target_empty else (pr > 0) & (gt == 0)
    for key in PAPER_KEYS:
        values[key] = np.where(both_empty, 1.0, values[key])
        values[key] = np.where(missed, 0.0, values[key])
        values[key] = np.where(skipped, np.nan, values[key])
    return values


def paper_metrics_per_class(
    pred: Any,
    target: Any,
    num_classes: int,
    *,
    ignore_index: int | None = None,
    chunk_pixels: int = DEFAULT_CHUNK_PIXELS,
) -> dict[str, np.ndarray]:
    """DHUnet paper metrics of one slide from its label masks.

    Args:
        pred: Predicted class ids of the whole slide.
        target: Ground-truth class ids, same shape.
        num_classes: Number of classes ``C`` (background 0 included).
        ignore_index: Target value whose pixels are left out (the official code has none).
        chunk_pixels: See :func:`confusion_matrix`.

    Returns:
        ``{"dice", "jaccard", "acc"}`` arrays of length ``C - 1``; see :func:`paper_metrics_from_confusion`.
    """
    cm = confusion_matrix(pred, target, num_classes, ignore_index=ignore_index, chunk_pixels=chunk_pixels)
    return paper_metrics_from_confusion(cm)


def aggregate_paper_metrics(per_slide: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Aggregate per-slide paper metrics as the paper does: nanmean over slides, then over classes.

    Args:
        per_slide: One ``{"dice", "jaccard", "acc"}`` mapping per slide, arrays of equal length.

    Returns:
        ``{"dice": float, "jaccard": float, "acc": float, "per_class": {key: array}, "num_slides": int}``.
        A class that is NaN on every slide stays NaN and is left out of the class mean; the mean is NaN
        only when every class is.

    Raises:
        ValueError: If ``per_slide`` is empty or the arrays differ in length.
    """
    if not per_slide:
        msg = "no per-slide metrics to aggregate; evaluate at least one slide"
        raise ValueError(msg)
    out: dict[str, Any] = {"per_class": {}, "num_slides": len(per_slide)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of an all-NaN slice -> NaN, silently
        for key in PAPER_KEYS:
            rows = [np.asarray(s[key], dtype=np.float64).reshape(-1) for s in per_slide]
            if len({r.size for r in rows}) != 1:
                msg = f"per-slide {key!r} arrays differ in length: {sorted({r.size for r in rows})}"
                raise ValueError(msg)
            per_class = np.nanmean(np.stack(rows), axis=0)
            out["per_class"][key] = per_class
            out[key] = float(np.nanmean(per_class)) if per_class.size else float("nan")
    return out


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def confusion_metrics(cm: Any, *, include_background: bool = False) -> dict[str, Any]:
    """Plain multi-class metrics of a (usually summed over slides) confusion matrix.

    Per class ``c``: Dice ``2TP/(|P|+|G|)``, IoU ``TP/(|P|+|G|-TP)``, precision ``TP/|P|``, recall
    ``TP/|G|``. A value whose denominator is 0 is NaN: a class absent from both target and prediction is NaN
    everywhere; a class only predicted gets Dice, IoU and precision 0 and recall NaN. Macro means are
    nanmeans, so NaN classes are excluded from them.

    Args:
        cm: ``(C, C)`` confusion matrix (rows = target, cols = prediction).
        include_background: Include class 0 in the macro means (per-class arrays always cover all classes).

    Returns:
        Per-class arrays ``dice``, ``iou``, ``precision``, ``recall`` (float64, length ``C``) and ``support``
        (target pixels, int64); floats ``pixel_accuracy`` (trace / total), ``mean_dice``, ``mean_iou``,
        ``mean_precision``, ``mean_recall``; ``present_mean_dice`` and ``present_mean_iou``, the means over
        the classes present in the target only (the headline: a class absent from the target cannot score
        for a model that never predicts it, and pixels wrongly given to it still lower the Dice of their true
        class); ``present_classes``
        (their ids); and ``include_background``.
    """
    cm = check_confusion(cm)
    tp = np.diag(cm).astype(np.float64)
    gt = cm.sum(axis=1)
    pr = cm.sum(axis=0)
    total = int(cm.sum())
    out: dict[str, Any] = {
        "dice": _ratio(2.0 * tp, (gt + pr).astype(np.float64)),
        "iou": _ratio(tp, (gt + pr).astype(np.float64) - tp),
        "precision": _ratio(tp, pr.astype(np.float64)),
        "recall": _ratio(tp, gt.astype(np.float64)),
        "support": gt.astype(np.int64),
        "pixel_accuracy": float(tp.sum() / total) if total else float("nan"),
        "include_background": include_background,
    }
    first = 0 if include_background else 1
    present = gt[first:] > 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for key in ("dice", "iou", "precision", "recall"):
            part = out[key][first:]
            out[f"mean_{key}"] = float(np.nanmean(part)) if part.size else float("nan")
        for key in ("dice", "iou"):
            part = out[key][first:][present]
            out[f"present_mean_{key}"] = float(np.mean(part)) if part.size else float("nan")
    out["present_classes"] = [int(i) + first for i in np.flatnonzero(present)]
    return out
