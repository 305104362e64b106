"""Clients of a federation: who holds which slides, and one client's local round of training.

Each client trains with the shared loop from ``wsiseg.train.loop`` and returns only its update
(local weights minus the global weights, trainable parameters only) plus, without DP, its normalisation
buffers. What leaves the client is decided by the DP mode in ``wsiseg.federated.strategies``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from wsiseg.data.dataset import TileDataset, TileSource, load_sources
from wsiseg.data.partition import explicit_split, partition_clients, split_slides
from wsiseg.data.transforms import PairTransform
from wsiseg.data.units import unit_groups
from wsiseg.errors import ConfigError, DataError, PrivacyError
from wsiseg.privacy.dpsgd import DpSgdConfig, dp_sgd_steps
from wsiseg.seeds import stream_seed
from wsiseg.train.loop import OptimConfig, StepStats, autocast_factory, make_loss, make_optimizer, poly_lr, train_steps

__all__ = [
    "Client",
    "ClientResult",
    "LocalTraining",
    "buffer_state",
    "build_clients",
    "check_dp_model",
    "client_split_seed",
    "dp_sgd_plan",
    "global_test",
    "local_update",
    "pooled_train",
    "trainable_state",
]

Update = dict[str, np.ndarray]


@dataclass
class Client:
    """One site: its training slides and its held-out slides (evaluation only)."""

    name: str
    train: TileSource
    heldout: TileSource | None

    @property
    def n_train_tiles(self) -> int:
        """Training tiles (the FedAvg weight without DP)."""
        return len(self.train.records)


@dataclass(frozen=True)
class LocalTraining:
    """What each client does in a round."""

    epochs: int = 1
    steps: int | None = None
    batch_size: int = 24
    optim: OptimConfig = field(default_factory=OptimConfig)
    ce_weight: float = 0.5
    dice_weight: float = 0.5
    augment: bool = True
    workers: int = 0
    device: str = "cpu"
    amp: bool = True
    dp_sgd: DpSgdConfig | None = None


@dataclass
class ClientResult:
    """What a client computed in one round (before any DP processing)."""

    name: str
    update: Update
    buffers: dict[str, np.ndarray]
    n_examples: int
    steps: int
    loss: float
    seconds: float
    pre_clip_norm: float | None = None
    privacy: dict[str, Any] | None = None


def trainable_state(model: nn.Module) -> dict[str, np.ndarray]:
    """Trainable parameters as float32 numpy arrays (copies)."""
    return {n: p.detach().cpu().float().numpy().copy() for n, p in model.named_parameters() if p.requires_grad}


def buffer_state(model: nn.Module) -> dict[str, np.ndarray]:
    """Persistent buffers (e.g. BatchNorm running statistics) as numpy arrays (copies).

    Non-persistent buffers (constant lookup tables such as Swin's relative position index) are not part of the
    state dict and are never exchanged.
    """
    params = {n for n, _ in model.named_parameters()}
    return {n: t.detach().cpu().numpy().copy() for n, t in model.state_dict().items() if n not in params}


def build_clients(
    *,
    data: tuple[str, ...],
    client_dirs: tuple[str, ...],
    n_clients: int,
    partition: str,
    alpha: float,
    test_fraction: float,
    seed: int,
    heldout: tuple[str, ...] = (),
) -> list[Client]:
    """Create the clients from one pooled dataset (split by slide) or one dataset per site.

    Every client with at least two slides keeps ``test_fraction`` of them (at least one) as held-out
    slides; the union of held-out slides is the global test set. With ``heldout`` (slide keys) those slides
    are the held-out set instead, exactly as ``train --heldout`` holds them out: a pooled dataset is
    partitioned without them (so clients train on the same slides a central run does) and they are dealt
    round robin to the clients' held-out sets; per-site folders keep their own held-out slides.

    Raises:
        DataError: A client without training slides.
        ConfigError: An impossible partition.
    """
    if heldout:
        return _clients_with_heldout(data, client_dirs, n_clients, partition, alpha, seed, heldout)
    if client_dirs:
        sources = [(Path(d).name, load_sources([d])) for d in client_dirs]
    else:
        pool = load_sources(data)
        groups = partition_clients(pool.slide_ids, n_clients, mode=partition, seed=stream_seed(seed, "partition"),
                                   sites=pool.sites(),
                                   alpha=alpha)  # fmt: skip
        sources = [(f"client{i}", pool.subset(ids)) for i, ids in enumerate(groups)]
    clients = []
    for i, (name, src) in enumerate(sources):
        ids = src.slide_ids
        if not src.records:
            msg = f"client {name} has no tiles; give it slides or use fewer --clients"
            raise DataError(msg)
        if len(ids) >= 2:
            train_ids, test_ids = split_slides(ids, test_fraction=test_fraction, seed=client_split_seed(seed, i))
            clients.append(Client(name, src.subset(train_ids), src.subset(test_ids)))
        else:
            clients.append(Client(name, src, None))
    return clients


def _clients_with_heldout(
    data: tuple[str, ...],
    client_dirs: tuple[str, ...],
    n_clients: int,
    partition: str,
    alpha: float,
    seed: int,
    heldout: tuple[str, ...],
) -> list[Client]:
    """:func:`build_clients` with an explicit held-out list (see there)."""
    if client_dirs:
        sources = [(Path(d).name, load_sources([d])) for d in client_dirs]
        everything = sorted({s for _, src in sources for s in src.slide_ids})
        explicit_split(everything, heldout)  # names unknown ids, refuses holding out everything
        clients = []
        for name, src in sources:
            held = [s for s in src.slide_ids if s in set(heldout)]
            train = [s for s in src.slide_ids if s not in set(heldout)]
            if not train:
                msg = f"client {name}: --heldout lists all its slides; leave it some to train on"
                raise DataError(msg)
            clients.append(Client(name, src.subset(train), src.subset(held) if held else None))
        return clients
    pool = load_sources(data)
    train_ids, test_ids = explicit_split(pool.slide_ids, heldout)
    groups = partition_clients(train_ids, n_clients, mode=partition, seed=stream_seed(seed, "partition"),
                               sites=pool.sites(), alpha=alpha)  # fmt: skip
    dealt = [test_ids[i :: len(groups)] for i in range(len(groups))]
    return [
        Client(f"client{i}", pool.subset(ids), pool.subset(held) if held else None)
        for i, (ids, held) in enumerate(zip(groups, dealt, strict=True))
    ]


def client_split_seed(seed: int, index: int) -> int:
    """Seed of client ``index``'s held-out split (the simulation and a Flower site use the same one)."""
    return stream_seed(seed, "client-split", index)


def _union(parts: list[TileSource]) -> TileSource | None:
    if not parts:
        return None
    records = tuple(r for p in parts for r in p.records)
    return TileSource(records, parts[0].classes, parts[0].config, tuple({r for p in parts for r in p.roots}))


def global_test(clients: list[Client]) -> TileSource | None:
    """Union of the clients' held-out slides."""
    return _union([c.heldout for c in clients if c.heldout is not None])


def pooled_train(clients: list[Client]) -> TileSource:
    """Union of the clients' training slides: only the simulation holds them all (for its baselines)."""
    pooled = _union([c.train for c in clients])
    assert pooled is not None  # build_clients never returns an empty roster
    return pooled


def local_update(
    model: nn.Module,
    global_weights: dict[str, torch.Tensor],
    client: Client,
    cfg: LocalTraining,
    *,
    round_index: int,
    total_rounds: int,
    seed: int,
    client_index: int,
    noise_rng: np.random.Generator | None = None,
) -> ClientResult:
    """Load the global weights, train locally, and return the update.

    Everything random here (dropout, data order, augmentation) is seeded from
    ``(seed, round_index, client_index)``, so a round replays identically after a resume. Under DP-SGD
    (``cfg.dp_sgd``) the unit sampling and the noise come from the site's ``noise_rng`` instead.
    """
    model.load_state_dict(global_weights)
    before = trainable_state(model)
    n_classes = len(client.train.classes)
    ds = TileDataset(client.train, transform=PairTransform() if cfg.augment else None,
                     seed=stream_seed(seed, "augment", client_index))  # fmt: skip
    ds.set_epoch(round_index)
    torch.manual_seed(stream_seed(seed, "torch-round", round_index, client_index))
    gen = torch.Generator().manual_seed(stream_seed(seed, "data-order", round_index, client_index))
    loader = DataLoader(ds, batch_size=cfg.batch_size, shuffle=True, generator=gen, num_workers=cfg.workers,
                        pin_memory=cfg.device.startswith("cuda"))  # fmt: skip
    steps_per_round = cfg.steps if cfg.steps is not None else cfg.epochs * len(loader)
    if steps_per_round < 1:
        msg = f"client {client.name} has no training batches"
        raise DataError(msg)
    privacy: dict[str, Any] | None = None
    if cfg.dp_sgd is not None:
        if noise_rng is None:
            msg = f"client {client.name}: DP-SGD draws its sampling and noise from the site's generator; none given"
            raise ConfigError(msg)
        groups, rate, steps_per_round = _unit_plan(client, cfg)
        privacy = {"unit": cfg.dp_sgd.unit, "q": rate, "steps": steps_per_round, "units": len(groups)}
    optimizer = make_optimizer(model, cfg.optim)
    loss_fn = make_loss(model, n_classes, ce_weight=cfg.ce_weight, dice_weight=cfg.dice_weight)
    lr_at = functools.partial(poly_lr, cfg.optim.lr, total_steps=total_rounds * steps_per_round,
                              power=cfg.optim.poly_power)  # fmt: skip
    first = (round_index - 1) * steps_per_round
    stats: StepStats
    if cfg.dp_sgd is not None and noise_rng is not None and privacy is not None:

        def load(indices: Any) -> tuple[torch.Tensor, torch.Tensor]:
            items = [ds[int(i)] for i in indices]
            images = torch.stack([it["image"] for it in items]).to(cfg.device)  # type: ignore[misc]
            return images, torch.stack([it["mask"] for it in items]).to(cfg.device)  # type: ignore[misc]

        data_rng = np.random.default_rng(stream_seed(seed, "dp-tiles", round_index, client_index))
        stats = dp_sgd_steps(model, load, groups, cfg.dp_sgd, optimizer, loss_fn, rate=float(privacy["q"]),
                             steps=steps_per_round, lr_at=lr_at, first_step=first, noise_rng=noise_rng,
                             data_rng=data_rng, device=cfg.device,
                             autocast=autocast_factory(cfg.device, cfg.amp))  # fmt: skip
    else:
        stats = train_steps(model, _cycle(loader), optimizer, loss_fn, lr_at=lr_at, first_step=first,
                            max_steps=steps_per_round, device=cfg.device, amp=cfg.amp)  # fmt: skip
    after = trainable_state(model)
    update = {k: after[k] - before[k] for k in before}
    return ClientResult(client.name, update, buffer_state(model), stats.images, stats.steps, stats.loss,
                        stats.seconds, privacy=privacy)  # fmt: skip


def dp_sgd_plan(client: Client, cfg: LocalTraining) -> tuple[int, float, int]:
    """A site's DP-SGD units, Poisson rate ``q`` and steps a round (all fixed before any training).

    Raises:
        PrivacyError: A rate out of range, or slides missing from the patient table.
        ConfigError: No DP-SGD settings.
    """
    groups, rate, steps = _unit_plan(client, cfg)
    return len(groups), rate, steps


def _unit_plan(client: Client, cfg: LocalTraining) -> tuple[list[list[int]], float, int]:
    """The units (tile indices of each), ``q`` and steps a round, computed once per round."""
    if cfg.dp_sgd is None:
        msg = "dp_sgd_plan needs --dp sample settings"
        raise ConfigError(msg)
    dp = cfg.dp_sgd
    groups = unit_groups(client.train, dp.unit, patients=dp.patients, table_name=dp.patients_name)
    rate = dp.rate(len(groups), cfg.batch_size, site=f"site {client.name}")
    return groups, rate, dp.steps_per_round(rate, local_steps=cfg.steps, local_epochs=cfg.epochs)


def _cycle(loader: DataLoader[Any]) -> Any:
    """Yield batches over as many epochs as the step budget needs."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            return


def check_dp_model(model: nn.Module, *, private: bool, mode: str) -> None:
    """Refuse models whose buffers hold data statistics when DP is on (they would leak unaccounted).

    Args:
        model: The model to check.
        private: Whether the run's DP mode is private.
        mode: The mode's name, for the message.

    Raises:
        PrivacyError: If a BatchNorm layer tracks running statistics under a DP mode (exit 8).
    """
    if not private:
        return
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            msg = (
                f"--dp {mode}: layer {name} is BatchNorm, whose running statistics come from client data "
                "and would be shared without noise; use --norm groupnorm"
            )
            raise PrivacyError(msg)
