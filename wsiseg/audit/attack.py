"""``wsiseg audit invert``: gradient inversion against each protection, scored against two baselines.

For every scenario (worst case first: one local step on one tile, FedSGD; then the run's own local steps and
batch) and every protection (:mod:`wsiseg.audit.release`), the site trains on target tiles and releases its
update; the attacker (:mod:`wsiseg.audit.invert`) reconstructs the tiles from it. Each reconstruction gets
PSNR and SSIM against the true tile (torchmetrics), beside the same scores of two images an attacker has
without any update: the mean colour of the site's other tiles, and a random other tile of the site.

A verdict needs evidence that the attack works: only when the unprotected attack beats both baselines by the
margins :data:`PSNR_MARGIN_DB` and :data:`SSIM_MARGIN` does the report say, for each protection, whether it
brought the attack to baseline level. Otherwise it says the attack was too weak to judge. A protection that
stops this attack is not thereby shown to be private: the accountant's epsilon is printed beside it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from wsiseg.audit.invert import AttackConfig, LocalRecipe, invert_update
from wsiseg.audit.release import Condition, Release, release, to_pixels
from wsiseg.train.losses import SegLoss

__all__ = ["PSNR_MARGIN_DB", "SSIM_MARGIN", "AttackRow", "Scenario", "image_scores", "run_attacks", "verdicts"]

#: How much better than the best baseline the unprotected attack must be before any verdict is given, and the
#: band within which a protected attack counts as "at baseline level".
PSNR_MARGIN_DB = 3.0
SSIM_MARGIN = 0.10


@dataclass(frozen=True)
class Scenario:
    """Which local training is attacked: ``batch`` target tiles, ``recipe.steps`` local steps on them."""

    name: str
    batch: int
    recipe: LocalRecipe


@dataclass
class AttackRow:
    """One attack: scenario, protection, scores (means over the batch) and the evidence behind them."""

    scenario: str
    condition: str
    kind: str
    batch: int
    local_steps: int
    psnr: float
    ssim: float
    noise_to_signal: float
    epsilon: float | None
    plan: str
    attack_loss: float
    baseline_mean_psnr: float
    baseline_mean_ssim: float
    baseline_random_psnr: float
    baseline_random_ssim: float
    verdict: str = ""
    images: torch.Tensor | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (no images)."""
        out = {k: v for k, v in self.__dict__.items() if k != "images"}
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}


def image_scores(pred: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """Mean PSNR (dB) and SSIM over a batch of ``(B, 3, H, W)`` images in [0, 1], image by image."""
    psnr = [float(peak_signal_noise_ratio(p[None], t[None], data_range=1.0)) for p, t in zip(pred, target, strict=True)]
    ssim = [float(structural_similarity_index_measure(p[None], t[None], data_range=1.0))  # type: ignore[arg-type]
            for p, t in zip(pred, target, strict=True)]  # fmt: skip
    return float(np.mean(psnr)), float(np.mean(ssim))


def _matched(recon: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Reorder a batch reconstruction so image ``i`` is the one closest (MSE) to true image ``i`` (greedy)."""
    if len(recon) == 1:
        return recon
    err = ((recon[:, None] - truth[None]) ** 2).flatten(2).mean(2)  # (recon, truth)
    order = [-1] * len(truth)
    used: set[int] = set()
    for flat in torch.argsort(err.flatten()).tolist():
        r, t = divmod(flat, len(truth))
        if order[t] < 0 and r not in used:
            order[t] = r
            used.add(r)
    return recon[order]


def run_attacks(
    model: nn.Module,
    loss_fn: SegLoss,
    targets: tuple[torch.Tensor, torch.Tensor],
    baselines: tuple[torch.Tensor, torch.Tensor],
    scenarios: list[Scenario],
    conditions: list[Condition],
    attack: AttackConfig,
    noise_rng: np.random.Generator,
    *,
    on_done: Callable[[AttackRow], None] | None = None,
) -> list[AttackRow]:
    """Attack every protection in every scenario.

    Args:
        model: The global model, in training mode.
        loss_fn: The site's loss.
        targets: ``(images, masks)``: the site's target tiles (ImageNet-normalised) and masks, at least as many
            as the largest scenario batch.
        baselines: ``(mean-colour images, random other tiles)`` in [0, 1], one per target tile.
        scenarios: The local trainings to attack.
        conditions: The protections.
        attack: The attacker's optimisation settings.
        noise_rng: The site's noise generator.
        on_done: Called after each attack.

    Returns:
        One row per (scenario, protection), with the reconstructions attached.
    """
    rows: list[AttackRow] = []
    images, masks = targets
    for sc in scenarios:
        x, y = images[: sc.batch], masks[: sc.batch]
        truth = to_pixels(x)
        mean_psnr, mean_ssim = image_scores(baselines[0][: sc.batch], truth)
        rand_psnr, rand_ssim = image_scores(baselines[1][: sc.batch], truth)
        for cond in conditions:
            rel: Release = release(model, loss_fn, x, y, sc.recipe, cond, noise_rng)
            rec = invert_update(model, loss_fn, rel.update, y, sc.recipe, attack)
            recon = _matched(rec.images, truth)
            psnr, ssim = image_scores(recon, truth)
            row = AttackRow(sc.name, cond.label, cond.kind, sc.batch, sc.recipe.steps, psnr, ssim,
                            rel.noise_to_signal if rel.noise_norm > 0 else 0.0, cond.epsilon, cond.plan,
                            rec.loss, mean_psnr, mean_ssim, rand_psnr, rand_ssim, images=recon.cpu())  # fmt: skip
            rows.append(row)
            if on_done is not None:
                on_done(row)
    verdicts(rows)
    return rows


def verdicts(rows: list[AttackRow]) -> None:
    """Fill each row's verdict; a scenario gets verdicts only if its unprotected attack beats both baselines.

    The unprotected attack of a scenario is its ``raw`` row. Protected rows are "at baseline level" when both
    PSNR and SSIM stay within the margins above the better baseline, else "recovers more than the baselines".
    """
    for name in dict.fromkeys(r.scenario for r in rows):
        group = [r for r in rows if r.scenario == name]
        raw = next((r for r in group if r.kind == "raw"), None)
        if raw is None:
            for r in group:
                r.verdict = "no unprotected attack in this scenario: no verdict"
            continue
        best_psnr = max(raw.baseline_mean_psnr, raw.baseline_random_psnr)
        best_ssim = max(raw.baseline_mean_ssim, raw.baseline_random_ssim)
        works = raw.psnr >= best_psnr + PSNR_MARGIN_DB and raw.ssim >= best_ssim + SSIM_MARGIN
        for r in group:
            if not works:
                r.verdict = "attack too weak to judge" + (
                    f" (unprotected: {raw.psnr:.1f} dB / SSIM {raw.ssim:.2f}; a verdict needs "
                    f"{best_psnr + PSNR_MARGIN_DB:.1f} dB and {best_ssim + SSIM_MARGIN:.2f})"
                    if r is raw
                    else ""
                )
            elif r.kind == "raw":
                r.verdict = (f"attack works: beats both baselines by >= {PSNR_MARGIN_DB:g} dB PSNR and "
                             f">= {SSIM_MARGIN:.2f} SSIM")  # fmt: skip
            elif r.psnr < best_psnr + PSNR_MARGIN_DB and r.ssim < best_ssim + SSIM_MARGIN:
                r.verdict = "reconstruction at baseline level (within the margins)"
            else:
                r.verdict = "recovers more than the baselines"
