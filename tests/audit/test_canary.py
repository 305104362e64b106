"""The canary audit finds a broken mechanism and does not accuse a correct one.

"Broken" is the real code path with its Gaussian noise silently replaced by zeros while the accountant is still
told sigma: the empirical lower bound must then exceed the accountant's epsilon. With the noise on, the bound
must stay at or below it (it is a 95 % bound, so these seeds are fixed).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import wsiseg.federated.aggregate as aggregate
import wsiseg.privacy.dpsgd as dpsgd
from wsiseg.audit.canary import CanaryConfig, Directions, run_canary_audit
from wsiseg.audit.inputs import load_audit_model, pick_targets
from wsiseg.audit.invert import LocalRecipe
from wsiseg.errors import PrivacyError
from wsiseg.train.loop import make_loss


def _silence_noise(monkeypatch: pytest.MonkeyPatch) -> None:
    def zeros(update: dict, std: float, rng: object, **_: object) -> dict:
        return {n: np.zeros_like(v) for n, v in update.items()}

    monkeypatch.setattr(aggregate, "gaussian_noise_like", zeros)
    monkeypatch.setattr(dpsgd, "gaussian_like", lambda t, std, gen: {n: torch.zeros_like(v) for n, v in t.items()})


def _audit(tiles: Path, mode: str, **kw: float) -> tuple[float, float]:
    am = load_audit_model(None, model_name="unet_tiny", tile_size=32, seed=0)
    t = pick_targets(tiles, 8, tile_size=32, num_classes=4, seed=0)
    data = [(t.images[:4], t.masks[:4]), (t.images[4:], t.masks[4:])]
    cfg = CanaryConfig(mode=mode, sigma=3.0, rounds=3, canaries=100, guesses=25, seed=1, noise_seed=2, **kw)  # type: ignore[arg-type]
    res = run_canary_audit(cfg, am.model, make_loss(am.model, 4), data, LocalRecipe())
    return res.lower_bound, res.claimed_epsilon


@pytest.mark.parametrize(("mode", "kw"), [("central", {}), ("sample", {"sample_rate": 0.5, "steps_per_round": 2})])
def test_noise_silently_off_is_caught(tiles32: Path, monkeypatch: pytest.MonkeyPatch, mode: str, kw: dict) -> None:
    _silence_noise(monkeypatch)
    bound, claimed = _audit(tiles32, mode, **kw)
    assert bound > claimed, (bound, claimed)


@pytest.mark.parametrize(("mode", "kw"), [("central", {}), ("sample", {"sample_rate": 0.5, "steps_per_round": 2})])
def test_correct_mechanism_stays_within_its_epsilon(tiles32: Path, mode: str, kw: dict) -> None:
    bound, claimed = _audit(tiles32, mode, **kw)
    assert bound <= claimed, (bound, claimed)


@pytest.mark.slow
def test_local_mode_broken_and_correct(tiles32: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bound, claimed = _audit(tiles32, "local")
    assert bound <= claimed
    _silence_noise(monkeypatch)
    bound, claimed = _audit(tiles32, "local")
    assert bound > claimed


def test_directions_are_unit_and_regenerated_identically() -> None:
    template = {"a": np.zeros((3, 4), np.float32), "b": np.zeros(5, np.float32)}
    d = Directions(template, 4, seed=3)
    assert np.linalg.norm(d.flat(2)) == pytest.approx(1.0, rel=1e-5)
    assert np.array_equal(d.flat(1), Directions(template, 4, seed=3).flat(1))
    proj = d.project(d.update(1, 2.0))
    assert proj[1] == pytest.approx(2.0, rel=1e-5)
    assert abs(proj[0]) < 2.0


def test_bad_settings_are_refused() -> None:
    with pytest.raises(PrivacyError, match="not instrumented"):
        CanaryConfig(mode="secagg")
    with pytest.raises(PrivacyError, match="needs noise"):
        CanaryConfig(mode="central", sigma=0.0)
    with pytest.raises(PrivacyError, match="guesses"):
        CanaryConfig(mode="central", canaries=10, guesses=6)
