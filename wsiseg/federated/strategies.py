"""FedAvg and the DP wrapper: what the server does with the clients' results each round.

The maths lives in ``wsiseg.federated.aggregate`` (pure functions). These classes only hold settings and
the noise generator, so the in-process simulation and the Flower server run the same code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from wsiseg.errors import ConfigError
from wsiseg.federated.aggregate import dp_client_update_local, dp_fedavg_central, fedavg
from wsiseg.federated.clients import ClientResult
from wsiseg.privacy.clipping import global_l2_norm
from wsiseg.privacy.noise import noise_std_sum

__all__ = ["DP_MODES", "DpFedAvg", "FedAvg", "RoundAggregate"]

DP_MODES = ("none", "central", "local")
Update = dict[str, np.ndarray]


@dataclass
class RoundAggregate:
    """The server's result of a round: the mean update, averaged buffers, and diagnostics."""

    update: Update
    buffers: dict[str, np.ndarray]
    stats: dict[str, Any]


class FedAvg:
    """Plain FedAvg (McMahan et al. 2017): example-weighted mean of updates and buffers."""

    dp_mode = "none"

    def client_release(self, result: ClientResult, rng: np.random.Generator | None = None) -> ClientResult:
        """What a client sends: without DP, its raw update and buffers."""
        del rng
        return result

    def aggregate(self, results: Sequence[ClientResult], *, expected_clients: float) -> RoundAggregate:
        """Example-weighted mean of the clients' updates and buffers."""
        del expected_clients
        weights = [float(r.n_examples) for r in results]
        update = fedavg([r.update for r in results], weights)
        buffers = _average_buffers(results, weights)
        norms = [global_l2_norm(r.update) for r in results]
        return RoundAggregate(update, buffers, {"update_norms": norms, "mean_update_norm": global_l2_norm(update)})


class DpFedAvg(FedAvg):
    """DP-FedAvg with client-level clipping to ``C`` and Gaussian noise ``N(0, sigma^2 C^2)``.

    ``central`` (FedDP eq. 11): the server clips each update and adds the noise once to the sum, then divides
    by the expected number of clients (equal weights: weighting by examples would change the sensitivity).
    ``local`` (FedDP Fig. 1): each client clips and adds the noise before upload, so the server never sees a
    raw update; the server averages the noised updates. No buffers are shared in either mode.

    Args:
        mode: ``"central"`` or ``"local"``.
        clip: Clipping bound ``C``.
        noise_multiplier: ``sigma`` (noise std on the sum is ``sigma * C``).
        rng: Server noise generator (central mode).
        scope: ``"model"`` or ``"layer"`` clipping.
    """

    def __init__(
        self,
        mode: str,
        *,
        clip: float,
        noise_multiplier: float,
        rng: np.random.Generator,
        scope: str = "model",
    ) -> None:
        if mode not in ("central", "local"):
            msg = f"unknown DP mode {mode!r}; use none, central or local"
            raise ConfigError(msg)
        if not clip > 0 or noise_multiplier < 0:
            msg = f"--clip must be > 0 and --sigma >= 0, got {clip} and {noise_multiplier}"
            raise ConfigError(msg)
        self.dp_mode, self.clip, self.noise_multiplier, self.rng, self.scope = (
            mode,
            clip,
            noise_multiplier,
            rng,
            scope,
        )

    def client_release(self, result: ClientResult, rng: np.random.Generator | None = None) -> ClientResult:
        """Local mode: clip and noise on the client with its own generator. Central: raw update, no buffers."""
        if self.dp_mode != "local":
            return ClientResult(result.name, result.update, {}, result.n_examples, result.steps, result.loss,
                                result.seconds)  # fmt: skip
        if rng is None:
            msg = "local DP needs the client's noise generator"
            raise ConfigError(msg)
        pre = global_l2_norm(result.update)
        noised, _ = dp_client_update_local(
            result.update, clip_norm=self.clip, noise_multiplier=self.noise_multiplier, rng=rng,
            scope=self.scope,  # type: ignore[arg-type]
        )  # fmt: skip
        out = ClientResult(result.name, noised, {}, result.n_examples, result.steps, result.loss, result.seconds)
        out.pre_clip_norm = pre  # type: ignore[attr-defined]
        return out

    def aggregate(self, results: Sequence[ClientResult], *, expected_clients: float) -> RoundAggregate:
        """Central: clip, sum, add noise once, divide by ``expected_clients``. Local: mean of noised updates."""
        updates = [r.update for r in results]
        if self.dp_mode == "central":
            mean, st = dp_fedavg_central(
                updates, clip_norm=self.clip, noise_multiplier=self.noise_multiplier, rng=self.rng,
                scope=self.scope, denominator=expected_clients,  # type: ignore[arg-type]
            )  # fmt: skip
            return RoundAggregate(mean, {}, st.as_dict())
        mean = fedavg(updates, None)
        pre = [(r.pre_clip_norm if r.pre_clip_norm is not None else float("nan")) for r in results]
        clipped_bound = [min(p, self.clip) for p in pre]
        std_mean = noise_std_sum(self.noise_multiplier, self.clip) / np.sqrt(len(results))
        n_params = sum(v.size for v in mean.values())
        noise_norm = float(std_mean * np.sqrt(n_params))
        signal = float(np.mean(clipped_bound)) if clipped_bound else 0.0
        stats = {
            "n_clients": len(results), "pre_clip_norms": pre,
            "fraction_clipped": float(np.mean([p > self.clip for p in pre])) if pre else 0.0,
            "noise_std_sum": noise_std_sum(self.noise_multiplier, self.clip), "noise_std_mean": float(std_mean),
            "noise_norm": noise_norm, "noise_to_signal": noise_norm / signal if signal > 0 else float("inf"),
        }  # fmt: skip
        return RoundAggregate(mean, {}, stats)


def _average_buffers(results: Sequence[ClientResult], weights: Sequence[float]) -> dict[str, np.ndarray]:
    if not results or not results[0].buffers:
        return {}
    total = float(sum(weights))
    out = {}
    for name, first in results[0].buffers.items():
        if np.issubdtype(first.dtype, np.floating):
            acc = sum(r.buffers[name].astype(np.float64) * w for r, w in zip(results, weights, strict=True))
            out[name] = (acc / total).astype(first.dtype)
        else:  # counters such as num_batches_tracked: keep the largest
            out[name] = np.max(np.stack([r.buffers[name] for r in results]), axis=0)
    return out
