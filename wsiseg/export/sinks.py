"""Writing whole masks through ``MaskTiffWriter``: the stitcher's sink, per-class probability maps, arrays.

``StitchSink`` feeds the label writer (and one writer per class) from ``BandStitcher``;
``write_label_pyramid`` / ``write_prob_maps`` write an in-memory array or an iterable of row blocks.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wsiseg.classes import ClassTable
from wsiseg.errors import DataError
from wsiseg.export.tiff import TILE, MaskTiffWriter

__all__ = ["StitchSink", "open_prob_writers", "prob_map_paths", "write_label_pyramid", "write_prob_maps"]


class StitchSink:
    """``BandStitcher`` sink that feeds a label writer and, optionally, one writer per class.

    Args:
        labels: Writer for the label rows.
        probs: Writers for ``probs[..., c]`` (uint8, ``round(255 * p)``), in class order.
    """

    def __init__(self, labels: MaskTiffWriter, probs: Sequence[MaskTiffWriter] = ()) -> None:
        self.labels, self.probs = labels, list(probs)

    def __call__(self, row_start: int, labels: np.ndarray, probs: np.ndarray | None) -> None:
        """Write one run of finished rows to every writer."""
        self.labels.write_rows(row_start, labels)
        if self.probs:
            if probs is None:
                msg = "probability writers were given but the stitcher emits no probabilities"
                raise DataError(msg)
            for c, writer in enumerate(self.probs):
                writer.write_rows(row_start, np.ascontiguousarray(probs[..., c]))

    def writers(self) -> list[MaskTiffWriter]:
        """All writers, labels first."""
        return [self.labels, *self.probs]


def prob_map_paths(path: str | os.PathLike[str], classes: ClassTable) -> list[Path]:
    """Return one probability-map path per class: ``<stem>_prob_<name>.tif`` next to ``path``."""
    p = Path(path)
    return [p.with_name(f"{p.stem}_prob_{name}{p.suffix or '.tif'}") for name in classes.names]


def open_prob_writers(
    path: str | os.PathLike[str],
    width: int,
    height: int,
    *,
    mpp: float | None,
    classes: ClassTable,
    **kwargs: Any,
) -> list[MaskTiffWriter]:
    """Open one ``MaskTiffWriter`` per class (kind ``"probability"``, values ``round(255 * p)``).

    One single-channel pyramid per class (rather than one multi-page file) keeps every map
    openable in openslide, QuPath and ASAP, which show only the first pyramid of a file.
    Extra keyword arguments go to ``MaskTiffWriter``.
    """
    writers: list[MaskTiffWriter] = []
    base = dict(kwargs.pop("provenance", None) or {})
    try:
        for info, p in zip(classes.classes, prob_map_paths(path, classes), strict=True):
            prov = {**base, "class": info.name, "class_id": info.id}
            writers.append(
                MaskTiffWriter(
                    p, width, height, mpp=mpp, classes=classes, kind="probability",
                    provenance=prov, **kwargs,
                )
            )  # fmt: skip
    except BaseException:
        for w in writers:
            w.abort()
        raise
    return writers


def _feed(writers: Sequence[MaskTiffWriter], data: np.ndarray | Iterable[np.ndarray], split: bool) -> None:
    """Write an array or row blocks to ``writers`` (``split``: channel c -> writer c); close."""
    blocks = _array_blocks(data) if isinstance(data, np.ndarray) else data
    try:
        row = 0
        for block in blocks:
            for c, w in enumerate(writers):
                w.write_rows(row, np.ascontiguousarray(block[..., c] if split else block))
            row += block.shape[0]
        for w in writers:
            w.close()
    except BaseException:
        for w in writers:
            w.abort()
        raise


def _array_blocks(data: np.ndarray) -> Iterable[np.ndarray]:
    return (data[y : y + TILE] for y in range(0, data.shape[0], TILE))


def _size(data: np.ndarray | Iterable[np.ndarray], size: tuple[int, int] | None) -> tuple[int, int]:
    if isinstance(data, np.ndarray):
        return data.shape[1], data.shape[0]
    if size is None:
        msg = "give size=(width, height) when writing an iterable of row blocks"
        raise DataError(msg)
    return size


def write_label_pyramid(
    path: str | os.PathLike[str],
    labels: np.ndarray | Iterable[np.ndarray],
    *,
    mpp: float,
    classes: ClassTable,
    size: tuple[int, int] | None = None,
    **kwargs: Any,
) -> Path:
    """Write a label mask TIFF from a ``(H, W)`` uint8 array or an iterable of row blocks.

    Args:
        path: Output path.
        labels: Array, or ``(n, W)`` blocks of consecutive rows (then give ``size``).
        mpp: Mask resolution in um/px.
        classes: Class table stored with the mask.
        size: ``(width, height)``, only for an iterable.
        **kwargs: Passed to ``MaskTiffWriter``.

    Returns:
        The written path.
    """
    writer = MaskTiffWriter(path, *_size(labels, size), mpp=mpp, classes=classes, **kwargs)
    _feed([writer], labels, split=False)
    return writer.path


def write_prob_maps(
    path: str | os.PathLike[str],
    probs: np.ndarray | Iterable[np.ndarray],
    *,
    mpp: float,
    classes: ClassTable,
    size: tuple[int, int] | None = None,
    **kwargs: Any,
) -> list[Path]:
    """Write ``(H, W, C)`` uint8 probabilities (``round(255 * p)``) as one TIFF per class.

    Args:
        path: Label mask path; maps go to ``prob_map_paths(path, classes)``.
        probs: Array, or ``(n, W, C)`` blocks of consecutive rows (then give ``size``).
        mpp: Mask resolution in um/px.
        classes: Class table (``C`` entries).
        size: ``(width, height)``, only for an iterable.
        **kwargs: Passed to ``MaskTiffWriter``.

    Returns:
        The written paths, in class order.
    """
    writers = open_prob_writers(path, *_size(probs, size), mpp=mpp, classes=classes, **kwargs)
    _feed(writers, probs, split=True)
    return [w.path for w in writers]
