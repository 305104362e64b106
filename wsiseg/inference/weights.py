"""Blending weights for overlapping prediction windows.

A separable Gaussian centred on the window, as in MONAI ``SlidingWindowInferer(mode="gaussian")``
and nnU-Net ``compute_gaussian`` (sigma = 0.125 x window). Pixels near a window's border, where
the model sees the least context, count less than pixels near its centre. The weights are floored
above zero so that a pixel covered by a single window (slide border) still gets a defined, finite
average.
"""

from __future__ import annotations

import numpy as np

from wsiseg.errors import ConfigError

__all__ = ["gaussian_weights"]


def gaussian_weights(size: int, sigma_scale: float = 0.125, floor: float = 1e-3) -> np.ndarray:
    """Return a 2-D Gaussian importance map for a square window.

    Args:
        size: Window side in pixels (model-output resolution), at least 1.
        sigma_scale: Standard deviation as a fraction of ``size`` (0.125 = the MONAI/nnU-Net
            default).
        floor: Smallest weight, in ``(0, 1]``; every pixel of a window gets at least this weight.

    Returns:
        A ``(size, size)`` float32 array, symmetric under flips and transposition, equal to 1.0 at
        the centre pixel(s) and ``>= floor`` everywhere.

    Raises:
        ConfigError: If ``size < 1``, ``sigma_scale <= 0`` or ``floor`` is outside ``(0, 1]``.
    """
    if int(size) != size or size < 1:
        msg = f"window size must be a positive integer, got {size}; pass the model output size (e.g. 224)"
        raise ConfigError(msg)
    if not sigma_scale > 0:
        msg = f"sigma_scale must be > 0, got {sigma_scale}; use 0.125 (the usual default)"
        raise ConfigError(msg)
    if not 0 < floor <= 1:
        msg = f"floor must be in (0, 1], got {floor}; use a small positive value such as 1e-3"
        raise ConfigError(msg)
    sigma = sigma_scale * size
    offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(offsets**2) / (2.0 * sigma * sigma))
    g /= g.max()
    weights = np.outer(g, g)
    np.maximum(weights, floor, out=weights)
    return weights.astype(np.float32)
