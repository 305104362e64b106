"""``wsiseg audit canary``: an empirical lower bound on epsilon from one instrumented training run.

Client-level modes (``central``, ``local``), after Andrew et al. (ICLR 2024): ``m`` canary sites join a real
federated run of real sites. Each canary sends ``2C`` times a fixed random unit direction (clipped to ``C`` by
the mechanism) when its membership bit is 1, and an all-zero update when it is 0 (the zero-out / replace
relation the accountant uses). The releases go through the mode's own ``release`` / ``aggregate`` with its own
noise, and the round's model moves as in training.

Sample mode, after Steinke, Nasr and Jagielski (NeurIPS 2023, white-box gradient canaries): ``m`` canary
units are added to one site's units when their bit is 1 and are absent otherwise; DP-SGD
(:func:`wsiseg.privacy.dpsgd.dp_sgd_steps`) samples them with the real tiles at rate ``q``, clips them and
noises the sum.

Either way the auditor sees what the server sees (each round's aggregate, or the site's round update), scores
canary ``j`` by the projection of everything it saw on direction ``j``, guesses "in" for the ``k`` highest and
"out" for the ``k`` lowest scores, and converts the count of correct guesses into a lower bound on epsilon
(:mod:`wsiseg.audit.onerun`). A lower bound above the accountant's epsilon means the mechanism does not do
what the accountant assumes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from wsiseg.audit.invert import LocalRecipe
from wsiseg.audit.onerun import epsilon_lower_bound, guess_from_scores
from wsiseg.audit.release import local_update
from wsiseg.errors import PrivacyError
from wsiseg.federated.aggregate import apply_update
from wsiseg.federated.clients import ClientResult, trainable_state
from wsiseg.federated.registry import make_strategy
from wsiseg.privacy.accounting import epsilon_for_history
from wsiseg.privacy.dpsgd import DpSgdConfig, dp_sgd_steps
from wsiseg.train.loop import make_optimizer
from wsiseg.train.losses import SegLoss

__all__ = ["AUDITED_MODES", "CanaryConfig", "CanaryResult", "Directions", "run_canary_audit"]

Update = dict[str, np.ndarray]
Batch = tuple[torch.Tensor, torch.Tensor]

#: Mechanisms the canary audit instruments.
AUDITED_MODES = ("central", "local", "sample")


@dataclass(frozen=True)
class CanaryConfig:
    """What to audit and how hard.

    Attributes:
        mode: ``central``, ``local`` or ``sample``.
        clip: Clip norm ``C`` (per site update, or per unit in sample mode).
        sigma: The noise multiplier the accountant is told.
        rounds: Rounds of training.
        canaries: ``m``, each included with probability 1/2.
        guesses: ``k`` guesses "in" and ``k`` "out" (fixed before the scores are seen); default ``m // 8``.
        confidence: Confidence of the lower bound.
        delta: Delta of both the accountant's epsilon and the lower bound.
        sample_rate: Sample mode: Poisson rate ``q`` of units per step.
        steps_per_round: Sample mode: DP-SGD steps per round.
        seed: Seed of the membership bits and directions (the auditor's randomness; the mechanism's noise comes
            from OS entropy unless ``noise_seed`` is given).
        noise_seed: Seed of the mechanism's noise (tests); None: OS entropy.
    """

    mode: str
    clip: float = 1.0
    sigma: float = 1.0
    rounds: int = 5
    canaries: int = 200
    guesses: int | None = None
    confidence: float = 0.95
    delta: float = 1e-5
    sample_rate: float = 0.1
    steps_per_round: int = 2
    seed: int = 0
    noise_seed: int | None = None

    def __post_init__(self) -> None:
        k = self.k
        problems = [
            (self.mode in AUDITED_MODES, f"audit canary: mode {self.mode!r} is not instrumented "
                                         f"(use one of {', '.join(AUDITED_MODES)})"),
            (self.canaries >= 2, f"--canaries must be >= 2, got {self.canaries}"),
            (k >= 1 and 2 * k <= self.canaries, f"--guesses must be in [1, canaries/2], got {k}"),
            (self.rounds >= 1, f"--rounds must be >= 1, got {self.rounds}"),
            (self.sigma > 0 and self.clip > 0, "--sigma and --clip must be > 0 (a claim of DP needs noise)"),
            (0 < self.sample_rate <= 1, f"--sample-rate must be in (0, 1], got {self.sample_rate}"),
        ]  # fmt: skip
        for ok, msg in problems:
            if not ok:
                raise PrivacyError(msg)

    @property
    def k(self) -> int:
        """Guesses on each side."""
        return self.guesses if self.guesses is not None else max(1, self.canaries // 8)

    def claimed(self) -> tuple[float, float, str]:
        """The accountant's epsilon (PLD, RDP) for this plan and the relation it is about."""
        if self.mode == "sample":
            hist = [(self.sigma, self.sample_rate, self.rounds * self.steps_per_round)]
            who = f"add/remove one unit, Poisson rate {self.sample_rate:g}, {hist[0][2]} DP-SGD steps"
        elif self.mode == "local":
            hist = [(self.sigma / 2, 1.0, self.rounds)]  # replace-one: sensitivity 2C, as the ledger accounts it
            who = f"replace one site's update (sensitivity 2C), {self.rounds} rounds"
        else:
            hist = [(self.sigma, 1.0, self.rounds)]
            who = f"zero-out one site (sensitivity C), {self.rounds} rounds, every site every round"
        pld = epsilon_for_history(hist, delta=self.delta)
        rdp = epsilon_for_history(hist, delta=self.delta, method="rdp")
        return float(pld), float(rdp), who


class Directions:
    """``m`` random unit directions in the space of the trainable parameters, regenerated from a seed.

    Nothing of size ``m x d`` is kept: direction ``j`` comes from ``default_rng((seed, j))`` when needed.
    """

    def __init__(self, template: Update, count: int, seed: int) -> None:
        self.names = list(template)
        self.shapes = [template[n].shape for n in self.names]
        self.sizes = [int(np.prod(s)) for s in self.shapes]
        self.dim = sum(self.sizes)
        self.count, self.seed = count, seed

    def flat(self, j: int) -> np.ndarray:
        """Direction ``j`` as a flat float32 unit vector."""
        v = np.random.default_rng((self.seed, j)).standard_normal(self.dim, dtype=np.float32)
        return v / np.float32(np.linalg.norm(v))

    def update(self, j: int, scale: float) -> Update:
        """``scale`` times direction ``j``, shaped like the parameters."""
        v = self.flat(j) * np.float32(scale)
        out, start = {}, 0
        for n, shape, size in zip(self.names, self.shapes, self.sizes, strict=True):
            out[n] = v[start : start + size].reshape(shape)
            start += size
        return out

    def project(self, update: Update) -> np.ndarray:
        """``<update, direction j>`` for every ``j``."""
        flat = np.concatenate([np.asarray(update[n], dtype=np.float32).ravel() for n in self.names])
        return np.array([float(np.dot(self.flat(j), flat)) for j in range(self.count)])


@dataclass
class _TorchCanaries:
    """The included canaries of sample mode as :class:`wsiseg.privacy.dpsgd.Canaries` (norm ``2C`` each)."""

    dirs: Directions
    members: list[int]
    clip: float
    count: int = field(init=False)

    def __post_init__(self) -> None:
        self.count = len(self.members)

    def gradients(self, indices: list[int], like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        rows = [self.dirs.update(self.members[i], 2 * self.clip) for i in indices]
        return {n: torch.stack([torch.from_numpy(r[n]) for r in rows]).to(like[n].device, like[n].dtype) for n in like}


@dataclass
class CanaryResult:
    """What the audit found, beside what the accountant says."""

    mode: str
    claimed_epsilon: float
    claimed_epsilon_rdp: float
    relation: str
    lower_bound: float
    confidence: float
    canaries: int
    guesses: int
    correct: int
    delta: float
    scores: list[float]
    included: list[bool]

    @property
    def exceeds_claim(self) -> bool:
        """The lower bound is above the accountant's epsilon: the mechanism is not what the accountant assumes."""
        return self.lower_bound > self.claimed_epsilon

    def summary(self) -> dict[str, Any]:
        """JSON-ready fields without the per-canary lists."""
        return {k: v for k, v in self.__dict__.items() if k not in ("scores", "included")} | {
            "exceeds_claim": self.exceeds_claim
        }


def _load_state(model: nn.Module, weights: Update) -> None:
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in weights:
                p.copy_(torch.from_numpy(weights[n]))


def _client_level(cfg: CanaryConfig, model: nn.Module, loss_fn: SegLoss, sites: Sequence[Batch],
                  recipe: LocalRecipe, dirs: Directions, included: np.ndarray,
                  on_round: Callable[[int], None] | None) -> np.ndarray:  # fmt: skip
    noise = np.random.default_rng(cfg.noise_seed)  # OS entropy unless seeded
    strategy = make_strategy(cfg.mode, clip=cfg.clip, noise_multiplier=cfg.sigma, rng=noise)
    site_rngs = [np.random.default_rng(noise.integers(0, 2**63 - 1)) for _ in range(len(sites) + cfg.canaries)]
    scores = np.zeros(cfg.canaries)
    zero = {n: np.zeros_like(v) for n, v in trainable_state(model).items()}
    for rnd in range(cfg.rounds):
        results = [ClientResult(f"site{i}", local_update(model, loss_fn, x, y, recipe), {}, len(x), recipe.steps,
                                math.nan, 0.0) for i, (x, y) in enumerate(sites)]  # fmt: skip
        for j in range(cfg.canaries):
            upd = dirs.update(j, 2 * cfg.clip) if included[j] else zero
            results.append(ClientResult(f"canary{j}", upd, {}, 1, 1, math.nan, 0.0))
        received = [strategy.received(strategy.release(r, rng=site_rngs[i])) for i, r in enumerate(results)]
        agg = strategy.aggregate(received, expected_clients=float(len(results)))
        scores += dirs.project(agg.update)
        _load_state(model, apply_update(trainable_state(model), agg.update))
        if on_round is not None:
            on_round(rnd + 1)
    return scores


def _sample_level(cfg: CanaryConfig, model: nn.Module, loss_fn: SegLoss, tiles: Batch, recipe: LocalRecipe,
                  dirs: Directions, included: np.ndarray,
                  on_round: Callable[[int], None] | None) -> np.ndarray:  # fmt: skip
    images, masks = tiles
    noise = np.random.default_rng(cfg.noise_seed)
    sgd = DpSgdConfig(clip=cfg.clip, noise_multiplier=cfg.sigma, unit="tile", physical_batch=8)
    canaries = _TorchCanaries(dirs, [j for j in range(cfg.canaries) if included[j]], cfg.clip)
    groups = [[i] for i in range(len(images))]

    def load(idx: Sequence[int]) -> Batch:
        ids = torch.as_tensor(list(idx))
        return images[ids], masks[ids]

    scores = np.zeros(cfg.canaries)
    for rnd in range(cfg.rounds):
        before = trainable_state(model)
        opt = make_optimizer(model, recipe.optim())
        dp_sgd_steps(model, load, groups, sgd, opt, loss_fn, rate=cfg.sample_rate, steps=cfg.steps_per_round,
                     lr_at=lambda _s: recipe.lr, first_step=0, noise_rng=noise, data_rng=np.random.default_rng(rnd),
                     canaries=canaries)  # fmt: skip
        delta = {n: v - before[n] for n, v in trainable_state(model).items()}
        scores -= dirs.project(delta)  # a gradient step moves against the canary's direction
        if on_round is not None:
            on_round(rnd + 1)
    return scores


def run_canary_audit(
    cfg: CanaryConfig,
    model: nn.Module,
    loss_fn: SegLoss,
    data: Sequence[Batch],
    recipe: LocalRecipe,
    *,
    on_round: Callable[[int], None] | None = None,
) -> CanaryResult:
    """Train with canaries under ``cfg.mode`` and bound epsilon from below.

    Args:
        cfg: Mechanism, claimed sigma, canaries and guesses.
        model: The model to train (modified in place; GroupNorm, no BatchNorm statistics).
        loss_fn: Its loss.
        data: One ``(images, masks)`` batch per real site (sample mode uses the first site's tiles as units).
        recipe: Local training of the real sites (client-level modes) and learning rate (sample mode).
        on_round: Called after every round.

    Returns:
        The accountant's epsilon, the lower bound, the guesses and every canary's score.
    """
    claimed, claimed_rdp, relation = cfg.claimed()
    rng = np.random.default_rng(cfg.seed)
    included = rng.random(cfg.canaries) < 0.5
    dirs = Directions(trainable_state(model), cfg.canaries, cfg.seed)
    model.train()
    if cfg.mode == "sample":
        scores = _sample_level(cfg, model, loss_fn, data[0], recipe, dirs, included, on_round)
    else:
        scores = _client_level(cfg, model, loss_fn, data, recipe, dirs, included, on_round)
    g = guess_from_scores(scores.tolist(), included.tolist(), k_in=cfg.k, k_out=cfg.k)
    bound = epsilon_lower_bound(g.m, g.r, g.v, delta=cfg.delta, confidence=cfg.confidence)
    return CanaryResult(cfg.mode, claimed, claimed_rdp, relation, bound, cfg.confidence, g.m, g.r, g.v, cfg.delta,
                        scores.tolist(), included.tolist())  # fmt: skip
