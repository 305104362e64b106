"""Sample-level DP-SGD: per-example gradients, per-unit clipping, noise, accounting, against Opacus where it applies."""

from __future__ import annotations

import math
import warnings

import dp_accounting
import numpy as np
import pytest
import torch
from dp_accounting import pld

from wsiseg.errors import PrivacyError
from wsiseg.models import create_model, list_models
from wsiseg.privacy.dpsgd import (
    DpSgdConfig,
    clip_unit_sums,
    dp_sgd_steps,
    gaussian_like,
    per_example_grads,
    poisson_sample,
    unit_sums,
)
from wsiseg.privacy.ledger import PrivacyLedger
from wsiseg.train.loop import make_loss

TINY = sorted(m for m in list_models() if m.endswith("_tiny"))


def _model(name: str, **kw: object) -> torch.nn.Module:
    args = {"img_size": 64} if name.startswith("dhunet") else {}
    torch.manual_seed(0)
    return create_model(name, num_classes=3, norm="groupnorm", **{**args, **kw})


def _batch(n: int, size: int = 64, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=gen), torch.randint(0, 3, (n, size, size), generator=gen)


def _close(a: torch.Tensor, b: torch.Tensor, what: str, scale: float | None = None) -> None:
    """Equal to float32 accumulation error (vmap picks other kernels): within 2e-3 of the largest gradient entry."""
    err = float((a - b).abs().max())
    ref = max(float(b.abs().max()), scale or 0.0)
    assert err <= 2e-3 * ref + 1e-7, f"{what}: max error {err:.3g} against scale {ref:.3g}"


def _scale(grads: dict[str, torch.Tensor]) -> float:
    return max(float(g.abs().max()) for g in grads.values())


def _single_grads(model: torch.nn.Module, loss_fn: object, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss_fn(model(x), y).backward()  # type: ignore[operator]
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", TINY)
def test_per_example_gradients_equal_single_example_gradients(name: str) -> None:
    assert len(TINY) == 7
    model = _model(name).eval()  # eval: no dropout, so both paths see the same function (GroupNorm has no stats)
    loss_fn = make_loss(model, 3)
    x, y = _batch(2)
    per, losses = per_example_grads(model, loss_fn, x, y)
    assert set(per) == {n for n, p in model.named_parameters() if p.requires_grad}
    for i in range(2):
        ref = _single_grads(model, loss_fn, x[i : i + 1], y[i : i + 1])
        for n, g in ref.items():
            _close(per[n][i], g, f"{name} {n} example {i}", _scale(ref))
        assert float(losses[i]) == pytest.approx(float(loss_fn(model(x[i : i + 1]), y[i : i + 1])), rel=1e-5)
    assert not torch.allclose(per[next(iter(per))][0], per[next(iter(per))][1])  # examples really differ


@pytest.mark.slow
def test_per_example_gradients_of_full_dhunet_on_one_example() -> None:
    model = create_model("dhunet", num_classes=3, norm="groupnorm").eval()
    loss_fn = make_loss(model, 3)
    x, y = _batch(1, size=224)
    per, _ = per_example_grads(model, loss_fn, x, y)
    ref = _single_grads(model, loss_fn, x, y)
    assert sum(p.numel() for p in ref.values()) > 50e6
    for n, g in ref.items():
        _close(per[n][0], g, n, _scale(ref))


def test_per_example_gradients_agree_with_opacus_where_it_applies() -> None:
    opacus = pytest.importorskip("opacus")
    model = _model("unet_tiny").train()  # Opacus records only in training mode; unet_tiny has no dropout
    assert not any(isinstance(m, torch.nn.Dropout) for m in model.modules())
    for m in model.modules():
        if hasattr(m, "inplace"):
            m.inplace = False  # Opacus's hooks need out-of-place activations
    loss_fn = make_loss(model, 3)
    x, y = _batch(4)
    ours, _ = per_example_grads(model, loss_fn, x, y)
    gsm = opacus.GradSampleModule(model, loss_reduction="sum")
    # per-example losses summed: Opacus's grad_sample row i is example i's gradient
    out = gsm(x)
    losses = torch.stack([loss_fn.value(out[i : i + 1], y[i : i + 1]) for i in range(4)])
    losses.sum().backward()
    for n, p in gsm._module.named_parameters():
        _close(ours[n], p.grad_sample, n, _scale(ours))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(NotImplementedError):  # Opacus cannot do Swin attention (why wsiseg uses torch.func)
            opacus.GradSampleModule(_model("dhunet_tiny"))


def test_unit_sums_and_clipping_bound_every_unit() -> None:
    gen = torch.Generator().manual_seed(0)
    per = {"a": torch.randn(6, 4, generator=gen) * 5, "b": torch.randn(6, 2, 3, generator=gen) * 5}
    units = torch.tensor([0, 0, 0, 1, 2, 2])
    rows = unit_sums(per, units, 3)
    torch.testing.assert_close(rows["a"][0], per["a"][:3].sum(0))
    torch.testing.assert_close(rows["b"][2], per["b"][4:].sum(0))
    summed, norms = clip_unit_sums(rows, clip=1.0)
    expect = torch.sqrt(rows["a"].pow(2).sum(1) + rows["b"].flatten(1).pow(2).sum(1))
    torch.testing.assert_close(norms, expect)
    assert (norms > 1.0).all()  # every unit is clipped here, so the sum has norm <= 3 (one C per unit)
    total = math.sqrt(float(summed["a"].pow(2).sum() + summed["b"].pow(2).sum()))
    assert total <= 3.0 + 1e-5
    small, _ = clip_unit_sums({k: v * 1e-3 for k, v in rows.items()}, clip=1.0)
    torch.testing.assert_close(small["a"], rows["a"].sum(0) * 1e-3)  # under the bound: untouched


def test_noise_std_is_sigma_times_clip() -> None:
    template = {"w": torch.zeros(200_000)}
    draws = gaussian_like(template, 0.35, torch.Generator().manual_seed(5))["w"]
    assert float(draws.std()) == pytest.approx(0.35, rel=0.01)
    assert abs(float(draws.mean())) < 0.01
    again = gaussian_like(template, 0.35, torch.Generator().manual_seed(5))["w"]
    assert torch.equal(draws, again)  # the explicit generator decides the noise


def test_poisson_sampling_rate() -> None:
    rng = np.random.default_rng(0)
    counts = [len(poisson_sample(rng, 1000, 0.05)) for _ in range(200)]
    assert np.mean(counts) == pytest.approx(50, rel=0.05)
    assert np.std(counts) == pytest.approx(math.sqrt(1000 * 0.05 * 0.95), rel=0.2)  # Poisson, not fixed-size


class _Data:
    """A dataset of random tiles, loaded by index as a site's TileDataset is."""

    def __init__(self, n: int) -> None:
        self.x, self.y = _batch(n, size=32, seed=7)

    def load(self, idx: object) -> tuple[torch.Tensor, torch.Tensor]:
        ids = list(idx)  # type: ignore[call-overload]
        return self.x[ids], self.y[ids]


def _sgd(model: torch.nn.Module) -> torch.optim.SGD:
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0, momentum=0.0)


def _flat_delta(before: dict[str, torch.Tensor], model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([(before[n] - p.detach()).flatten() for n, p in model.named_parameters()])


def test_one_slide_with_many_tiles_contributes_at_most_c() -> None:
    """A slide unit of 10 tiles spread over 4 chunks is clipped as one: step = its clipped summed gradient."""
    data = _Data(10)
    model = _model("unet_tiny").eval()
    loss_fn = make_loss(model, 3)
    cfg = DpSgdConfig(clip=0.01, noise_multiplier=0.0, unit="slide", sample_rate=1.0, physical_batch=3,
                      tiles_per_unit=10)  # fmt: skip
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    # reference: the gradient of the summed loss of the slide's tiles, clipped to C once
    model.zero_grad()
    sum(loss_fn(model(data.x[i : i + 1]), data.y[i : i + 1]) for i in range(10)).backward()  # type: ignore[union-attr]
    ref = torch.cat([p.grad.flatten() for _, p in model.named_parameters()])  # type: ignore[union-attr]
    ref = ref * min(1.0, 0.01 / float(ref.norm()))
    model.zero_grad(set_to_none=True)
    stats = dp_sgd_steps(model, data.load, [list(range(10))], cfg, _sgd(model), loss_fn, rate=1.0, steps=1,
                         lr_at=lambda _s: 1.0, first_step=0, noise_rng=np.random.default_rng(0),
                         data_rng=np.random.default_rng(0))  # fmt: skip
    step = _flat_delta(before, model)
    assert stats.images == 10
    assert float(step.norm()) <= 0.01 * (1 + 1e-4)
    torch.testing.assert_close(step, ref, rtol=1e-3, atol=1e-7)


def test_tile_units_and_noise_reach_the_step() -> None:
    data = _Data(6)
    model = _model("unet_tiny").eval()
    loss_fn = make_loss(model, 3)
    # q so small that no tile is sampled: the step is noise only, std sigma*C / (q*N) per coordinate (lr 1)
    cfg = DpSgdConfig(clip=0.5, noise_multiplier=2.0, unit="tile", sample_rate=1e-9)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    dp_sgd_steps(model, data.load, [[i] for i in range(6)], cfg, _sgd(model), loss_fn, rate=0.5, steps=1,
                 lr_at=lambda _s: 1.0, first_step=0, noise_rng=np.random.default_rng(1),
                 data_rng=np.random.default_rng(0))  # fmt: skip
    step = _flat_delta(before, model)
    assert float(step.std()) == pytest.approx(2.0 * 0.5 / (0.5 * 6), rel=0.05)
    # every tile sampled and no noise: the step is the sum of per-tile clipped gradients over q*N
    model2 = _model("unet_tiny").eval()
    before2 = {n: p.detach().clone() for n, p in model2.named_parameters()}
    per, _ = per_example_grads(model2, loss_fn, data.x, data.y)
    clipped, _ = clip_unit_sums(per, 0.05)
    ref = torch.cat([clipped[n].flatten() for n, _ in model2.named_parameters()]) / 6
    cfg0 = DpSgdConfig(clip=0.05, noise_multiplier=0.0, unit="tile")
    dp_sgd_steps(model2, data.load, [[i] for i in range(6)], cfg0, _sgd(model2), loss_fn, rate=1.0, steps=1,
                 lr_at=lambda _s: 1.0, first_step=0, noise_rng=np.random.default_rng(1),
                 data_rng=np.random.default_rng(0))  # fmt: skip
    torch.testing.assert_close(_flat_delta(before2, model2), ref, rtol=1e-3, atol=1e-7)


@pytest.mark.parametrize(("q", "sigma", "steps"), [(0.01, 1.0, 1000), (0.1, 1.5, 300), (0.05, 0.8, 50)])
def test_site_epsilon_equals_independent_accounting(q: float, sigma: float, steps: int) -> None:
    ledger = PrivacyLedger(delta=1e-5)
    per_round = steps // 2
    for r in (1, 2):
        ledger.record_round(round=r, noise_multiplier=sigma, sample_rate=q, clip=1.0, n_clients_released=1,
                            steps=per_round)  # fmt: skip
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), per_round * 2
    )
    acc = pld.PLDAccountant(value_discretization_interval=1e-4)
    acc.compose(event)
    expect = acc.get_epsilon(1e-5)
    assert ledger.epsilon() == pytest.approx(expect, rel=2e-3)
    opacus = pytest.importorskip("opacus")
    op = opacus.accountants.RDPAccountant()
    op.history = [(sigma, q, per_round * 2)]
    assert ledger.epsilon(method="rdp") == pytest.approx(op.get_epsilon(1e-5), rel=0.03)
    assert ledger.epsilon() <= ledger.epsilon(method="rdp") + 1e-9  # PLD is the tighter bound
    assert ledger.entries[-1].steps == per_round


def test_bad_sample_settings_are_privacy_errors() -> None:
    with pytest.raises(PrivacyError, match="--sample-rate"):
        DpSgdConfig(clip=1.0, noise_multiplier=1.0, sample_rate=1.5)
    with pytest.raises(PrivacyError, match="above 1"):
        DpSgdConfig(clip=1.0, noise_multiplier=1.0).rate(4, batch_size=8, site="site A")
    assert DpSgdConfig(clip=1.0, noise_multiplier=1.0).rate(80, batch_size=8) == pytest.approx(0.1)
    assert DpSgdConfig.steps_per_round(0.1, local_steps=None, local_epochs=2) == 20
