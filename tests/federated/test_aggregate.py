from __future__ import annotations

import json
import math

import numpy as np
import pytest

from wsiseg.errors import ModelError, PrivacyError
from wsiseg.federated.aggregate import (
    apply_update,
    dp_client_update_local,
    dp_fedavg_central,
    dp_fedavg_local_aggregate,
    fedavg,
)
from wsiseg.privacy.clipping import global_l2_norm
from wsiseg.privacy.noise import make_generator


def _u(w: list[float], b: float) -> dict[str, np.ndarray]:
    return {"w": np.array(w, np.float32), "b": np.array([b], np.float32)}


def test_fedavg_unweighted_and_weighted_hand_computed():
    ups = [_u([1.0, 2.0], 0.0), _u([3.0, 6.0], 3.0), _u([5.0, 1.0], 6.0)]
    mean = fedavg(ups)
    np.testing.assert_allclose(mean["w"], [3.0, 3.0])
    np.testing.assert_allclose(mean["b"], [3.0])
    weighted = fedavg(ups, [1.0, 1.0, 2.0])  # (1+3+10)/4, (2+6+2)/4, (0+3+12)/4
    np.testing.assert_allclose(weighted["w"], [3.5, 2.5])
    np.testing.assert_allclose(weighted["b"], [3.75])
    assert weighted["w"].dtype == np.float32
    with pytest.raises(PrivacyError):
        fedavg(ups, [1.0, -1.0, 1.0])
    with pytest.raises(PrivacyError):
        fedavg(ups, [0.0, 0.0, 0.0])
    with pytest.raises(ModelError):
        fedavg([_u([1.0, 2.0], 0.0), {"w": np.zeros(3, np.float32), "b": np.zeros(1, np.float32)}])
    with pytest.raises(ModelError):
        fedavg([])


def test_central_without_noise_is_mean_of_clipped():
    ups = [_u([3.0, 4.0], 0.0), _u([0.3, 0.0], 0.4)]  # norms 5 and 0.5
    rng, _ = make_generator(0)
    mean, stats = dp_fedavg_central(ups, clip_norm=1.0, noise_multiplier=0.0, rng=rng)
    # First clipped to (0.6, 0.8, 0); second unchanged.
    np.testing.assert_allclose(mean["w"], [(0.6 + 0.3) / 2, 0.8 / 2], rtol=1e-6)
    np.testing.assert_allclose(mean["b"], [0.2], rtol=1e-6)
    assert stats.pre_clip_norms == pytest.approx([5.0, 0.5])
    assert stats.fraction_clipped == 0.5
    assert stats.noise_std_sum == 0.0
    assert stats.noise_norm == 0.0
    assert stats.clipped_mean_norm == pytest.approx(global_l2_norm(mean))
    json.dumps(stats.as_dict())


def test_central_stats_and_denominator():
    ups = [_u([3.0, 4.0], 0.0) for _ in range(4)]
    rng, _ = make_generator(1)
    _mean, stats = dp_fedavg_central(ups, clip_norm=0.5, noise_multiplier=0.05, rng=rng, denominator=5.0)
    assert stats.n_clients == 4
    assert stats.denominator == 5.0
    assert stats.noise_std_sum == pytest.approx(0.025)
    assert stats.noise_std_mean == pytest.approx(0.005)
    assert stats.clipped_mean_norm == pytest.approx(4 * 0.5 / 5, rel=1e-6)
    assert stats.noise_to_signal == pytest.approx(stats.noise_norm / stats.clipped_mean_norm)
    assert stats.fraction_clipped == 1.0
    with pytest.raises(PrivacyError):
        dp_fedavg_central(ups, clip_norm=0.5, noise_multiplier=1.0, rng=rng, denominator=0)


def test_central_vs_local_noise_placement_empirical():
    # Central: noise N(0, (zC)^2) once on the sum -> mean std zC/n.
    # Local: each client adds N(0, (zC)^2) -> mean std zC/sqrt(n).
    z, clip, n, d = 1.0, 0.5, 4, 250_000
    rng_data = np.random.default_rng(5)
    ups = [{"w": (0.001 * rng_data.standard_normal(d)).astype(np.float32)} for _ in range(n)]
    clean_mean = fedavg(ups)["w"].astype(np.float64)
    rng, _ = make_generator(11)
    central, _ = dp_fedavg_central(ups, clip_norm=clip, noise_multiplier=z, rng=rng)
    noised = [
        dp_client_update_local(u, clip_norm=clip, noise_multiplier=z, rng=make_generator(100 + i)[0])[0]
        for i, u in enumerate(ups)
    ]
    local = dp_fedavg_local_aggregate(noised)
    central_std = float(np.std(central["w"] - clean_mean))
    local_std = float(np.std(local["w"] - clean_mean))
    assert central_std == pytest.approx(z * clip / n, rel=0.01)
    assert local_std == pytest.approx(z * clip / math.sqrt(n), rel=0.01)


def test_local_client_update_clips_then_noises():
    up = _u([30.0, 40.0], 0.0)
    out, info = dp_client_update_local(up, clip_norm=1.0, noise_multiplier=0.0, rng=make_generator(0)[0], scope="model")
    np.testing.assert_allclose(out["w"], [0.6, 0.8], rtol=1e-6)
    assert info.clipped
    assert info.pre_clip_norm == pytest.approx(50.0)


@pytest.mark.parametrize("scope", ["model", "layer"])
def test_dp_functions_do_not_mutate_inputs(scope):
    ups = [_u([3.0, 4.0], 1.0), _u([-1.0, 0.5], 2.0)]
    before = [{k: v.copy() for k, v in u.items()} for u in ups]
    rng, _ = make_generator(3)
    dp_fedavg_central(ups, clip_norm=0.5, noise_multiplier=1.0, rng=rng, scope=scope)
    dp_client_update_local(ups[0], clip_norm=0.5, noise_multiplier=1.0, rng=rng, scope=scope)
    for u, b in zip(ups, before, strict=True):
        for k in u:
            np.testing.assert_array_equal(u[k], b[k])


def test_central_seeded_reproducible():
    ups = [_u([3.0, 4.0], 1.0), _u([-1.0, 0.5], 2.0)]
    a, _ = dp_fedavg_central(ups, clip_norm=0.5, noise_multiplier=1.0, rng=make_generator(9)[0])
    b, _ = dp_fedavg_central(ups, clip_norm=0.5, noise_multiplier=1.0, rng=make_generator(9)[0])
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_apply_update_adds_and_copies_buffers():
    glob = {
        "w": np.array([1.0, 1.0], np.float32),
        "b": np.array([0.5], np.float32),
        "bn.running_mean": np.array([7.0], np.float32),
    }
    new = apply_update(glob, _u([0.25, -1.0], 0.5))
    np.testing.assert_allclose(new["w"], [1.25, 0.0])
    np.testing.assert_allclose(new["b"], [1.0])
    np.testing.assert_array_equal(new["bn.running_mean"], [7.0])
    assert new["bn.running_mean"] is not glob["bn.running_mean"]
    np.testing.assert_array_equal(glob["w"], [1.0, 1.0])
    with pytest.raises(ModelError):
        apply_update(glob, {"missing": np.zeros(1, np.float32)})
    with pytest.raises(ModelError):
        apply_update(glob, {"w": np.zeros(3, np.float32)})
