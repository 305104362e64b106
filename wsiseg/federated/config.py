"""Settings of a federated run (``wsiseg fed-train``), validated once."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from wsiseg.config import checked_kwargs
from wsiseg.data.units import PRIVACY_UNITS, load_patient_table
from wsiseg.errors import ConfigError, PrivacyError
from wsiseg.federated.modes import DEFAULT_DP_MODE, DP_MODES, PARTITIONS
from wsiseg.federated.registry import strategy_class
from wsiseg.privacy.dpsgd import DpSgdConfig
from wsiseg.seeds import stream_seed

__all__ = ["DEFAULT_SIGMA", "DEFAULT_TRAIN_SEED", "PRIVATE_CONFIG_KEYS", "FedConfig"]

#: Seed of model init and data order when the user gives none (the official DHUnet seed). DP noise and client
#: sampling never use it (nor ``--seed``): they come from OS entropy unless ``--noise-seed`` is given.
DEFAULT_TRAIN_SEED = 301

#: Settings kept out of every shareable file: seeds (``noise_seed`` regenerates the noise) and local paths.
PRIVATE_CONFIG_KEYS = ("seed", "noise_seed", "data", "client_dirs", "pretrained", "patients")

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
    heldout: tuple[str, ...] = ()
    dp: str = DEFAULT_DP_MODE
    sigma: float | None = None
    clip: float = 0.5
    clip_scope: str = "model"
    delta: float = 1e-5
    target_epsilon: float | None = None
    privacy_unit: str = "tile"
    sample_rate: float | None = None
    physical_batch: int = 8
    tiles_per_unit: int = 8
    patients: str | None = None
    seed: int | None = None
    noise_seed: int | None = None
    eval_every: int = 1
    workers: int = 0
    device: str = "auto"
    amp: bool = True
    allow_no_noise: bool = False
    secure_aggregation: bool = False
    min_clients: int = 0
    time_budget: float | None = None

    def __post_init__(self) -> None:
        checks = [
            (
                bool(self.heldout) or 0 < self.test_fraction < 1,
                f"--test-fraction must be in (0, 1), got {self.test_fraction}; 0 goes with --heldout",
            ),
            (self.dp in DP_MODES, f"--dp must be one of {', '.join(DP_MODES)}, got {self.dp!r}"),
            (self.rounds >= 1, f"--rounds must be >= 1, got {self.rounds}"),
            (0 < self.fraction <= 1, f"--fraction must be in (0, 1], got {self.fraction}"),
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
            (self.privacy_unit in PRIVACY_UNITS, f"--privacy-unit must be one of {', '.join(PRIVACY_UNITS)}"),
            (
                self.time_budget is None or (0 < self.time_budget < math.inf),
                f"--time-budget must be a positive number of seconds, got {self.time_budget}",
            ),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)
        self._check_noise()
        self._check_secure()
        if self.dp == "sample":
            self.dp_sgd(self.noise_multiplier, load_table=False)  # range checks of q and chunking (exit 8)

    def _check_noise(self) -> None:
        """Clip and noise settings are privacy settings: a bad value is a ``PrivacyError`` (exit 8), all alike.

        A DP mode with ``--sigma 0`` adds no noise (epsilon is infinite): refused unless the run config sets
        ``allow_no_noise = true``, and then reported as not private.
        """
        if not 0 < self.clip < math.inf:
            msg = f"--clip must be a positive finite norm (e.g. 0.5), got {self.clip}"
            raise PrivacyError(msg)
        if self.sigma is not None and not 0 <= self.sigma < math.inf:
            msg = f"--sigma must be a finite number >= 0, got {self.sigma}"
            raise PrivacyError(msg)
        if self.private and self.sigma == 0 and not self.allow_no_noise:
            msg = (f"--dp {self.dp} with --sigma 0 adds no noise: epsilon is infinite and nothing is private; "
                   "use --sigma > 0 (or --target-epsilon), or set allow_no_noise = true in the --config TOML "
                   "to run it anyway as a non-private run")  # fmt: skip
            raise PrivacyError(msg)

    def _check_secure(self) -> None:
        """Secure aggregation goes with the modes that noise at the site and have a bounded release (exit 8)."""
        mode = strategy_class(self.dp)
        if self.min_clients < 0:
            msg = f"--min-clients must be >= 0 (0: every site), got {self.min_clients}"
            raise PrivacyError(msg)
        if self.secure_aggregation and not mode.secure and self.dp != "local":
            hint = " (use --dp distributed: each site adds its share of the central noise)"
            hint = hint if self.dp == "central" else ""
            msg = f"--secure-aggregation works with --dp distributed or --dp local, not --dp {self.dp}{hint}"
            raise PrivacyError(msg)
        if mode.secure and self.fraction < 1:
            msg = (f"--dp distributed needs --fraction 1 (got {self.fraction}): every site takes part and no "
                   "amplification by sampling is claimed")  # fmt: skip
            raise PrivacyError(msg)

    @property
    def secure(self) -> bool:
        """Whether the rounds are summed under secure aggregation (``--secure-aggregation`` or ``--dp distributed``)."""
        return self.secure_aggregation or strategy_class(self.dp).secure

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

    def dp_sgd(self, sigma: float, *, load_table: bool = True) -> DpSgdConfig:
        """The DP-SGD settings of ``--dp sample`` at noise multiplier ``sigma`` (reads ``--patients``).

        Raises:
            PrivacyError: A sample rate out of (0, 1], bad chunking or an unreadable patient table.
        """
        table = load_patient_table(self.patients) if (load_table and self.patients) else None
        return DpSgdConfig(clip=self.clip, noise_multiplier=sigma, unit=self.privacy_unit,
                           sample_rate=self.sample_rate, physical_batch=self.physical_batch,
                           tiles_per_unit=self.tiles_per_unit, patients=table,
                           patients_name=self.patients or "--patients")  # fmt: skip

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
        data["heldout"] = list(self.heldout)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FedConfig:
        """Build from a dict; unknown keys are an error."""
        return cls(**checked_kwargs(cls, data, "fed-train", ("data", "client_dirs", "heldout")))
