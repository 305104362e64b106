"""The fixed-point arithmetic of secure aggregation: exact sums, no wrap-around, bounded rounding, noise shares."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.common.secure_aggregation.quantization import dequantize, quantize

from wsiseg.errors import PrivacyError
from wsiseg.privacy.secure_sum import (
    MODULUS_RANGE,
    choose_ranges,
    decode_sum,
    effective_multiplier,
    encode,
    modular_sum,
    noise_share_std,
    quantisation_bound,
    round_noise_to_grid,
    to_grid,
)


def _ranges(n_sites: int = 4, d: int = 10_000) -> object:
    return choose_ranges(clip=0.5, noise_std=noise_share_std(1.0, 0.5, 3), n_params=d, n_sites=n_sites)


def test_ranges_are_powers_of_two_that_cannot_wrap() -> None:
    for n in (1, 3, 4, 5, 100, 1000):
        r = choose_ranges(clip=0.5, noise_std=0.3, n_params=55_000_000, n_sites=n)
        assert math.log2(r.clipping_range).is_integer()
        assert math.log2(r.quantization_range).is_integer()
        assert n * r.quantization_range < MODULUS_RANGE  # the sum of n values in [0, quant] fits the modulus
        assert r.quantization_range <= 2**30  # Flower casts to int32
        # covers the clip plus a 1e-12 Gaussian tail over all coordinates of all sites (about 8.6 std here)
        assert r.clipping_range >= 0.5 + 8.5 * 0.3
    with pytest.raises(PrivacyError):
        choose_ranges(clip=0.5, noise_std=0.3, n_params=10, n_sites=1 << 20)


def test_to_grid_is_unbiased_bounded_and_idempotent() -> None:
    r = _ranges()
    rng = np.random.default_rng(0)
    x = {"w": rng.normal(0, 0.1, size=(200, 50)).astype(np.float32)}
    grid, stats = to_grid(x, r, rng)
    assert stats.clamped == 0
    j = grid["w"] / r.step
    assert np.array_equal(j, np.rint(j))  # on the grid
    assert np.abs(grid["w"] - x["w"]).max() < r.step
    state = rng.bit_generator.state
    again, _ = to_grid(grid, r, rng)
    assert np.array_equal(again["w"], grid["w"])
    assert rng.bit_generator.state == state
    # unbiased: a value a third of a step above a grid point rounds up a third of the time
    v = {"v": np.full(30_000, 7 * r.step + r.step / 3)}
    up = (to_grid(v, r, rng)[0]["v"] > 7.5 * r.step).mean()
    assert abs(up - 1 / 3) < 0.02
    big = {"b": np.array([10 * r.clipping_range, -0.1])}
    clamped, st = to_grid(big, r, rng)
    assert st.clamped == 1
    assert clamped["b"][0] == r.clipping_range


def test_masked_modular_sum_is_exact_and_matches_flowers_quantiser() -> None:
    r = _ranges(n_sites=4)
    rng = np.random.default_rng(1)
    releases = [to_grid({"a": rng.normal(0, 0.3, 1000), "b": rng.normal(0, 0.3, (10, 10))}, r, rng)[0]
                for _ in range(4)]  # fmt: skip
    enc = [encode(u, r) for u in releases]
    # Flower's own quantiser maps our grid values to exactly these integers (no further rounding)
    for u, e in zip(releases, enc, strict=True):
        flw = quantize([u["a"], u["b"]], r.clipping_range, r.quantization_range)
        assert all(np.array_equal(f, g) for f, g in zip(flw, e, strict=True))
    # pairwise masks that cancel in the sum, as SecAgg+ adds them, leave the modular sum unchanged
    masks = [rng.integers(0, MODULUS_RANGE, size=(1000,)) for _ in range(3)]
    masked = [list(e) for e in enc]
    for i, m in enumerate(masks):
        masked[i][0] = (masked[i][0] + m) % MODULUS_RANGE
        masked[i + 1][0] = (masked[i + 1][0] - m) % MODULUS_RANGE
    total = modular_sum(masked, r)
    assert all(np.array_equal(a, b) for a, b in zip(total, modular_sum(enc, r), strict=True))
    summed = decode_sum(total, ["a", "b"], [(1000,), (10, 10)], 4, r)
    exact = {k: sum(u[k] for u in releases) for k in ("a", "b")}
    assert all(np.array_equal(summed[k], exact[k]) for k in exact)  # exact, not approximately
    # Flower's decoding (dequantize, minus (k-1) clipping ranges) gives the same sum
    flw = dequantize([total[0]], r.clipping_range, r.quantization_range)[0] - 3 * r.clipping_range
    assert np.allclose(flw, exact["a"], atol=1e-12)


def test_sum_at_the_edge_of_the_range_does_not_wrap() -> None:
    r = choose_ranges(clip=0.5, noise_std=0.0, n_params=4, n_sites=5)
    top = {"t": np.full(4, r.clipping_range)}
    out = decode_sum(modular_sum([encode(top, r)] * 5, r), ["t"], [(4,)], 5, r)
    assert np.array_equal(out["t"], np.full(4, 5 * r.clipping_range))
    with pytest.raises(PrivacyError):
        decode_sum(modular_sum([encode(top, r)] * 5, r), ["t"], [(4,)], 6, r)


def test_quantisation_error_of_a_noised_round_is_within_the_stated_bound() -> None:
    r = _ranges(n_sites=4, d=5000)
    rng = np.random.default_rng(2)
    raw = [{"w": rng.normal(0, 0.01, 5000)} for _ in range(4)]
    noise = [{"w": rng.normal(0, noise_share_std(1.0, 0.5, 3), 5000)} for _ in range(4)]
    grid = [to_grid(u, r, rng)[0] for u in raw]
    noised = [{"w": g["w"] + round_noise_to_grid(z, r)["w"]} for g, z in zip(grid, noise, strict=True)]
    total = decode_sum(modular_sum([encode(u, r) for u in noised], r), ["w"], [(5000,)], 4, r)["w"]
    ideal = sum(u["w"] + z["w"] for u, z in zip(raw, noise, strict=True))
    assert np.abs(total - ideal).max() <= quantisation_bound(r, 4, noise_rounded=True)


def test_noise_shares_sum_to_the_central_amount() -> None:
    sigma, clip, m = 1.0, 0.5, 3
    rng = np.random.default_rng(3)
    shares = rng.normal(0, noise_share_std(sigma, clip, m), size=(m, 200_000)).sum(axis=0)
    assert shares.std() == pytest.approx(sigma * clip, rel=0.01)
    assert effective_multiplier(sigma, contributors=3, min_sites=3) == pytest.approx(1.0)
    assert effective_multiplier(sigma, contributors=4, min_sites=3) == pytest.approx(math.sqrt(4 / 3))
    assert effective_multiplier(sigma, contributors=4, min_sites=3, colluders=1) == pytest.approx(1.0)
    assert effective_multiplier(sigma, contributors=3, min_sites=3, sensitivity_inflation=1.01) < 1.0
    with pytest.raises(PrivacyError):
        effective_multiplier(sigma, contributors=2, min_sites=3, colluders=2)
