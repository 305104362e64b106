from __future__ import annotations

import math

import numpy as np
import pytest

from wsiseg.errors import PrivacyError
from wsiseg.privacy.clipping import clip_update, global_l2_norm


def _update(rng: np.random.Generator, scale: float = 1.0) -> dict[str, np.ndarray]:
    return {
        "conv.weight": (scale * rng.standard_normal((8, 3, 3, 3))).astype(np.float32),
        "conv.bias": (scale * rng.standard_normal(8)).astype(np.float32),
        "head.weight": (scale * rng.standard_normal((4, 8))).astype(np.float32),
    }


def test_global_l2_norm_hand_computed():
    update = {"a": np.array([3.0, 0.0], np.float32), "b": np.array([[4.0]], np.float32)}
    assert global_l2_norm(update) == pytest.approx(5.0)
    assert global_l2_norm({"z": np.zeros(3, np.float32)}) == 0.0


@pytest.mark.parametrize("scope", ["model", "layer"])
@pytest.mark.parametrize("clip", [0.05, 0.5, 3.0])
def test_clip_bounds_the_norm(scope, clip):
    update = _update(np.random.default_rng(0), scale=2.0)  # norm about 30, always above clip
    clipped, info = clip_update(update, clip, scope=scope)
    assert global_l2_norm(clipped) <= clip + 1e-6
    assert info.post_clip_norm == pytest.approx(global_l2_norm(clipped))
    assert info.pre_clip_norm == pytest.approx(global_l2_norm(update))
    assert info.clipped
    assert all(v.dtype == np.float32 for v in clipped.values())
    if scope == "layer":
        per_tensor = clip / math.sqrt(len(update))
        assert all(global_l2_norm({k: v}) <= per_tensor + 1e-6 for k, v in clipped.items())


def test_model_scope_is_eq11_scaling_and_keeps_direction():
    update = _update(np.random.default_rng(1), scale=1.0)
    norm = global_l2_norm(update)
    clipped, _ = clip_update(update, 0.5, scope="model")
    factor = 1.0 / max(1.0, norm / 0.5)
    for k in update:
        np.testing.assert_allclose(clipped[k], update[k] * factor, rtol=1e-6, atol=1e-7)
    assert global_l2_norm(clipped) == pytest.approx(0.5, rel=1e-6)


@pytest.mark.parametrize("scope", ["model", "layer"])
def test_small_update_is_unchanged(scope):
    update = _update(np.random.default_rng(2), scale=1e-3)
    clipped, info = clip_update(update, 10.0, scope=scope)
    assert not info.clipped
    for k in update:
        np.testing.assert_array_equal(clipped[k], update[k])
        assert clipped[k] is not update[k]


def test_layer_scope_clips_one_large_tensor_only():
    update = {"big": np.full(4, 10.0, np.float32), "small": np.full(4, 0.01, np.float32)}
    clipped, info = clip_update(update, 1.0, scope="layer")
    budget = 1.0 / math.sqrt(2)
    assert global_l2_norm({"big": clipped["big"]}) == pytest.approx(budget, rel=1e-6)
    np.testing.assert_array_equal(clipped["small"], update["small"])
    assert info.clipped


@pytest.mark.parametrize("scope", ["model", "layer"])
def test_input_not_mutated(scope):
    update = _update(np.random.default_rng(3), scale=5.0)
    before = {k: v.copy() for k, v in update.items()}
    clip_update(update, 0.1, scope=scope)
    for k in update:
        np.testing.assert_array_equal(update[k], before[k])


def test_zero_update_and_errors():
    clipped, info = clip_update({"w": np.zeros(5, np.float32)}, 1.0)
    assert info.pre_clip_norm == 0.0
    assert not info.clipped
    np.testing.assert_array_equal(clipped["w"], 0.0)
    with pytest.raises(PrivacyError, match="clip norm"):
        clip_update({"w": np.ones(2, np.float32)}, 0.0)
    with pytest.raises(PrivacyError, match="scope"):
        clip_update({"w": np.ones(2, np.float32)}, 1.0, scope="bogus")  # type: ignore[arg-type]
    with pytest.raises(PrivacyError, match="NaN"):
        clip_update({"w": np.array([np.nan], np.float32)}, 1.0)
    with pytest.raises(PrivacyError, match="dtype"):
        clip_update({"n": np.array([1], np.int64)}, 1.0)
    with pytest.raises(PrivacyError, match="empty"):
        clip_update({}, 1.0)
