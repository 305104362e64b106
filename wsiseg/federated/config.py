"""Settings of a federated run (``wsiseg fed-train``), validated once."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from wsiseg.config import checked_kwargs
from wsiseg.errors import ConfigError
from wsiseg.federated.modes import DEFAULT_DP_MODE, DP_MODES, PARTITIONS
from wsiseg.federated.strategies import strategy_class
from wsiseg.seeds import stream_seed

__all__ = ["DEFAULT_SIGMA", "DEFAULT_TRAIN_SEED", "PRIVATE_CONFIG_KEYS", "FedConfig"]

#: Seed of model init and data order when the user gives none (the official DHUnet seed). DP noise and client
#: sampling never use it (nor ``--seed``): they come from OS entropy unless ``--noise-seed`` is given.
DEFAULT_TRAIN_SEED = 301

#: Settings kept out of every shareable file: seeds (``noise_seed`` regenerates the noise) and local paths.
PRIVATE_CONFIG_KEYS = ("seed", "noise_seed", "data", "client_dirs", "pretrained")

#: Noise multiplier when neither ``--sigma`` nor ``--target-epsilon`` is given.
DEFAULT_SIGMA = 1.0


@dataclass(frozen=True)
class FedConfig:
    """A federated run. Defaults follow the FedDP paper where it is specific (5 clients, 150 rounds, C = 0.5)."""

    data: tuple[str, ...] = ("tiles",)
    client_dirs: tuple[str, ...] = ()
    clients: int = 5
    partition: str = "iid"
    alpha: float = 0.5
    rounds: int = 150
    local_epochs: int = 1
    local_steps: int | None = None
    fraction: float = 1.0
    model: str = "dhunet"
    model_args: dict[str, Any] = field(default_factory=dict)
    pretrained: str | None = None
    batch_size: int = 24
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    augment: bool = True
    test_fraction: float = 0.3
    dp: str = DEFAULT_DP_MODE
    sigma: float | None = None
    clip: float = 0.5
    clip_scope: str = "model"
    delta: float = 1e-5
    target_epsilon: float | None = None
    seed: int | None = None
    noise_seed: int | None = None
    eval_every: int = 1
    workers: int = 0
    device: str = "auto"
    amp: bool = True

    def __post_init__(self) -> None:
        checks = [
            (self.dp in DP_MODES, f"--dp must be one of {', '.join(DP_MODES)}, got {self.dp!r}"),
            (self.rounds >= 1, f"--rounds must be >= 1, got {self.rounds}"),
            (0 < self.fraction <= 1, f"--fraction must be in (0, 1], got {self.fraction}"),
            (self.clip > 0, f"--clip must be > 0, got {self.clip}"),
            (self.sigma is None or self.sigma >= 0, f"--sigma must be >= 0, got {self.sigma}"),
            (0 < self.delta < 1, f"--delta must be in (0, 1), got {self.delta}"),
            (self.clip_scope in ("model", "layer"), f"--clip-scope must be model or layer, got {self.clip_scope!r}"),
            (self.local_epochs >= 1, f"--local-epochs must be >= 1, got {self.local_epochs}"),
            (self.local_steps is None or self.local_steps >= 1, "--local-steps must be >= 1"),
            (
                self.partition in PARTITIONS,
                f"--partition must be one of {', '.join(PARTITIONS)}, got {self.partition!r}",
            ),
            (self.target_epsilon is None or self.target_epsilon > 0, "--target-epsilon must be > 0"),
            (self.private or self.target_epsilon is None, "--target-epsilon needs a DP mode (--dp)"),
            (self.noise_seed is None or self.noise_seed >= 0, "--noise-seed must be a non-negative integer"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)

    @property
    def noise_multiplier(self) -> float:
        """The sigma to use unless it is calibrated: ``--sigma``, else 1.0."""
        return DEFAULT_SIGMA if self.sigma is None else self.sigma

    @property
    def calibrates(self) -> bool:
        """True when sigma is derived from ``--target-epsilon`` (no explicit ``--sigma``)."""
        return self.target_epsilon is not None and self.sigma is None and self.private

    @property
    def train_seed(self) -> int:
        """Seed of init, partition and data order (never of DP noise or client sampling)."""
        return DEFAULT_TRAIN_SEED if self.seed is None else self.seed

    @property
    def private(self) -> bool:
        """Whether ``dp`` is a differentially private mode."""
        return self.dp in DP_MODES and strategy_class(self.dp).private

    @property
    def sensitivity(self) -> float:
        """L2 sensitivity of one round's release in units of ``C``, under the relation the mode states."""
        return strategy_class(self.dp).sensitivity

    def client_noise_seed(self, index: int) -> int | None:
        """Noise seed of simulated client ``index`` (None: OS entropy), derived from ``--noise-seed``."""
        return None if self.noise_seed is None else stream_seed(self.noise_seed, "client-noise", index)

    def public_dict(self) -> dict[str, Any]:
        """The settings that may go into shareable files: :meth:`to_dict` minus :data:`PRIVATE_CONFIG_KEYS`."""
        return {k: v for k, v in self.to_dict().items() if k not in PRIVATE_CONFIG_KEYS}

    def to_dict(self) -> dict[str, Any]:
        """TOML/JSON-ready dict."""
        data = dataclasses.asdict(self)
        data["data"], data["client_dirs"] = list(self.data), list(self.client_dirs)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FedConfig:
        """Build from a dict; unknown keys are an error."""
        return cls(**checked_kwargs(cls, data, "fed-train", ("data", "client_dirs")))
