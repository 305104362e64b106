"""Tissue detection on a low-resolution level: Otsu on HSV saturation plus morphology.

H&E tissue is saturated (pink and purple) while glass is white or grey, so saturation separates them better
than grey level (Slideflow and PathML do the same). The mask is computed once per slide on a thumbnail and
each window's tissue fraction comes from an integral image, so it costs well under a second per slide.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

__all__ = ["TISSUE_THUMBNAIL", "otsu_threshold", "stain_check", "tissue_fractions", "tissue_mask"]

#: Longest side of the thumbnail used for tissue detection (tiling and prediction use the same one).
TISSUE_THUMBNAIL = 1024

#: Saturation floor (0-255): below it nothing is tissue, even where Otsu picks less on a blank slide.
MIN_SATURATION = 15


def otsu_threshold(values: np.ndarray) -> int:
    """Return Otsu's threshold of uint8 values (the level maximising between-class variance).

    >>> otsu_threshold(np.array([10] * 50 + [200] * 50, dtype=np.uint8))
    10
    """
    hist = np.bincount(values.ravel(), minlength=256).astype(np.float64)
    total = hist.sum()
    if total == 0:
        return 0
    levels = np.arange(256, dtype=np.float64)
    weight0 = np.cumsum(hist)
    weight1 = total - weight0
    sum0 = np.cumsum(hist * levels)
    mean0 = np.divide(sum0, weight0, out=np.zeros(256), where=weight0 > 0)
    mean1 = np.divide(sum0[-1] - sum0, weight1, out=np.zeros(256), where=weight1 > 0)
    between = weight0 * weight1 * (mean0 - mean1) ** 2
    return int(np.argmax(between))


def tissue_mask(thumbnail: np.ndarray, *, min_area_fraction: float = 1e-4) -> np.ndarray:
    """Detect tissue on an RGB thumbnail.

    Steps: saturation channel, Otsu threshold (floored at ``MIN_SATURATION``), closing and opening with a
    3x3 structure, hole filling, and removal of components smaller than ``min_area_fraction`` of the image.

    Args:
        thumbnail: RGB uint8 array ``(h, w, 3)``.
        min_area_fraction: Smallest component kept, as a fraction of the thumbnail area.

    Returns:
        Boolean mask ``(h, w)``, True on tissue.
    """
    saturation = np.asarray(Image.fromarray(thumbnail).convert("HSV"))[..., 1]
    saturation = ndimage.median_filter(saturation, size=3)
    threshold = max(otsu_threshold(saturation), MIN_SATURATION)
    mask = saturation > threshold
    structure = np.ones((3, 3), dtype=bool)
    mask = ndimage.binary_closing(mask, structure=structure, iterations=2)
    mask = ndimage.binary_opening(mask, structure=structure)
    mask = ndimage.binary_fill_holes(mask)
    labels, count = ndimage.label(mask)
    if count:
        sizes = np.bincount(labels.ravel())
        keep = sizes >= max(1, min_area_fraction * mask.size)
        keep[0] = False
        mask = keep[labels]
    return mask


#: Pillow HSV hue (0-255 for 0-360 degrees) of H&E: purple haematoxylin through pink eosin (about 240-370 deg).
_HE_HUE = (170, 8)
#: Below this value (0-255) a pixel is dark: brightfield glass is bright, fluorescence background is black.
_DARK = 60


def stain_check(thumbnail: np.ndarray, tissue: np.ndarray) -> str:
    """Warn when an image does not look like brightfield H&E (fluorescence, IHC/DAB, other stains).

    Two checks on the tissue-detection thumbnail: most of the image is dark (a fluorescence or dark-field
    scan, whose black background can pass for tissue), or under half of the tissue pixels have an H&E hue
    (purple to pink; DAB brown and other stains fall outside).

    Args:
        thumbnail: RGB uint8 ``(h, w, 3)``.
        tissue: Its boolean tissue mask.

    Returns:
        A one-line warning, or ``""`` when the image looks like H&E.
    """
    hsv = np.asarray(Image.fromarray(thumbnail).convert("HSV"))
    dark = float((hsv[..., 2] < _DARK).mean())
    if dark > 0.5:
        return (f"{dark:.0%} of the image is dark: this looks like a fluorescence or dark-field scan, not "
                "brightfield H&E; models trained on H&E will not give meaningful results")  # fmt: skip
    hue = hsv[..., 0][tissue]
    if hue.size < 50:
        return ""
    he = float(((hue >= _HE_HUE[0]) | (hue <= _HE_HUE[1])).mean())
    if he < 0.5:
        return (f"only {he:.0%} of the tissue has an H&E hue (purple to pink): this looks like another stain "
                "(IHC/DAB, special stain); check the slide, results of H&E models will not be meaningful")  # fmt: skip
    return ""


def tissue_fractions(
    mask: np.ndarray, downsample: float, origins: Sequence[tuple[int, int]], window: int
) -> np.ndarray:
    """Return the tissue fraction of each level-0 window, from a mask at ``downsample``.

    Parts of a window beyond the slide count as non-tissue.

    Args:
        mask: Boolean tissue mask of the whole slide at ``downsample``.
        downsample: Level-0 pixels per mask pixel.
        origins: Window origins ``(x, y)`` in level-0 pixels.
        window: Window side in level-0 pixels.

    Returns:
        float32 array of fractions in [0, 1], one per origin.
    """
    h, w = mask.shape
    integral = np.zeros((h + 1, w + 1), dtype=np.int64)
    integral[1:, 1:] = np.cumsum(np.cumsum(mask, axis=0, dtype=np.int64), axis=1)
    xy = np.asarray(origins, dtype=np.float64).reshape(-1, 2)
    x0 = np.clip(np.floor(xy[:, 0] / downsample), 0, w).astype(np.int64)
    y0 = np.clip(np.floor(xy[:, 1] / downsample), 0, h).astype(np.int64)
    span = max(1, round(window / downsample))
    x1 = np.clip(np.floor(xy[:, 0] / downsample).astype(np.int64) + span, 0, w)
    y1 = np.clip(np.floor(xy[:, 1] / downsample).astype(np.int64) + span, 0, h)
    inside = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    return (inside / float(span * span)).astype(np.float32)
