from __future__ import annotations

import json

import numpy as np
import pytest

from wsiseg.errors import PrivacyError
from wsiseg.privacy.noise import (
    add_noise,
    gaussian_noise_like,
    make_generator,
    noise_std_mean,
    noise_std_sum,
)


def test_noise_std_formulas_paper_setting():
    # FedDP Table II: C = 0.5, sigma (noise multiplier) = 0.05, k = 5 clients.
    assert noise_std_sum(0.05, 0.5) == pytest.approx(0.025)
    assert noise_std_mean(0.05, 0.5, 5) == pytest.approx(0.005)
    with pytest.raises(PrivacyError):
        noise_std_mean(1.0, 1.0, 0)
    with pytest.raises(PrivacyError):
        noise_std_sum(-1.0, 1.0)


def test_seeded_generator_is_reproducible_and_logged():
    rng_a, info_a = make_generator(1234)
    rng_b, _ = make_generator(1234)
    rng_c, _ = make_generator(1235)
    template = {"w": np.zeros((50, 20), np.float32), "b": np.zeros(7, np.float32)}
    a = gaussian_noise_like(template, 1.0, rng_a)
    b = gaussian_noise_like(template, 1.0, rng_b)
    c = gaussian_noise_like(template, 1.0, rng_c)
    for k in template:
        np.testing.assert_array_equal(a[k], b[k])
        assert not np.array_equal(a[k], c[k])
    assert info_a == {"source": "user-seed", "seed": 1234}
    json.dumps(info_a)


def test_os_entropy_generators_differ_and_do_not_leak_entropy():
    rng_a, info_a = make_generator(None)
    rng_b, info_b = make_generator(None)
    assert info_a == info_b == {"source": "os-entropy"}
    assert not np.array_equal(rng_a.standard_normal(16), rng_b.standard_normal(16))
    with pytest.raises(PrivacyError):
        make_generator(-1)
    with pytest.raises(PrivacyError):
        make_generator(1.5)  # type: ignore[arg-type]


def test_empirical_std_on_sum_and_mean():
    # Noise on the sum has std z*C; on the mean of n clients z*C/n (1e6 coordinates: 1 % is ~14 sigma).
    z, clip, n = 0.8, 0.5, 5
    template = {"a": np.zeros(600_000, np.float32), "b": np.zeros((400, 1000), np.float32)}
    rng, _ = make_generator(7)
    on_sum = gaussian_noise_like(template, noise_std_sum(z, clip), rng)
    on_mean = gaussian_noise_like(template, noise_std_mean(z, clip, n), rng)
    flat_sum = np.concatenate([v.ravel() for v in on_sum.values()])
    flat_mean = np.concatenate([v.ravel() for v in on_mean.values()])
    assert flat_sum.size == 1_000_000
    assert flat_sum.dtype == np.float32
    assert on_sum["b"].shape == (400, 1000)
    assert np.std(flat_sum) == pytest.approx(z * clip, rel=0.01)
    assert np.std(flat_mean) == pytest.approx(z * clip / n, rel=0.01)
    assert abs(float(np.mean(flat_sum))) < 5 * z * clip / 1000


def test_add_noise_does_not_mutate_and_keeps_dtype():
    update = {"w": np.ones((10, 10), np.float32), "d": np.ones(3, np.float64)}
    before = {k: v.copy() for k, v in update.items()}
    rng, _ = make_generator(0)
    out = add_noise(update, 0.1, rng)
    for k in update:
        np.testing.assert_array_equal(update[k], before[k])
        assert out[k].dtype == update[k].dtype
        assert not np.array_equal(out[k], update[k])
    rng, _ = make_generator(0)
    zero = add_noise(update, 0.0, rng)
    np.testing.assert_array_equal(zero["w"], update["w"])
    with pytest.raises(PrivacyError):
        add_noise(update, float("nan"), rng)
