"""Tests for the Gaussian blending weights."""

from __future__ import annotations

import numpy as np
import pytest

from wsiseg.errors import ConfigError
from wsiseg.inference.weights import gaussian_weights


@pytest.mark.parametrize("size", [7, 8, 224])
def test_centre_is_max_and_equals_one(size: int) -> None:
    w = gaussian_weights(size)
    assert w.shape == (size, size)
    assert w.dtype == np.float32
    c = (size - 1) // 2
    assert w[c, c] == pytest.approx(1.0)
    assert w.max() == pytest.approx(1.0)
    # strictly decreasing away from the centre along the middle row (until the floor)
    row = w[c, c:]
    assert np.all(np.diff(row) <= 0)
    assert row[-1] < row[0]


def test_symmetry() -> None:
    w = gaussian_weights(31)
    np.testing.assert_array_equal(w, w[::-1, :])
    np.testing.assert_array_equal(w, w[:, ::-1])
    np.testing.assert_array_equal(w, w.T)


def test_floor_applies_at_corners() -> None:
    w = gaussian_weights(224, floor=1e-3)
    assert w.min() == pytest.approx(1e-3)
    assert w[0, 0] == pytest.approx(1e-3)
    w_hi = gaussian_weights(224, floor=0.05)
    assert w_hi.min() == pytest.approx(0.05)
    assert np.all(w_hi > 0)


def test_sigma_scaling_matches_formula() -> None:
    size = 101  # centre exactly at pixel 50
    for sigma_scale in (0.125, 0.25):
        w = gaussian_weights(size, sigma_scale=sigma_scale, floor=1e-9)
        sigma = sigma_scale * size
        d = 20
        expected = np.exp(-(d**2) / (2 * sigma**2))
        assert w[50, 50 + d] == pytest.approx(expected, rel=1e-5)
        assert w[50 + d, 50 + d] == pytest.approx(expected**2, rel=1e-5)
    narrow = gaussian_weights(size, sigma_scale=0.1)
    wide = gaussian_weights(size, sigma_scale=0.3)
    assert narrow[50, 70] < wide[50, 70]


@pytest.mark.parametrize(
    ("kwargs"),
    [
        {"size": 0},
        {"size": 8, "sigma_scale": 0.0},
        {"size": 8, "floor": 0.0},
        {"size": 8, "floor": 2},
    ],
)
def test_invalid_arguments(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        gaussian_weights(**kwargs)  # type: ignore[arg-type]
