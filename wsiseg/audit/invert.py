"""Inverting Gradients (Geiping et al., NeurIPS 2020) against one site's released update.

The attacker knows the global model it sent (weights, architecture), the local training recipe (learning rate,
momentum, weight decay, local steps on one batch) and, in the worst case, the label masks. It searches for
images whose simulated update points the same way as the observed one: it minimises
``1 - cos(simulated update, observed update) + tv * TV(x)`` with Adam over pixel values in [0, 1], from a few
random starts, and keeps the start with the lowest loss. The local steps are unrolled (second-order
gradients through every step), so the FedAvg setting with several local steps is attacked as such, not
approximated by one gradient.

Cosine distance ignores the update's scale, so clipping alone (a rescaling of the whole update) leaves the
attack as strong as on the raw update; only noise can stop it.

What the update cannot tell the attacker: when the first conv is followed by GroupNorm (unet_tiny), shifting
an image's channels by constants and scaling its contrast (``x -> a x + c``) changes the conv output by a
per-channel constant and a common scale, both of which GroupNorm removes, so the update is the same (up to
the zero-padded border; cosine 0.996 in the tests) and mean colour and contrast stay unknown. DHUnet's patch
embeddings are followed by LayerNorm over the channels of each token, which removes neither, so its update
determines the colours too. Its update pins down pixel-level detail only weakly, which a strong
total-variation weight (1 with pixels in [0, 1]) turns from noise into flat regions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from wsiseg.data.dataset import IMAGENET_MEAN, IMAGENET_STD
from wsiseg.train.loop import OptimConfig
from wsiseg.train.losses import SegLoss

__all__ = ["AttackConfig", "LocalRecipe", "Reconstruction", "invert_update", "simulate_update", "total_variation"]

Params = dict[str, torch.Tensor]


@dataclass(frozen=True)
class LocalRecipe:
    """The local training the attacker simulates (it is the site's, as the server configured it)."""

    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    steps: int = 1

    def optim(self) -> OptimConfig:
        """The same settings as the training code's optimizer configuration."""
        return OptimConfig(lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)


@dataclass(frozen=True)
class AttackConfig:
    """Settings of the optimisation.

    Attributes:
        iterations: Adam steps per restart.
        restarts: Random starts; the one with the lowest final loss is kept.
        lr: Adam learning rate (decayed 10x at 3/8, 5/8 and 7/8 of the iterations).
        tv: Weight of the total-variation prior.
        labels_known: The attacker knows the masks (worst case); otherwise it labels its own guess with the
            model's prediction at every iteration.
        signed: Step on the sign of the gradient (as Geiping et al.), which keeps every pixel moving.
        init: ``gray`` (mid-grey plus a little noise) or ``uniform`` (noise in [0, 1]) starting images.
        seed: Seed of the random starts (the attacker's own randomness).
    """

    iterations: int = 300
    restarts: int = 2
    lr: float = 0.05
    tv: float = 1.0
    labels_known: bool = True
    signed: bool = True
    init: str = "gray"
    seed: int = 0


@dataclass
class Reconstruction:
    """The attacker's best images (``(B, 3, H, W)`` in [0, 1]) and their final attack loss."""

    images: torch.Tensor
    loss: float


def _normalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of neighbouring pixels (anisotropic TV) of a ``(B, C, H, W)`` batch."""
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


def simulate_update(
    model: nn.Module,
    params: Params,
    loss_fn: SegLoss,
    pixels: torch.Tensor,
    masks: torch.Tensor,
    recipe: LocalRecipe,
    *,
    create_graph: bool,
) -> Params:
    """The update (new minus old weights) of ``recipe.steps`` SGD steps on one batch, as ``torch.optim.SGD``.

    Args:
        model: The architecture (its own weights are not used).
        params: Starting weights of the trainable parameters.
        loss_fn: The training loss.
        pixels: Images in [0, 1], ``(B, 3, H, W)``.
        masks: Class ids ``(B, H, W)``.
        recipe: Learning rate, momentum, weight decay and steps.
        create_graph: Keep the graph (the attacker differentiates through it).
    """
    current = {n: p if p.requires_grad else p.detach().requires_grad_(True) for n, p in params.items()}
    start = dict(current)
    buffers = dict(model.named_buffers())
    velocity: Params = {}
    for _ in range(recipe.steps):
        out = functional_call(model, {**current, **buffers}, (_normalise(pixels),))
        loss = loss_fn.value(out, masks)
        grads = torch.autograd.grad(loss, list(current.values()), create_graph=create_graph, allow_unused=True)
        grads = tuple(torch.zeros_like(p) if g is None else g for p, g in zip(current.values(), grads, strict=True))
        nxt: Params = {}
        for (name, p), g in zip(current.items(), grads, strict=True):
            d = g + recipe.weight_decay * p if recipe.weight_decay else g
            v = recipe.momentum * velocity[name] + d if (recipe.momentum and name in velocity) else d
            velocity[name] = v
            nxt[name] = p - recipe.lr * v
        current = nxt
    return {n: current[n] - start[n] for n in params}


def _cosine_distance(a: Params, b: Params) -> torch.Tensor:
    dot = torch.stack([(a[n] * b[n]).sum() for n in b]).sum()
    na = torch.stack([(a[n] ** 2).sum() for n in b]).sum().sqrt()
    nb = torch.stack([(b[n] ** 2).sum() for n in b]).sum().sqrt()
    return 1.0 - dot / (na * nb + 1e-12)


def invert_update(
    model: nn.Module,
    loss_fn: SegLoss,
    observed: Params,
    masks: torch.Tensor,
    recipe: LocalRecipe,
    cfg: AttackConfig,
    *,
    on_iteration: Callable[[int, int, float], None] | None = None,
) -> Reconstruction:
    """Reconstruct the batch behind an observed update.

    Args:
        model: The global model the site started from (in the mode the site trained in).
        loss_fn: The site's training loss.
        observed: What the attacker saw, per trainable parameter name.
        masks: The true masks (used only when ``cfg.labels_known``; their shape fixes the batch and size).
        recipe: The local training to simulate.
        cfg: Optimisation settings.
        on_iteration: Called with ``(restart, iteration, loss)`` every 50 iterations.

    Returns:
        The best reconstruction over the restarts.
    """
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad and n in observed}
    target = {n: observed[n].detach().to(params[n].device, params[n].dtype) for n in params}
    b, h, w = masks.shape
    gen = torch.Generator().manual_seed(cfg.seed)
    best: Reconstruction | None = None
    milestones = [int(cfg.iterations * f) for f in (3 / 8, 5 / 8, 7 / 8)]
    for restart in range(cfg.restarts):
        x = torch.rand((b, 3, h, w), generator=gen)
        if cfg.init == "gray":  # what the update does not determine stays flat instead of random
            x = 0.5 + 0.02 * (x - 0.5)
        x = x.to(masks.device).requires_grad_(True)
        opt = torch.optim.Adam([x], lr=cfg.lr)
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.1)
        value = float("inf")
        for it in range(cfg.iterations):
            opt.zero_grad(set_to_none=True)
            labels = masks if cfg.labels_known else _self_labels(model, params, x)
            sim = simulate_update(model, params, loss_fn, x, labels, recipe, create_graph=True)
            loss = _cosine_distance(sim, target) + cfg.tv * total_variation(x)
            loss.backward()
            if cfg.signed and x.grad is not None:
                x.grad.sign_()
            opt.step()
            sched.step()
            with torch.no_grad():
                x.clamp_(0.0, 1.0)
            value = float(loss.detach())
            if on_iteration is not None and (it + 1) % 50 == 0:
                on_iteration(restart, it + 1, value)
        if best is None or value < best.loss:
            best = Reconstruction(x.detach().clone(), value)
    assert best is not None
    return best


def _self_labels(model: nn.Module, params: Params, x: torch.Tensor) -> torch.Tensor:
    """Labels unknown: the model's own argmax prediction on the current guess (no gradient)."""
    with torch.no_grad():
        buffers = dict(model.named_buffers())
        out = functional_call(model, {**params, **buffers}, (_normalise(x),))
        logits = out[0] if isinstance(out, (list, tuple)) else out
        return logits.argmax(dim=1)
