"""The registry of DP modes by ``--dp`` name: the one place that maps a name to its strategy class."""

from __future__ import annotations

from typing import Any, cast, get_args

import numpy as np

from wsiseg.errors import ConfigError
from wsiseg.federated.distributed import DistributedDp
from wsiseg.federated.modes import DEFAULT_DP_MODE, DP_MODES
from wsiseg.federated.strategies import CentralDp, FedAvg, LocalDp, SampleDp
from wsiseg.privacy.clipping import ClipScope
from wsiseg.privacy.dpsgd import DpSgdConfig

__all__ = ["DEFAULT_DP_MODE", "DP_MODES", "STRATEGIES", "make_strategy", "strategy_class"]

#: The registry of modes by ``--dp`` name.
STRATEGIES: dict[str, type[FedAvg]] = {cls.mode: cls for cls in (FedAvg, CentralDp, DistributedDp, LocalDp, SampleDp)}
if set(STRATEGIES) != set(DP_MODES) or DEFAULT_DP_MODE not in STRATEGIES:  # pragma: no cover
    msg = f"DP modes {DP_MODES} and registered strategies {tuple(STRATEGIES)} differ"
    raise ImportError(msg)


def strategy_class(mode: str) -> type[FedAvg]:
    """The class of DP mode ``mode``.

    Raises:
        ConfigError: An unknown mode, naming the allowed ones.
    """
    try:
        return STRATEGIES[mode]
    except KeyError:
        msg = f"--dp must be one of {', '.join(STRATEGIES)}, got {mode!r}"
        raise ConfigError(msg) from None


def make_strategy(
    mode: str,
    *,
    clip: float,
    noise_multiplier: float,
    rng: np.random.Generator | None = None,
    scope: str = "model",
    sgd: DpSgdConfig | None = None,
    min_sites: int = 1,
    n_sites: int = 1,
) -> FedAvg:
    """An instance of mode ``mode`` (plain FedAvg for ``none``).

    ``sgd`` configures ``sample``; ``min_sites`` and ``n_sites`` configure ``distributed``.

    Raises:
        ConfigError: An unknown mode or clipping scope.
    """
    cls = strategy_class(mode)
    if not cls.private:
        return cls()
    if scope not in get_args(ClipScope):
        msg = f"--clip-scope must be one of {', '.join(get_args(ClipScope))}, got {scope!r}"
        raise ConfigError(msg)
    kwargs: dict[str, Any] = {"sgd": sgd} if cls is SampleDp else {}
    if cls is DistributedDp:
        kwargs = {"min_sites": min_sites, "n_sites": n_sites}
    return cls(clip=clip, noise_multiplier=noise_multiplier, rng=rng, scope=cast("ClipScope", scope), **kwargs)  # type: ignore[call-arg]
