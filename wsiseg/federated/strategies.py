"""FedAvg and the DP modes that wrap it: what a site releases and what the server does with the releases.

Each DP mode is one class that wraps the plain aggregation strategy (the shape of Flower's DP strategies) and
owns every rule that depends on the mode: the sample rate the accountant may use, the sensitivity and the
neighbouring relation it holds for, what leaves a site (:meth:`FedAvg.release`) and which scalars go with it
(:meth:`FedAvg.reply_meta`), the denominator of the mean and the noise. :data:`STRATEGIES` registers them by
name in :mod:`wsiseg.federated.registry`; the rest of wsiseg asks the registry (``strategy_class``) and never
compares mode names. Adding a mode means adding one class and one registry entry. Distributed DP under secure
aggregation is in :mod:`wsiseg.federated.distributed`.

The maths lives in ``wsiseg.federated.aggregate`` (pure functions), so the in-process simulation and the
Flower server run the same code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, ClassVar

import numpy as np

from wsiseg.errors import ConfigError
from wsiseg.federated.aggregate import dp_client_update_local, dp_fedavg_central, fedavg
from wsiseg.federated.clients import ClientResult, LocalTraining
from wsiseg.federated.modes import DpMode
from wsiseg.privacy.clipping import ClipScope, global_l2_norm
from wsiseg.privacy.dpsgd import DpSgdConfig
from wsiseg.privacy.noise import noise_std_sum

__all__ = [
    "CentralDp",
    "DpMode",
    "DpWrapper",
    "FedAvg",
    "LocalDp",
    "RoundAggregate",
    "RoundStats",
    "SampleDp",
]

Update = dict[str, np.ndarray]


@dataclass
class RoundStats:
    """Diagnostics of one aggregation, the same fields in every mode (``None``: not known in this mode).

    Attributes:
        n_clients: Client releases aggregated.
        update_norms: Each client's update norm before clipping, as far as the server may know it (NaN where
            the site keeps it).
        fraction_clipped: Fraction of clients whose update was scaled down.
        noise_std_sum: Per-coordinate noise std on the sum (``sigma * C``).
        noise_std_mean: Per-coordinate noise std on the mean.
        noise_norm: L2 norm of the noise on the mean.
        noise_to_signal: ``noise_norm`` over the norm of the clipped mean (or its bound).
        mean_update_norm: L2 norm of the aggregated update (plain FedAvg; DP modes skip the extra pass).
    """

    n_clients: int
    update_norms: list[float] = field(default_factory=list)
    fraction_clipped: float | None = None
    noise_std_sum: float | None = None
    noise_std_mean: float | None = None
    noise_norm: float | None = None
    noise_to_signal: float | None = None
    mean_update_norm: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


@dataclass
class RoundAggregate:
    """The server's result of a round: the mean update, averaged buffers, and diagnostics."""

    update: Update
    buffers: dict[str, np.ndarray]
    stats: RoundStats


class FedAvg:
    """Plain FedAvg (McMahan et al. 2017): example-weighted mean of updates and buffers; no privacy."""

    mode: ClassVar[DpMode] = "none"
    #: Whether the mode is differentially private (a ledger, GroupNorm models, no data-dependent scalars).
    private: ClassVar[bool] = False
    #: Order of protection for a site's ``--require-dp`` (higher protects more).
    protection: ClassVar[int] = 0
    #: L2 sensitivity of one round's release in units of ``C``, under :meth:`relation`.
    sensitivity: ClassVar[float] = 1.0
    #: Whether a site draws noise for its release (it then needs its own generator).
    noises_at_site: ClassVar[bool] = False
    #: Whether each site accounts its own epsilon (DP-SGD) instead of one client-level ledger at the server.
    per_site_accounting: ClassVar[bool] = False
    #: Whether the mode needs secure aggregation (the server may see only the sum of the releases).
    secure: ClassVar[bool] = False

    @classmethod
    def accounted_rate(cls, fraction: float, *, secret_sampling: bool) -> float:
        """The client sample rate the accountant may use (1: no amplification claimed)."""
        del fraction, secret_sampling
        return 1.0

    @classmethod
    def relation(cls, n_clients: int, fraction: float, *, secret_sampling: bool) -> str:
        """The neighbouring relation the mode's epsilon holds for, in one line."""
        del n_clients, fraction, secret_sampling
        return "no differential privacy"

    @classmethod
    def noise_std_mean(cls, std_sum: float, cohort: float) -> float:
        """Per-coordinate noise std on the mean of an expected cohort of ``cohort`` clients (0: no noise)."""
        del std_sum, cohort
        return 0.0

    def local_training(self, training: LocalTraining) -> LocalTraining:
        """How the sites train in this mode: unchanged here (a sample-level DP mode clips per example here)."""
        return training

    def release(self, result: ClientResult, rng: np.random.Generator | None = None) -> ClientResult:
        """What a site sends: without DP, its raw update and buffers."""
        del rng
        return result

    def reply_meta(self, result: ClientResult) -> dict[str, float | int]:
        """The scalars that leave the site with the release: without DP the counts and loss (they weight)."""
        return {"steps": int(result.steps), "n_examples": int(result.n_examples), "loss": float(result.loss)}

    def received(self, released: ClientResult) -> ClientResult:
        """What the server gets of a release: its tensors and :meth:`reply_meta`, nothing the site keeps.

        The simulation passes every release through this, and the Flower reply carries exactly these fields
        (:func:`wsiseg.federated.flower.messages.reply_to_result`), so both paths record the same round.
        """
        meta = self.reply_meta(released)
        return ClientResult(released.name, released.update, released.buffers, int(meta.get("n_examples", 1)),
                            int(meta.get("steps", 0)), float(meta.get("loss", math.nan)), 0.0)  # fmt: skip

    def combine(self, updates: Sequence[Update], weights: Sequence[float] | None) -> Update:
        """The weighted mean of updates (what a wrapping DP mode delegates; secure aggregation would replace it)."""
        return fedavg(updates, weights)

    def aggregate(self, results: Sequence[ClientResult], *, expected_clients: float) -> RoundAggregate:
        """Example-weighted mean of the clients' updates and buffers."""
        del expected_clients
        weights = [float(r.n_examples) for r in results]
        update = self.combine([r.update for r in results], weights)
        stats = RoundStats(len(results), [global_l2_norm(r.update) for r in results],
                           mean_update_norm=global_l2_norm(update))  # fmt: skip
        return RoundAggregate(update, _average_buffers(results, weights), stats)

    def round_multiplier(self, contributors: int, colluders: int = 0) -> float | None:
        """The noise multiplier of a round's release for the ledger (None: sigma as configured)."""
        del contributors, colluders
        return None

    def empty_round(self, template: Update, *, expected_clients: float) -> RoundAggregate:
        """The aggregate of a round in which no client was sampled: nothing moves."""
        del template, expected_clients
        return RoundAggregate({}, {}, RoundStats(0))


class DpWrapper(FedAvg):
    """Base of the DP modes: wraps an inner strategy with client-level clipping to ``C`` and Gaussian noise.

    No buffers and no data-dependent scalars leave a site; weights are equal (weighting by examples would
    change the sensitivity). Subclasses decide where the noise is added.

    Args:
        inner: The wrapped aggregation strategy (plain FedAvg by default).
        clip: Clipping bound ``C``.
        noise_multiplier: ``sigma`` (noise std on the sum is ``sigma * C``).
        rng: The noise generator of whoever adds the noise (the server in central mode, the site in local).
        scope: ``"model"`` or ``"layer"`` clipping.

    Raises:
        ConfigError: ``clip <= 0`` or ``sigma < 0``.
    """

    private = True

    def __init__(
        self,
        inner: FedAvg | None = None,
        *,
        clip: float,
        noise_multiplier: float,
        rng: np.random.Generator | None = None,
        scope: ClipScope = "model",
    ) -> None:
        if not clip > 0 or not noise_multiplier >= 0:
            msg = f"--clip must be > 0 and --sigma >= 0, got {clip} and {noise_multiplier}"
            raise ConfigError(msg)
        self.inner = inner if inner is not None else FedAvg()
        self.clip, self.noise_multiplier, self.rng, self.scope = clip, noise_multiplier, rng, scope

    def reply_meta(self, result: ClientResult) -> dict[str, float | int]:
        """Under DP nothing but the update tensors leaves a site (no counts, no loss)."""
        del result
        return {}

    def site_noise_std(self) -> float:
        """Per-coordinate noise std of one site's release (modes that noise at the site)."""
        return noise_std_sum(self.noise_multiplier, self.clip)

    def _rng(self) -> np.random.Generator:
        if self.rng is None:
            msg = f"--dp {self.mode}: this side adds the noise but was given no noise generator"
            raise ConfigError(msg)
        return self.rng


class CentralDp(DpWrapper):
    """Central DP (FedDP eq. 11): the server clips, sums, adds the noise once.

    Sites send raw updates; the server clips, sums, adds ``N(0, sigma^2 C^2)`` once and divides by the public
    expected cohort ``q * K``. Zero-out with a public roster; amplification by Poisson sampling when the
    schedule comes from a secret key. Protects the released model, not the updates from the server.
    """

    mode = "central"
    protection = 1

    @classmethod
    def accounted_rate(cls, fraction: float, *, secret_sampling: bool) -> float:
        """``--fraction`` when sampling is secret, else 1 (a predictable schedule amplifies nothing)."""
        return fraction if secret_sampling else 1.0

    @classmethod
    def relation(cls, n_clients: int, fraction: float, *, secret_sampling: bool) -> str:
        """Zero-out with the public roster, with or without amplification."""
        if cls.accounted_rate(fraction, secret_sampling=secret_sampling) < 1:
            amp = "Poisson sampling from a secret key (amplification claimed)"
        else:
            amp = "no amplification" + (" (--noise-seed makes the schedule predictable)" if fraction < 1 else "")
        return (f"zero-out with the public roster of {n_clients} sites: one site's update replaced by nothing, "
                f"the mean divided by the public q*K (sensitivity C); {amp}")  # fmt: skip

    @classmethod
    def noise_std_mean(cls, std_sum: float, cohort: float) -> float:
        """One draw on the sum, divided by the public expected cohort."""
        return std_sum / max(1e-9, cohort)

    def release(self, result: ClientResult, rng: np.random.Generator | None = None) -> ClientResult:
        """The raw update of the trainable parameters, no buffers: the server clips and adds the noise."""
        del rng
        return ClientResult(result.name, result.update, {}, result.n_examples, result.steps, result.loss,
                            result.seconds)  # fmt: skip

    def aggregate(self, results: Sequence[ClientResult], *, expected_clients: float) -> RoundAggregate:
        """Clip, sum, add the noise once, divide by ``expected_clients``."""
        mean, st = dp_fedavg_central(
            [r.update for r in results], clip_norm=self.clip, noise_multiplier=self.noise_multiplier,
            rng=self._rng(), scope=self.scope, denominator=expected_clients,
        )  # fmt: skip
        stats = RoundStats(st.n_clients, list(st.pre_clip_norms), st.fraction_clipped, st.noise_std_sum,
                           st.noise_std_mean, st.noise_norm, st.noise_to_signal)  # fmt: skip
        return RoundAggregate(mean, {}, stats)

    def empty_round(self, template: Update, *, expected_clients: float) -> RoundAggregate:
        """Nobody sampled: the release is noise only (and still counts in the ledger)."""
        zero = {n: np.zeros_like(v) for n, v in template.items()}
        return self.aggregate([ClientResult("none", zero, {}, 0, 0, math.nan, 0.0)], expected_clients=expected_clients)


class LocalDp(DpWrapper):
    """Local DP (FedDP Fig. 1): each site noises its own update.

    Each site clips and adds ``N(0, sigma^2 C^2)`` with its own generator before upload; the
    server averages the noised updates. Replace-one against the server (sensitivity ``2C``), no amplification
    (the server knows who sent what).
    """

    mode = "local"
    protection = 3
    sensitivity = 2.0
    noises_at_site = True

    @classmethod
    def relation(cls, n_clients: int, fraction: float, *, secret_sampling: bool) -> str:
        """Replace-one against the server."""
        del n_clients, fraction, secret_sampling
        return ("replace-one against the server: any two datasets of one site (sensitivity 2C, accounted as "
                "sigma/2), no amplification")  # fmt: skip

    @classmethod
    def noise_std_mean(cls, std_sum: float, cohort: float) -> float:
        """One draw per site: the mean of ``m`` sites carries ``sigma * C / sqrt(m)``."""
        return std_sum / max(1.0, cohort) ** 0.5

    def release(self, result: ClientResult, rng: np.random.Generator | None = None) -> ClientResult:
        """Clip and noise at the site with the site's own generator ``rng``."""
        if rng is None:
            msg = "--dp local: the site releases with its own noise generator, and none was given"
            raise ConfigError(msg)
        pre = global_l2_norm(result.update)
        noised, _ = dp_client_update_local(result.update, clip_norm=self.clip, noise_multiplier=self.noise_multiplier,
                                           rng=rng, scope=self.scope)  # fmt: skip
        return ClientResult(result.name, noised, {}, result.n_examples, result.steps, result.loss, result.seconds,
                            pre_clip_norm=pre)  # fmt: skip

    def aggregate(self, results: Sequence[ClientResult], *, expected_clients: float) -> RoundAggregate:
        """The inner strategy's unweighted mean of the noised releases (one pass, no norms of noise)."""
        del expected_clients
        mean = self.inner.combine([r.update for r in results], None)
        pre = [(r.pre_clip_norm if r.pre_clip_norm is not None else math.nan) for r in results]
        std_sum = noise_std_sum(self.noise_multiplier, self.clip)
        std_mean = std_sum / np.sqrt(len(results))
        noise_norm = float(std_mean * np.sqrt(sum(v.size for v in mean.values())))
        signal = float(np.mean([min(p, self.clip) for p in pre])) if pre else 0.0
        stats = RoundStats(
            len(results), pre, float(np.mean([p > self.clip for p in pre])) if pre else 0.0, std_sum, float(std_mean),
            noise_norm, noise_norm / signal if signal > 0 else math.inf,
        )  # fmt: skip
        return RoundAggregate(mean, {}, stats)


class SampleDp(DpWrapper):
    """Sample-level DP: DP-SGD at every site over its units (tiles, slides or patients).

    Each site clips every unit's gradient to ``C`` and noises every local step with its own generator
    (:mod:`wsiseg.privacy.dpsgd`), so its update is already private against everyone outside the site; the
    server takes the unweighted mean. Each site accounts its own steps (add/remove one unit of that site); the
    reply carries only the public facts of that account (``q``, steps, epsilon), never counts or losses.

    Args:
        inner: The wrapped aggregation strategy.
        clip: Per-unit clip norm ``C``.
        noise_multiplier: ``sigma`` of every DP-SGD step.
        rng: Unused at the server (each site has its own generator).
        scope: Only ``model`` (per-unit clipping is over the whole model).
        sgd: The DP-SGD settings (unit, sample rate, chunking).
    """

    mode = "sample"
    protection = 4
    noises_at_site = True
    per_site_accounting = True

    def __init__(
        self,
        inner: FedAvg | None = None,
        *,
        clip: float,
        noise_multiplier: float,
        rng: np.random.Generator | None = None,
        scope: ClipScope = "model",
        sgd: DpSgdConfig | None = None,
    ) -> None:
        super().__init__(inner, clip=clip, noise_multiplier=noise_multiplier, rng=rng, scope=scope)
        self.sgd = sgd if sgd is not None else DpSgdConfig(clip=clip, noise_multiplier=noise_multiplier)

    @classmethod
    def relation(cls, n_clients: int, fraction: float, *, secret_sampling: bool) -> str:
        """Add/remove one unit of one site, against everyone outside that site."""
        del n_clients, fraction
        sampling = "secret Poisson sampling of units" if secret_sampling else "units sampled from --noise-seed"
        return (f"add/remove one unit (see 'unit') at one site, against the server, the other sites and anyone "
                f"with the model: DP-SGD at each site, {sampling}, each site accounted over its own steps")  # fmt: skip

    @classmethod
    def noise_std_mean(cls, std_sum: float, cohort: float) -> float:
        """Not one draw per round: the noise is added at every local step (see the per-site plan)."""
        del std_sum, cohort
        return math.nan

    def local_training(self, training: LocalTraining) -> LocalTraining:
        """Every site trains with DP-SGD."""
        return replace(training, dp_sgd=self.sgd)

    def release(self, result: ClientResult, rng: np.random.Generator | None = None) -> ClientResult:
        """The DP-SGD update as trained (post-processing), no buffers."""
        del rng
        return ClientResult(result.name, result.update, {}, result.n_examples, result.steps, result.loss,
                            result.seconds, privacy=result.privacy)  # fmt: skip

    def reply_meta(self, result: ClientResult) -> dict[str, float | int]:
        """The site's public account: ``q``, steps of the round, its cumulative epsilon."""
        p = result.privacy or {}
        return {k: p[k] for k in ("q", "steps", "epsilon", "epsilon_rdp") if k in p}

    def received(self, released: ClientResult) -> ClientResult:
        """The tensors and the site's public account (no counts, no loss)."""
        meta = self.reply_meta(released)
        return ClientResult(released.name, released.update, {}, 1, int(meta.get("steps", 0)), math.nan, 0.0,
                            privacy=dict(meta))  # fmt: skip

    def aggregate(self, results: Sequence[ClientResult], *, expected_clients: float) -> RoundAggregate:
        """The inner strategy's unweighted mean of the sites' private updates."""
        del expected_clients
        mean = self.inner.combine([r.update for r in results], None)
        return RoundAggregate(mean, {}, RoundStats(len(results), [math.nan] * len(results)))

    def empty_round(self, template: Update, *, expected_clients: float) -> RoundAggregate:
        """No site answered: nothing moves (and no site spent budget)."""
        del template, expected_clients
        return RoundAggregate({}, {}, RoundStats(0))


def _average_buffers(results: Sequence[ClientResult], weights: Sequence[float]) -> dict[str, np.ndarray]:
    if not results or not results[0].buffers:
        return {}
    total = float(sum(weights))
    out = {}
    for name, first in results[0].buffers.items():
        if np.issubdtype(first.dtype, np.floating):
            acc = np.zeros(first.shape, np.float64)
            for r, w in zip(results, weights, strict=True):
                acc += r.buffers[name].astype(np.float64) * w
            out[name] = (acc / total).astype(first.dtype)
        else:  # counters such as num_batches_tracked: keep the largest
            out[name] = np.max(np.stack([r.buffers[name] for r in results]), axis=0)
    return out
