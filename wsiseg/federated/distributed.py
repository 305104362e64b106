"""Distributed DP under secure aggregation (``--dp distributed``): the server sees only the noised sum.

Each site clips its update to ``C``, rounds it onto the secure-aggregation grid and adds its share of the noise,
``N(0, sigma^2 C^2 / m)`` for ``m = --min-clients``, with its own generator. The masked vectors are summed by
secure aggregation (Flower's SecAgg+ on the multi-site path, the same integer arithmetic in the simulation:
:func:`secure_round`), so the server learns the sum and the number of contributors ``k`` and nothing of any one
site's update. The sum carries ``sigma * C * sqrt(k / m)``: at least the central amount when ``k >= m``, and
the round is not closed with fewer. Each round is accounted with the noise actually present
(:func:`wsiseg.privacy.secure_sum.effective_multiplier`); the privacy summary also gives epsilon against the
server colluding with one site, which can subtract its own share.

:class:`SecureSum` is what a secure transport hands the round loop instead of per-site releases.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from wsiseg.errors import PrivacyError
from wsiseg.federated.clients import ClientResult
from wsiseg.federated.strategies import DpWrapper, FedAvg, RoundAggregate, RoundStats
from wsiseg.privacy.accounting import AccountingMethod, epsilon_for_history
from wsiseg.privacy.clipping import ClipScope, clip_update, global_l2_norm
from wsiseg.privacy.ledger import PrivacyLedger
from wsiseg.privacy.noise import gaussian_noise_like, noise_std_sum
from wsiseg.privacy.secure_sum import (
    SecureSumRanges,
    choose_ranges,
    decode_sum,
    effective_multiplier,
    encode,
    modular_sum,
    noise_share_std,
    round_noise_to_grid,
    to_grid,
)

__all__ = [
    "DistributedDp",
    "SecureSum",
    "aggregate_secure",
    "check_secure_plan",
    "colluding_epsilon",
    "secure_ranges",
    "secure_round",
]

_log = logging.getLogger("wsiseg.distributed")

Update = dict[str, np.ndarray]


@dataclass
class SecureSum:
    """What the server learns from a securely aggregated round: the sum and who contributed to it.

    Attributes:
        total: The unmasked sum of the contributors' releases (float64, on the grid).
        contributors: Client indices whose vectors are in the sum (public to the server in SecAgg+).
        names: Their site names.
    """

    total: Update
    contributors: list[int]
    names: list[str]

    def placeholders(self) -> list[ClientResult]:
        """One empty result per contributor (names only): what the loop records of who took part."""
        return [ClientResult(n, {}, {}, 1, 0, math.nan, 0.0) for n in self.names]


class DistributedDp(DpWrapper):
    """Distributed DP: noise shares at the sites, summed under secure aggregation.

    Args:
        inner: The wrapped aggregation strategy.
        clip: Clip norm ``C`` of each site's update.
        noise_multiplier: ``sigma`` of the sum when ``min_sites`` sites contribute.
        rng: Unused at the server (each site draws its share with its own generator).
        scope: Clipping scope.
        min_sites: ``m``: the shares are calibrated so that ``m`` of them sum to ``sigma * C``.
        n_sites: Sites in the roster (sizes the grid so the sum cannot wrap around).
    """

    mode = "distributed"
    protection = 2
    noises_at_site = True
    secure = True

    def __init__(
        self,
        inner: FedAvg | None = None,
        *,
        clip: float,
        noise_multiplier: float,
        rng: np.random.Generator | None = None,
        scope: ClipScope = "model",
        min_sites: int = 1,
        n_sites: int = 1,
    ) -> None:
        super().__init__(inner, clip=clip, noise_multiplier=noise_multiplier, rng=rng, scope=scope)
        if not 1 <= min_sites <= n_sites:
            msg = f"--dp distributed: --min-clients must be in [1, {n_sites}] for {n_sites} sites, got {min_sites}"
            raise PrivacyError(msg)
        self.min_sites, self.n_sites = min_sites, n_sites
        self.n_params = 0

    @classmethod
    def relation(cls, n_clients: int, fraction: float, *, secret_sampling: bool) -> str:
        """Zero-out of one site in the unmasked sum, against the server and the sites that do not collude."""
        del fraction, secret_sampling
        return (f"zero-out of one of {n_clients} sites in the sum the server unmasks (sensitivity C plus the grid "
                "rounding), the noise of the k contributing sites' shares, no amplification; holds against the "
                "server and every site outside a collusion (see 'epsilon_one_site_colluding')")  # fmt: skip

    @classmethod
    def noise_std_mean(cls, std_sum: float, cohort: float) -> float:
        """The shares of ``cohort`` sites (at least ``m``) divided by the cohort: at most ``sigma C / cohort``."""
        return std_sum / max(1e-9, cohort)

    def site_noise_std(self) -> float:
        """Each site's share: ``sigma C / sqrt(m)``."""
        return noise_share_std(self.noise_multiplier, self.clip, self.min_sites)

    def ranges(self, n_params: int) -> SecureSumRanges:
        """The grid of this run's releases (computed alike at the server and at every site)."""
        self.n_params = n_params
        return choose_ranges(clip=self.clip, noise_std=self.site_noise_std(), n_params=n_params,
                             n_sites=self.n_sites)  # fmt: skip

    def sensitivity_inflation(self, ranges: SecureSumRanges) -> float:
        """``(C + step * sqrt(d)) / C``: the rounded clipped update's norm bound over ``C``."""
        return 1.0 + ranges.step * math.sqrt(max(1, self.n_params)) / self.clip

    def release(self, result: ClientResult, rng: np.random.Generator | None = None) -> ClientResult:
        """Clip, round onto the grid (stochastically), add the noise share rounded to the grid; float64."""
        if rng is None:
            msg = "--dp distributed: the site adds its noise share with its own generator, and none was given"
            raise PrivacyError(msg)
        pre = global_l2_norm(result.update)
        clipped, _ = clip_update(result.update, self.clip, scope=self.scope)
        ranges = self.ranges(sum(int(np.asarray(v).size) for v in clipped.values()))
        grid, _ = to_grid(clipped, ranges, rng)
        noise = round_noise_to_grid(gaussian_noise_like(grid, self.site_noise_std(), rng), ranges)
        released, stats = to_grid({k: grid[k] + noise[k] for k in grid}, ranges, rng)  # on the grid: only clamps
        if stats.clamped:
            _log.warning(
                "site %s: %d noised coordinates beyond the secure-aggregation range %g (probability "
                "< 1e-12 a round); clamped",
                result.name,
                stats.clamped,
                ranges.clipping_range,
            )
        return ClientResult(result.name, released, {}, result.n_examples, result.steps, result.loss, result.seconds,
                            pre_clip_norm=pre)  # fmt: skip

    def round_multiplier(self, contributors: int, colluders: int = 0) -> float:
        """The noise multiplier of a round's sum with ``contributors`` shares (``colluders`` of them known)."""
        ranges = self.ranges(self.n_params) if self.n_params else None
        inflation = self.sensitivity_inflation(ranges) if ranges is not None else 1.0
        return effective_multiplier(self.noise_multiplier, contributors=contributors, min_sites=self.min_sites,
                                    colluders=colluders, sensitivity_inflation=inflation)  # fmt: skip

    def aggregate(self, results: Sequence[ClientResult], *, expected_clients: float) -> RoundAggregate:
        """Per-site releases never reach this mode's server: it aggregates only a secure sum."""
        del results, expected_clients
        msg = "--dp distributed aggregates only a secure sum (the transport must use secure aggregation)"
        raise PrivacyError(msg)

    def aggregate_sum(self, total: Update, contributors: int, *, expected_clients: float) -> RoundAggregate:
        """The mean ``sum / k`` and the noise the sum carries."""
        del expected_clients
        if contributors < self.min_sites:
            msg = (f"--dp distributed: a round closed with {contributors} sites, below --min-clients "
                   f"{self.min_sites}: its sum carries less than sigma*C of noise; refusing to release it")  # fmt: skip
            raise PrivacyError(msg)
        self.n_params = sum(int(v.size) for v in total.values())
        mean = {k: (v / contributors).astype(np.float32) for k, v in total.items()}
        std_sum = noise_std_sum(self.noise_multiplier, self.clip) * math.sqrt(contributors / self.min_sites)
        std_mean = std_sum / contributors
        noise_norm = std_mean * math.sqrt(self.n_params)
        stats = RoundStats(contributors, [math.nan] * contributors, None, std_sum, std_mean, noise_norm,
                           noise_norm / self.clip)  # fmt: skip
        return RoundAggregate(mean, {}, stats)


def secure_ranges(strategy: FedAvg, n_params: int, n_sites: int) -> SecureSumRanges:
    """The grid of a secure round for any mode that noises at the site (distributed or local).

    Raises:
        PrivacyError: A mode whose releases have no per-coordinate bound (none, central, sample).
    """
    if isinstance(strategy, DistributedDp):
        return strategy.ranges(n_params)
    if isinstance(strategy, DpWrapper) and strategy.mode == "local":
        return choose_ranges(clip=strategy.clip, noise_std=noise_std_sum(strategy.noise_multiplier, strategy.clip),
                             n_params=n_params, n_sites=n_sites)  # fmt: skip
    msg = (f"--secure-aggregation works with --dp distributed or --dp local, not --dp {strategy.mode}: "
           "the server must see every update to clip it (central), or the release has no bound "
           "(none, sample)")  # fmt: skip
    raise PrivacyError(msg)


def secure_round(releases: list[tuple[int, str, Update]], ranges: SecureSumRanges,
                 rngs: Sequence[np.random.Generator]) -> SecureSum:  # fmt: skip
    """The simulation's secure aggregation: each site's release onto the grid, the modular integer sum, decoded.

    The same integer arithmetic as Flower's SecAgg+ without the masks, which cancel exactly in the sum.

    Args:
        releases: ``(client index, name, released update)`` of every contributor, in index order.
        ranges: The grid.
        rngs: The clients' own generators, by client index (stochastic rounding of releases not on the grid).
    """
    if not releases:
        msg = "secure aggregation of a round without contributors"
        raise PrivacyError(msg)
    first = releases[0][2]
    names, shapes = list(first), [np.shape(v) for v in first.values()]
    encoded = [encode(to_grid(upd, ranges, rngs[i])[0], ranges) for i, _, upd in releases]
    total = decode_sum(modular_sum(encoded, ranges), names, shapes, len(releases), ranges)
    return SecureSum(total, [i for i, _, _ in releases], [n for _, n, _ in releases])


def aggregate_secure(strategy: FedAvg, secure: SecureSum, *, expected_clients: float) -> RoundAggregate:
    """Aggregate a secure sum with the mode's rule (distributed: calibrated shares; local: the plain mean)."""
    k = len(secure.contributors)
    if isinstance(strategy, DistributedDp):
        return strategy.aggregate_sum(secure.total, k, expected_clients=expected_clients)
    mean = {n: (v / k).astype(np.float32) for n, v in secure.total.items()}
    return RoundAggregate(mean, {}, RoundStats(k, [math.nan] * k))


def check_secure_plan(n_sites: int, min_sites: int, threshold: int | None = None) -> int:
    """Refuse a secure-aggregation plan that cannot keep its promise, before any round runs (exit 8).

    Args:
        n_sites: Sites in the roster.
        min_sites: ``--min-clients``: the fewest contributors a round may close with (the noise calibration).
        threshold: SecAgg+ reconstruction threshold (``None``: ``min_sites``).

    Returns:
        The threshold to use.

    Raises:
        PrivacyError: Fewer than 3 sites (with 2, each learns the other's update from the sum), ``--min-clients``
            below 2 or above the sites, or a threshold below ``--min-clients`` or above the sites.
    """
    t = min_sites if threshold is None else threshold
    if n_sites < 3:
        msg = (f"secure aggregation needs at least 3 sites, got {n_sites}: with 2, each site learns the other's "
               "update from the sum")  # fmt: skip
        raise PrivacyError(msg)
    if not 2 <= min_sites <= n_sites:
        msg = (f"secure aggregation: --min-clients must be in [2, {n_sites}] for {n_sites} sites (the noise is "
               f"calibrated to that many shares), got {min_sites}")  # fmt: skip
        raise PrivacyError(msg)
    if t > n_sites:
        msg = f"--secagg-threshold {t} is above the number of sites ({n_sites}): no round could ever be unmasked"
        raise PrivacyError(msg)
    if t < min_sites:
        msg = (f"--secagg-threshold {t} is below --min-clients {min_sites}: a round could be unmasked with fewer "
               "noise shares than the calibration assumes")  # fmt: skip
        raise PrivacyError(msg)
    return t


def colluding_epsilon(ledger: PrivacyLedger, colluders: int, *, method: AccountingMethod = "pld") -> float:
    """Epsilon of a distributed-DP ledger against the server colluding with ``colluders`` contributing sites.

    Each round's recorded multiplier is that of ``k`` shares; ``colluders`` of them are known to the attacker,
    leaving ``sqrt((k - colluders) / k)`` of it (infinite epsilon when no share is left).
    """
    history = []
    for e in ledger.entries:
        k = e.n_clients_released
        if k - colluders < 1:
            return math.inf
        history.append((e.accounted_multiplier * math.sqrt((k - colluders) / k), e.sample_rate, e.steps))
    return epsilon_for_history(history, delta=ledger.delta, method=method) if history else 0.0
