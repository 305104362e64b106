"""DP-SGD inside a site (Abadi et al. 2016) with a unit of privacy: one tile, one slide or one patient.

One step: Poisson-sample units with rate ``q`` from the site's secret generator; take up to
``tiles_per_unit`` tiles of each sampled unit; compute per-example gradients of the whole model with
``torch.func`` (``vmap`` over ``grad`` of a functional call, in chunks of ``physical_batch``); sum them per
unit and clip each unit's sum to L2 norm ``C``; add ``N(0, sigma^2 C^2)`` to the sum from the explicit noise
generator; divide by the expected number of units ``q * N`` and let the optimiser step on that mean.

Adding or removing one unit changes a step's noised sum by at most ``C`` whatever its tiles are, so every
step is a Poisson-subsampled Gaussian mechanism with noise multiplier ``sigma`` over the site's units, and
everything the site releases afterwards (its update, under any FedAvg) is post-processing of it.

The maths (unit sums, clipping, noise) are pure functions; :func:`dp_sgd_steps` is the loop around them.
Works for any model without BatchNorm running statistics (GroupNorm variants), timm's Swin and ConvNeXt
included, since ``torch.func`` differentiates the forward as written instead of hooking known layer types.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from wsiseg.errors import PrivacyError
from wsiseg.train.loop import StepStats
from wsiseg.train.losses import SegLoss, check_target

__all__ = [
    "Canaries",
    "DpSgdConfig",
    "clip_unit_sums",
    "dp_sgd_steps",
    "gaussian_like",
    "per_example_grads",
    "poisson_sample",
    "unit_sums",
]

Grads = dict[str, torch.Tensor]

_EPS = 1e-6


@dataclass(frozen=True)
class DpSgdConfig:
    """Sample-level DP-SGD settings of every site (``--dp sample``).

    Attributes:
        clip: Per-unit clip norm ``C``.
        noise_multiplier: ``sigma``: noise std on the step's sum is ``sigma * C``.
        unit: ``tile``, ``slide`` or ``patient``.
        sample_rate: Poisson rate ``q`` of units per step; ``None``: ``batch_size / units`` at each site.
        physical_batch: Examples per ``vmap`` chunk (bounds memory; no effect on the result).
        tiles_per_unit: Most tiles of one sampled unit used in a step (``slide`` and ``patient``).
        patients: Slide -> patient table (``patient`` unit).
        patients_name: The table's path, for messages.
    """

    clip: float
    noise_multiplier: float
    unit: str = "tile"
    sample_rate: float | None = None
    physical_batch: int = 8
    tiles_per_unit: int = 8
    patients: Mapping[str, str] | None = None
    patients_name: str = "--patients"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clip) and self.clip > 0):
            msg = f"--clip must be a finite number > 0, got {self.clip}"
            raise PrivacyError(msg)
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0):
            msg = f"--sigma must be a finite number >= 0, got {self.noise_multiplier}"
            raise PrivacyError(msg)
        if self.sample_rate is not None and not (0 < self.sample_rate <= 1):
            msg = f"--sample-rate (units per step) must be in (0, 1], got {self.sample_rate}"
            raise PrivacyError(msg)
        if self.physical_batch < 1 or self.tiles_per_unit < 1:
            msg = (
                f"--physical-batch and --tiles-per-unit must be >= 1, got {self.physical_batch}, {self.tiles_per_unit}"
            )
            raise PrivacyError(msg)

    def rate(self, n_units: int, batch_size: int, *, site: str = "site") -> float:
        """The Poisson rate ``q`` at a site with ``n_units`` units.

        Raises:
            PrivacyError: A site without units, or ``batch_size / n_units`` above 1.
        """
        if n_units < 1:
            msg = f"{site} has no {self.unit}s to train on"
            raise PrivacyError(msg)
        if self.sample_rate is not None:
            return self.sample_rate
        q = batch_size / n_units
        if q > 1:
            msg = (f"{site} has {n_units} {self.unit}(s), fewer than --batch-size {batch_size}: the sample rate "
                   f"q = {q:.3g} is above 1; lower --batch-size or pass --sample-rate")  # fmt: skip
            raise PrivacyError(msg)
        return q

    @staticmethod
    def steps_per_round(q: float, *, local_steps: int | None, local_epochs: int) -> int:
        """Local steps a round: ``--local-steps``, else ``--local-epochs`` expected passes (``ceil(1 / q)`` each)."""
        return int(local_steps) if local_steps is not None else int(local_epochs) * math.ceil(1.0 / q - 1e-9)

    def public_dict(self) -> dict[str, Any]:
        """The settings as they may be shared (no patient table)."""
        return {"unit": self.unit, "clip": self.clip, "noise_multiplier": self.noise_multiplier,
                "sample_rate": self.sample_rate, "tiles_per_unit": self.tiles_per_unit}  # fmt: skip


def per_example_grads(
    model: nn.Module,
    loss_fn: SegLoss,
    images: torch.Tensor,
    masks: torch.Tensor,
    *,
    autocast: Any = None,
) -> tuple[Grads, torch.Tensor]:
    """Gradients of the loss of every example separately, for every trainable parameter.

    Args:
        model: The model (its mode decides dropout; random layers draw independently per example).
        loss_fn: The segmentation loss (its :meth:`SegLoss.value`, which traces under ``vmap``).
        images: ``(B, 3, H, W)``.
        masks: ``(B, H, W)`` class ids (checked here once for the batch).
        autocast: A context manager factory for mixed precision (None: full precision).

    Returns:
        ``({name: (B, *param.shape)}, per-example losses (B,))``.
    """
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    buffers = dict(model.named_buffers())
    num_classes = loss_fn.num_classes
    check_target(torch.empty(masks.shape[0], num_classes, *masks.shape[1:], device="meta"), masks.cpu())

    def loss_one(p: Grads, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        ctx = autocast() if autocast is not None else torch.autocast("cpu", enabled=False)
        with ctx:
            raw = functional_call(model, ({**p, **frozen}, buffers), (x.unsqueeze(0),))
        out = [o.float() for o in raw] if isinstance(raw, list | tuple) else raw.float()
        return loss_fn.value(out, y.unsqueeze(0))

    grads, losses = vmap(grad_and_value(loss_one), in_dims=(None, 0, 0), randomness="different")(params, images, masks)
    return {n: grads[n] for n in names}, losses


def unit_sums(per_example: Grads, unit_index: torch.Tensor, n_units: int) -> Grads:
    """Sum per-example gradients by unit: row ``u`` is the sum of the examples with ``unit_index == u``."""
    idx = unit_index.to(next(iter(per_example.values())).device)
    out = {}
    for name, g in per_example.items():
        acc = torch.zeros((n_units, *g.shape[1:]), dtype=g.dtype, device=g.device)
        out[name] = acc.index_add_(0, idx, g)
    return out


def clip_unit_sums(units: Grads, clip: float) -> tuple[Grads, torch.Tensor]:
    """Clip each unit's gradient (a row) to L2 norm ``clip`` over the whole model and sum the rows.

    Returns:
        ``(sum of clipped rows per parameter, each row's norm before clipping)``.
    """
    sq = sum(g.flatten(1).pow(2).sum(1) for g in units.values())
    norms = torch.as_tensor(sq).sqrt()
    factor = (clip / (norms + _EPS)).clamp(max=1.0)
    summed = {n: torch.einsum("u,u...->...", factor.to(g.dtype), g) for n, g in units.items()}
    return summed, norms


def gaussian_like(template: Grads, std: float, generator: torch.Generator) -> Grads:
    """Independent ``N(0, std^2)`` per coordinate, shaped like ``template``, from ``generator``."""
    return {
        n: torch.randn(t.shape, generator=generator, device=t.device, dtype=torch.float32).to(t.dtype) * std
        for n, t in template.items()
    }


def poisson_sample(rng: np.random.Generator, n_units: int, rate: float) -> np.ndarray:
    """Indices of the units taken in one step: each independently with probability ``rate``."""
    return np.flatnonzero(rng.random(n_units) < rate)


@dataclass
class _Carry:
    unit: int
    grads: Grads


def _step_sum(
    model: nn.Module,
    loss_fn: SegLoss,
    load: Callable[[Sequence[int]], tuple[torch.Tensor, torch.Tensor]],
    examples: list[int],
    unit_of: list[int],
    cfg: DpSgdConfig,
    autocast: Any,
) -> tuple[Grads | None, list[float], list[float]]:
    """Sum over sampled units of their clipped gradients, chunk by chunk; a unit may span chunks."""
    total: Grads | None = None
    carry: _Carry | None = None
    norms: list[float] = []
    losses: list[float] = []
    for start in range(0, len(examples), cfg.physical_batch):
        chunk = examples[start : start + cfg.physical_batch]
        owners = unit_of[start : start + cfg.physical_batch]
        images, masks = load(chunk)
        grads, loss = per_example_grads(model, loss_fn, images, masks, autocast=autocast)
        losses.extend(loss.detach().float().cpu().tolist())
        first = owners[0]
        local = torch.tensor([u - first for u in owners])
        rows = unit_sums(grads, local, owners[-1] - first + 1)
        del grads
        if carry is not None and carry.unit == first:
            for n in rows:
                rows[n][0] += carry.grads[n]
            carry = None
        continues = start + cfg.physical_batch < len(examples) and unit_of[start + cfg.physical_batch] == owners[-1]
        done = owners[-1] - first + (0 if continues else 1)
        if continues:
            carry = _Carry(owners[-1], {n: g[-1].clone() for n, g in rows.items()})
        if done > 0:
            summed, unit_norms = clip_unit_sums({n: g[:done] for n, g in rows.items()}, cfg.clip)
            norms.extend(unit_norms.cpu().tolist())
            total = summed if total is None else {n: total[n] + summed[n] for n in total}
    return total, norms, losses


class Canaries(Protocol):
    """Audit canaries: ``count`` extra units whose per-unit gradients the auditor supplies."""

    count: int

    def gradients(self, indices: list[int], like: Grads) -> Grads:
        """Per-unit gradients (a leading unit axis) of the sampled canaries, shaped like ``like``."""
        ...


@dataclass
class DpSgdStats(StepStats):
    """What a run of DP-SGD steps did (site-private: sampled counts and norms never leave the site)."""

    units_sampled: int = 0
    fraction_clipped: float = 0.0


def dp_sgd_steps(
    model: nn.Module,
    load: Callable[[Sequence[int]], tuple[torch.Tensor, torch.Tensor]],
    groups: Sequence[Sequence[int]],
    cfg: DpSgdConfig,
    optimizer: torch.optim.Optimizer,
    loss_fn: SegLoss,
    *,
    rate: float,
    steps: int,
    lr_at: Callable[[int], float],
    first_step: int,
    noise_rng: np.random.Generator,
    data_rng: np.random.Generator,
    device: str = "cpu",
    autocast: Any = None,
    canaries: Canaries | None = None,
) -> DpSgdStats:
    """Run ``steps`` DP-SGD steps over a site's units.

    Args:
        model: The model, on ``device``, without BatchNorm running statistics.
        load: Dataset indices -> ``(images, masks)`` on ``device``.
        groups: Dataset indices of each unit.
        cfg: Clip norm, sigma, unit and chunking.
        optimizer: Steps on the noised mean gradient (any post-processing is allowed).
        loss_fn: The segmentation loss.
        rate: Poisson rate ``q`` of units per step.
        steps: Number of steps (each one accounted).
        lr_at: Learning rate for a global step number.
        first_step: Global step number of the first step.
        noise_rng: The site's secret generator: unit sampling and the seeds of the noise.
        data_rng: Which tiles of a sampled unit are used (training seed; no privacy role).
        device: Torch device string.
        autocast: Mixed-precision context factory (None: full precision).
        canaries: Audit only (``wsiseg audit canary``): extra units whose clipped gradients the auditor
            supplies; they are Poisson-sampled with the real units and noised with them.

    Returns:
        Steps, tiles used, mean loss, and the site-private sampling and clipping counts.
    """
    model.train()
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    n_real = len(groups)
    n_units = n_real + (canaries.count if canaries is not None else 0)
    expected = rate * n_units
    std = cfg.noise_multiplier * cfg.clip
    stats = DpSgdStats()
    clipped = seen = 0
    start = time.perf_counter()
    for s in range(steps):
        everyone = poisson_sample(noise_rng, n_units, rate)
        picked, canary_picked = everyone[everyone < n_real], everyone[everyone >= n_real] - n_real
        examples: list[int] = []
        unit_of: list[int] = []
        for u, g in enumerate(picked):
            tiles = list(groups[int(g)])
            if len(tiles) > cfg.tiles_per_unit:
                tiles = [tiles[int(i)] for i in sorted(data_rng.choice(len(tiles), cfg.tiles_per_unit, replace=False))]
            examples.extend(tiles)
            unit_of.extend([u] * len(tiles))
        total, norms, losses = (_step_sum(model, loss_fn, load, examples, unit_of, cfg, autocast) if examples
                                else (None, [], []))  # fmt: skip
        if total is None:
            total = {n: torch.zeros_like(p) for n, p in params.items()}
        if canaries is not None and len(canary_picked):
            extra, _ = clip_unit_sums(canaries.gradients(canary_picked.tolist(), total), cfg.clip)
            total = {n: total[n] + extra[n] for n in total}
        gen = torch.Generator(device=device).manual_seed(int(noise_rng.integers(0, 2**63 - 1)))
        noise = gaussian_like(total, std, gen)
        lr = lr_at(first_step + s)
        for group in optimizer.param_groups:
            group["lr"] = lr
        for n, p in params.items():
            p.grad = ((total[n] + noise[n]) / expected).to(p.dtype)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        stats.steps += 1
        stats.images += len(examples)
        stats.units_sampled += len(picked)
        stats.loss_sum += float(np.mean(losses)) if losses else 0.0
        clipped += sum(n > cfg.clip for n in norms)
        seen += len(norms)
    stats.fraction_clipped = clipped / seen if seen else 0.0
    stats.seconds = time.perf_counter() - start
    return stats
