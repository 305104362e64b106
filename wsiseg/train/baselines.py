"""Two trivial baselines fitted on training tiles, scored on the same tiles as a model.

A segmentation score means little alone: on patch data "everything is stroma" or "white is background, dark
purple is tumour" already scores a fair Dice. Every evaluation therefore shows these two beside the model:

* **majority class**: every pixel gets the most frequent tissue class of the training masks (background is
  left out of the headline mean, so "everything is background" would trivially score 0).
* **colour rule**: every pixel gets the most frequent training class of its colour, with RGB quantised to
  ``bins`` levels per channel (a lookup table; colours never seen in training get the majority class). It is
  the best any rule can do that looks at one pixel's colour alone, so a model that does not beat it has
  learned nothing about tissue structure.

Fitting reads at most ``max_tiles`` training tiles (a seeded sample), so it stays quick on large datasets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wsiseg.data.dataset import TileSource, load_tile
from wsiseg.train.report import MetricAccumulator, MetricReport

__all__ = ["BASELINE_NAMES", "Baselines", "colour_bin_index", "evaluate_baselines", "fit_baselines"]

#: Report names of the baselines, in display order.
BASELINE_NAMES = ("majority class", "colour rule")


def colour_bin_index(rgb: np.ndarray, bins: int) -> np.ndarray:
    """Index of each pixel's quantised colour: ``(r * bins + g) * bins + b`` with channels cut into ``bins``.

    >>> colour_bin_index(np.array([[[0, 0, 0], [255, 255, 255]]], dtype=np.uint8), 4).tolist()
    [[0, 63]]
    """
    q = (np.asarray(rgb, dtype=np.int64) * bins) >> 8
    return (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]


@dataclass(frozen=True)
class Baselines:
    """Fitted baselines.

    Attributes:
        majority: The most frequent tissue class id (not background) of the training masks.
        lut: Class id per quantised colour (``bins ** 3`` entries).
        bins: Levels per RGB channel.
        class_pixels: Training pixels per class.
    """

    majority: int
    lut: np.ndarray
    bins: int
    class_pixels: np.ndarray

    def predict(self, name: str, rgb: np.ndarray) -> np.ndarray:
        """Labels of one ``(H, W, 3)`` uint8 tile by baseline ``name`` (one of :data:`BASELINE_NAMES`)."""
        if name == BASELINE_NAMES[0]:
            return np.full(rgb.shape[:2], self.majority, dtype=np.uint8)
        if name == BASELINE_NAMES[1]:
            return self.lut[colour_bin_index(rgb, self.bins)]
        msg = f"unknown baseline {name!r}; use one of {', '.join(BASELINE_NAMES)}"
        raise ValueError(msg)


def _sample(source: TileSource, max_tiles: int, seed: int) -> list[int]:
    n = len(source.records)
    if n <= max_tiles:
        return list(range(n))
    return sorted(np.random.default_rng(seed).choice(n, size=max_tiles, replace=False).tolist())


def fit_baselines(train: TileSource, *, bins: int = 16, max_tiles: int = 2000, seed: int = 0) -> Baselines:
    """Fit the majority class and the colour lookup table on training tiles.

    Args:
        train: Training tiles (with masks).
        bins: Levels per RGB channel of the colour rule.
        max_tiles: Tiles read at most (a seeded sample of them when there are more).
        seed: Seed of that sample.

    Returns:
        The fitted baselines.

    Raises:
        DataError: A tile or mask cannot be read.
    """
    num_classes = len(train.classes)
    counts = np.zeros((bins**3, num_classes), dtype=np.int64)
    for i in _sample(train, max_tiles, seed):
        root, rec = train.records[i]
        image, mask = load_tile(root, rec)
        if mask is None:
            continue
        index = colour_bin_index(np.asarray(image), bins).reshape(-1)
        labels = np.asarray(mask, dtype=np.int64).reshape(-1).clip(0, num_classes - 1)
        counts += np.bincount(index * num_classes + labels, minlength=bins**3 * num_classes).reshape(counts.shape)
    class_pixels = counts.sum(axis=0)
    majority = int(np.argmax(class_pixels[1:])) + 1 if class_pixels[1:].any() else 0
    lut = np.where(counts.sum(axis=1) > 0, np.argmax(counts, axis=1), majority).astype(np.uint8)
    return Baselines(majority, lut, bins, class_pixels)


def evaluate_baselines(baselines: Baselines, test: TileSource) -> dict[str, MetricReport]:
    """Score every baseline on the test tiles, per slide as a model is scored.

    Returns:
        ``name -> MetricReport`` in :data:`BASELINE_NAMES` order.
    """
    accs = {name: MetricAccumulator(len(test.classes), test.classes.names) for name in BASELINE_NAMES}
    for root, rec in test.records:
        image, mask = load_tile(root, rec)
        if mask is None:
            continue
        rgb, target = np.asarray(image), np.asarray(mask, dtype=np.uint8)
        slide = test.key(root, rec)
        for name, acc in accs.items():
            acc.update(baselines.predict(name, rgb), target, slide)
    return {name: acc.compute() for name, acc in accs.items()}
