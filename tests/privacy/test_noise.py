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


def test_chunked_noise_is_independent_of_thread_count_and_resumable():
    from wsiseg.privacy.noise import NOISE_CHUNK

    # 2 chunks and a bit, spread over tensors that straddle chunk borders, plus a float64 tensor.
    template = {
        "a": np.zeros(NOISE_CHUNK - 3, np.float32),
        "b": np.zeros((NOISE_CHUNK // 1000 + 1, 1000), np.float32),
        "c": np.zeros(7, np.float64),
        "d": np.zeros(11, np.float32),
    }
    one = gaussian_noise_like(template, 0.5, make_generator(21)[0], workers=1)
    rng = make_generator(21)[0]
    four = gaussian_noise_like(template, 0.5, rng, workers=4)
    assert list(four) == list(template)
    for k, v in template.items():
        assert four[k].shape == v.shape
        assert four[k].dtype == (np.float64 if k == "c" else np.float32)
        np.testing.assert_array_equal(one[k], four[k])
    # The parent generator advances by one fixed draw per call, so a saved state resumes the same sequence.
    ref = make_generator(21)[0]
    ref.integers(0, 2**63, size=4, dtype=np.int64)
    assert rng.bit_generator.state == ref.bit_generator.state
    second = gaussian_noise_like(template, 0.5, rng, workers=2)
    assert not np.array_equal(second["a"][:100], four["a"][:100])
    # Chunks are independent streams: no repeated values across the border and no correlation.
    flat = np.concatenate([four["a"], four["b"].ravel(), four["d"]])
    first, nxt = flat[: NOISE_CHUNK // 2], flat[NOISE_CHUNK : NOISE_CHUNK + NOISE_CHUNK // 2]
    assert abs(float(np.corrcoef(first, nxt)[0, 1])) < 0.005
    assert np.std(flat) == pytest.approx(0.5, rel=0.005)
