"""What an attacker at the server observes from one site, for each protection, made by the real code paths.

The site trains with :func:`wsiseg.train.loop.train_steps` (plain) or :func:`wsiseg.privacy.dpsgd.dp_sgd_steps`
(DP-SGD) on a copy of the global model; client-level protections then go through
:func:`wsiseg.privacy.clipping.clip_update` and :func:`wsiseg.privacy.noise.gaussian_noise_like`, exactly as a
local-DP site releases its update. In central mode the server adds its noise *after* it has seen the clipped
update, so against a curious server central mode is the ``clipped`` condition.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from wsiseg.audit.invert import LocalRecipe
from wsiseg.data.dataset import IMAGENET_MEAN, IMAGENET_STD
from wsiseg.errors import PrivacyError
from wsiseg.privacy.clipping import clip_update, global_l2_norm
from wsiseg.privacy.dpsgd import DpSgdConfig, clip_unit_sums, dp_sgd_steps, per_example_grads
from wsiseg.privacy.noise import gaussian_noise_like
from wsiseg.train.loop import make_optimizer, train_steps
from wsiseg.train.losses import SegLoss

__all__ = ["KINDS", "Condition", "Release", "local_update", "release", "to_pixels"]

#: Protections the attack models: ``raw`` update, ``clipped`` (central DP seen by the server, or clipping
#: alone), ``noise`` (clip plus client-side Gaussian noise: local DP, the paper's mechanism), ``dp-sgd``.
KINDS = ("raw", "clipped", "noise", "dp-sgd")


@dataclass(frozen=True)
class Condition:
    """One protection to attack.

    Attributes:
        label: Name in the report.
        kind: One of :data:`KINDS`.
        clip: Clip norm ``C`` (whole update, or per example for ``dp-sgd``).
        sigma: Noise multiplier (noise std ``sigma * C``); 0 for ``raw`` and ``clipped``.
        epsilon: The accountant's epsilon for the plan this condition stands for (None: no DP guarantee).
        plan: That plan in words (what the epsilon is over, and who it protects).
    """

    label: str
    kind: str
    clip: float = 1.0
    sigma: float = 0.0
    epsilon: float | None = None
    plan: str = "no noise: no DP guarantee"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            msg = f"audit condition {self.label!r}: kind {self.kind!r} is not modelled (use one of {', '.join(KINDS)})"
            raise PrivacyError(msg)


@dataclass
class Release:
    """The observed update and how much of it is noise.

    Attributes:
        update: Per trainable parameter, what the server receives.
        signal_norm: L2 norm of the update before noise (after clipping).
        noise_norm: L2 norm of the noise added (0 without noise; for DP-SGD, the noise of all steps as it
            moves the weights).
    """

    update: dict[str, torch.Tensor]
    signal_norm: float
    noise_norm: float

    @property
    def noise_to_signal(self) -> float:
        """``noise_norm / signal_norm`` (0 without noise)."""
        return self.noise_norm / self.signal_norm if self.signal_norm > 0 else math.inf


def _delta(model: nn.Module, trained: nn.Module) -> dict[str, np.ndarray]:
    before = dict(model.named_parameters())
    return {n: (p.detach() - before[n].detach()).cpu().numpy().astype(np.float32)
            for n, p in trained.named_parameters() if p.requires_grad}  # fmt: skip


def local_update(model: nn.Module, loss_fn: SegLoss, images: torch.Tensor, masks: torch.Tensor,
                 recipe: LocalRecipe) -> dict[str, np.ndarray]:  # fmt: skip
    """The site's plain update (new minus old trainable weights) after ``recipe.steps`` steps on the batch."""
    trained = copy.deepcopy(model)
    opt = make_optimizer(trained, recipe.optim())
    batch = {"image": images, "mask": masks}
    train_steps(trained, itertools.repeat(batch), opt, loss_fn, lr_at=lambda _s: recipe.lr, first_step=0,
                max_steps=recipe.steps, device=str(images.device), amp=False, channels_last=False)  # fmt: skip
    return _delta(model, trained)


def _dp_sgd(model: nn.Module, loss_fn: SegLoss, images: torch.Tensor, masks: torch.Tensor, recipe: LocalRecipe,
            cond: Condition, rng: np.random.Generator) -> Release:  # fmt: skip
    """DP-SGD steps with every tile of the batch sampled (the worst case: the target is in every step)."""
    trained = copy.deepcopy(model)
    opt = make_optimizer(trained, recipe.optim())
    cfg = DpSgdConfig(clip=cond.clip, noise_multiplier=cond.sigma, unit="tile", physical_batch=max(1, len(images)))

    def load(idx: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.as_tensor(list(idx), device=images.device)
        return images[ids], masks[ids]

    groups = [[i] for i in range(len(images))]
    dp_sgd_steps(trained, load, groups, cfg, opt, loss_fn, rate=1.0, steps=recipe.steps, lr_at=lambda _s: recipe.lr,
                 first_step=0, noise_rng=rng, data_rng=np.random.default_rng(0), device=str(images.device))  # fmt: skip
    grads, _ = per_example_grads(model, loss_fn, images, masks)
    clipped_sum, _ = clip_unit_sums(grads, cond.clip)
    signal = float(torch.sqrt(sum((g.double() ** 2).sum() for g in clipped_sum.values())))  # type: ignore[arg-type]
    n_coords = sum(g.numel() for g in clipped_sum.values())
    noise = cond.sigma * cond.clip * math.sqrt(n_coords)  # expected norm of one step's noise on the sum
    update = {n: torch.from_numpy(v) for n, v in _delta(model, trained).items()}
    return Release(update, signal, noise)


def release(
    model: nn.Module,
    loss_fn: SegLoss,
    images: torch.Tensor,
    masks: torch.Tensor,
    recipe: LocalRecipe,
    cond: Condition,
    rng: np.random.Generator,
) -> Release:
    """Train the site's copy of ``model`` on the batch and release the update as ``cond`` says.

    Args:
        model: The global model (unchanged).
        loss_fn: The training loss.
        images: ImageNet-normalised images ``(B, 3, H, W)``.
        masks: Class ids ``(B, H, W)``.
        recipe: Local steps, learning rate, momentum, weight decay.
        cond: The protection.
        rng: The site's noise generator (OS entropy unless the audit was given a seed).

    Returns:
        What the server receives, with the norms of its signal and noise. For ``dp-sgd`` the signal is the
        first step's clipped sum and the noise the expected norm of that step's noise (``sigma C sqrt(d)``).
    """
    if cond.kind == "dp-sgd":
        return _dp_sgd(model, loss_fn, images, masks, recipe, cond, rng)
    update = local_update(model, loss_fn, images, masks, recipe)
    if cond.kind == "raw":
        return Release({n: torch.from_numpy(v) for n, v in update.items()}, global_l2_norm(update), 0.0)
    clipped, info = clip_update(update, cond.clip)
    if cond.kind == "clipped":
        return Release({n: torch.from_numpy(v) for n, v in clipped.items()}, info.post_clip_norm, 0.0)
    noise = gaussian_noise_like(clipped, cond.sigma * cond.clip, rng)
    noised = {n: torch.from_numpy(clipped[n] + noise[n]) for n in clipped}
    return Release(noised, info.post_clip_norm, global_l2_norm(noise))


def to_pixels(images: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalised images back to [0, 1] pixels."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images * std + mean).clamp(0.0, 1.0)
