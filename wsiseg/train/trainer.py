"""Centralised training (the paper's first column): split by slide, train, evaluate, checkpoint, resume."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from wsiseg.config import checked_kwargs, load_toml, resolve_device
from wsiseg.data.dataset import TileDataset, TileSource, load_sources
from wsiseg.data.partition import kfold_slides, split_slides
from wsiseg.data.transforms import PairTransform
from wsiseg.errors import ConfigError
from wsiseg.models import args_for_tiles, create_model
from wsiseg.seeds import stream_seed
from wsiseg.train.card import ModelCard, ModelSpec
from wsiseg.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from wsiseg.train.loop import OptimConfig, evaluate, make_loss, make_optimizer, poly_lr, train_steps
from wsiseg.train.runlog import CsvLog, RunFolder, plot_curves

__all__ = [
    "TrainConfig",
    "TrainResult",
    "epoch_loader",
    "load_run_config",
    "make_loaders",
    "model_card",
    "run_training",
    "slide_split",
]


@dataclass(frozen=True)
class TrainConfig:
    """A centralised training run. Defaults follow the official DHUnet code and the FedDP paper."""

    data: tuple[str, ...] = ("tiles",)
    model: str = "dhunet"
    model_args: dict[str, Any] = field(default_factory=dict)
    pretrained: str | None = None
    epochs: int = 150
    batch_size: int = 24
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    ce_weight: float = 0.5
    dice_weight: float = 0.5
    augment: bool = True
    test_fraction: float = 0.3
    folds: int = 0
    fold: int = 0
    seed: int = 301
    workers: int = 0
    device: str = "auto"
    amp: bool = True
    channels_last: bool = True
    max_steps_per_epoch: int | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            msg = f"--epochs ({self.epochs}) and --batch-size ({self.batch_size}) must be positive"
            raise ConfigError(msg)
        if self.folds and not 0 <= self.fold < self.folds:
            msg = f"--fold {self.fold} must be in 0..{self.folds - 1}"
            raise ConfigError(msg)

    def to_dict(self) -> dict[str, Any]:
        """JSON/TOML-ready dict."""
        data = dataclasses.asdict(self)
        data["data"] = list(self.data)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a dict (unknown keys are an error)."""
        return cls(**checked_kwargs(cls, data, "training", ("data",)))


@dataclass
class TrainResult:
    """Where a run went and how it ended."""

    run_dir: Path
    best_dice: float
    final_metrics: dict[str, Any]
    epochs_done: int


def slide_split(source: TileSource, cfg: TrainConfig) -> tuple[list[str], list[str]]:
    """Train and test slide keys: a seeded 0.7/0.3 split, or fold ``cfg.fold`` of ``cfg.folds``."""
    if cfg.folds:
        return kfold_slides(source.slide_ids, folds=cfg.folds, seed=stream_seed(cfg.seed, "train-split"))[cfg.fold]
    return split_slides(source.slide_ids, test_fraction=cfg.test_fraction, seed=stream_seed(cfg.seed, "train-split"))


def make_loaders(
    train: TileSource | None, test: TileSource | None, cfg: TrainConfig, device: str
) -> tuple[TileDataset | None, DataLoader[Any] | None]:
    """The training dataset (its loader is built per epoch) and the test loader."""
    transform = PairTransform() if cfg.augment else None
    aug_seed = stream_seed(cfg.seed, "augment", 0)
    train_ds = TileDataset(train, transform=transform, seed=aug_seed) if train is not None else None
    test_loader = None
    if test is not None:
        test_ds = TileDataset(test)
        test_loader = DataLoader(test_ds, batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.workers,
                                 pin_memory=device.startswith("cuda"))  # fmt: skip
    return train_ds, test_loader


def epoch_loader(ds: TileDataset, cfg: TrainConfig, epoch: int, device: str) -> DataLoader[Any]:
    """A shuffled loader whose order depends only on ``(seed, epoch)``."""
    ds.set_epoch(epoch)
    gen = torch.Generator().manual_seed(stream_seed(cfg.seed, "data-order", epoch))
    return DataLoader(ds, batch_size=cfg.batch_size, shuffle=True, generator=gen, num_workers=cfg.workers,
                      pin_memory=device.startswith("cuda"), drop_last=False)  # fmt: skip


def model_card(cfg: TrainConfig, source: TileSource, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The checkpoint card: what predict needs to rebuild the model and repeat the tiling."""
    args = {"num_classes": len(source.classes), **args_for_tiles(cfg.model, cfg.model_args, source.config.size)}
    card = ModelCard(ModelSpec(cfg.model, args), source.classes.to_list(), source.config.to_dict(),
                     {"train_config": cfg.to_dict(), **(extra or {})})  # fmt: skip
    return card.to_dict()


def run_training(
    cfg: TrainConfig,
    *,
    runs_root: Path = Path("runs"),
    run_dir: Path | None = None,
    resume: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    on_step: Callable[[int, float, int], None] | None = None,
    stop_after_epoch: int | None = None,
) -> TrainResult:
    """Train one model centrally, evaluating on held-out slides after every epoch.

    Args:
        cfg: Settings.
        runs_root: Where a new run folder is created.
        run_dir: Existing run folder to resume (with ``resume=True``).
        resume: Continue from ``run_dir/checkpoints/last``.
        on_epoch: Called with each epoch's log row.
        on_step: Called after each optimizer step with ``(step, loss, batch)``.
        stop_after_epoch: Return after this epoch as if interrupted (no final checkpoint); for tests.

    Returns:
        The run folder and the best and final metrics.
    """
    device = resolve_device(cfg.device)
    source = load_sources(cfg.data)
    train_ids, test_ids = slide_split(source, cfg)
    train_ds, test_loader = make_loaders(source.subset(train_ids), source.subset(test_ids), cfg, device)
    assert train_ds is not None
    torch.manual_seed(stream_seed(cfg.seed, "init"))
    model_args = args_for_tiles(cfg.model, cfg.model_args, source.config.size)
    model = create_model(cfg.model, num_classes=len(source.classes), pretrained=cfg.pretrained, **model_args)
    model.to(device)
    if cfg.channels_last and device.startswith("cuda"):
        model = model.to(memory_format=torch.channels_last)
    optim_cfg = OptimConfig(cfg.lr, cfg.momentum, cfg.weight_decay, cfg.poly_power)
    optimizer = make_optimizer(model, optim_cfg)
    loss_fn = make_loss(model, len(source.classes), ce_weight=cfg.ce_weight, dice_weight=cfg.dice_weight)
    steps_per_epoch = -(-len(train_ds) // cfg.batch_size)
    if cfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    total = cfg.epochs * steps_per_epoch
    start_epoch, best = 0, -1.0
    if resume:
        if run_dir is None:
            msg = "--resume needs the run folder to continue"
            raise ConfigError(msg)
        start_epoch, best = _restore(run_dir, model, optimizer)
        folder = RunFolder(run_dir)
    else:
        folder = RunFolder.create(runs_root, f"train-{cfg.model}")
        run_dir = folder.path
        folder.write_config({**cfg.to_dict(), "split": {"train": train_ids, "test": test_ids}})
    assert run_dir is not None
    log = CsvLog(run_dir / "metrics.csv", keep_until=("epoch", float(start_epoch)))
    card = model_card(cfg, source, {"split": {"train": train_ids, "test": test_ids}})
    report_dict: dict[str, Any] = {}
    for epoch in range(start_epoch, cfg.epochs):
        loader = epoch_loader(train_ds, cfg, epoch, device)
        lr_at = functools.partial(poly_lr, cfg.lr, total_steps=total, power=cfg.poly_power)
        stats = train_steps(
            model, iter(loader), optimizer, loss_fn, lr_at=lr_at,
            first_step=epoch * steps_per_epoch, max_steps=steps_per_epoch, device=device, amp=cfg.amp,
            channels_last=cfg.channels_last, on_step=on_step,
        )  # fmt: skip
        assert test_loader is not None
        report = evaluate(model, test_loader, source.classes.names, device=device, amp=cfg.amp)
        report_dict = report.to_dict()
        dice = float(np.nan_to_num(report.paper["dice"], nan=0.0))
        row = {
            "epoch": epoch + 1, "step": (epoch + 1) * steps_per_epoch, "lr": optimizer.param_groups[0]["lr"],
            "train_loss": stats.loss, "images_per_s": stats.images_per_s, "test_dice": report.paper["dice"],
            "test_jaccard": report.paper["jaccard"], "test_acc": report.paper["acc"],
        }  # fmt: skip
        for name, value in zip(source.classes.names[1:], report.paper_per_class["dice"], strict=True):
            row[f"dice_{name}"] = float(value)
        log.append(row)
        meta = {"epoch": epoch + 1, "best_dice": max(best, dice), "metrics": report_dict}
        if dice > best:
            best = dice
            save_checkpoint(run_dir / "checkpoints" / "best", model, {**card, **meta})
        state = {**rng_state(), **_optimizer_tensors(optimizer)}
        save_checkpoint(run_dir / "checkpoints" / "last", model, {**card, **meta}, state=state)
        panels = [("loss", ["train_loss"]), ("held-out slides", ["test_dice", "test_jaccard", "test_acc"])]
        plot_curves(run_dir / "curves.png", log.rows(), "epoch", panels)
        if on_epoch:
            on_epoch(row)
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch:
            return TrainResult(run_dir, best, report_dict, epoch + 1)
    final = run_dir / "checkpoints" / "final"
    save_checkpoint(final, model, {**card, "epoch": cfg.epochs, "metrics": report_dict})
    folder.write_json("metrics.json", report_dict)
    return TrainResult(run_dir, best, report_dict, cfg.epochs)


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    out = {}
    for i, state in optimizer.state_dict()["state"].items():
        buf = state.get("momentum_buffer")
        if buf is not None:
            out[f"optim.{i}.momentum_buffer"] = buf
    return out


def _restore(run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[int, float]:
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last", with_state=True)
    model.load_state_dict(ckpt.weights)
    assert ckpt.state is not None
    sd = optimizer.state_dict()
    params = sd["param_groups"][0]["params"]
    sd["state"] = {
        i: {"momentum_buffer": ckpt.state[f"optim.{i}.momentum_buffer"].to(next(model.parameters()).device)}
        for i in params
        if f"optim.{i}.momentum_buffer" in ckpt.state
    }
    optimizer.load_state_dict(sd)
    set_rng_state(ckpt.state)
    return int(ckpt.card["epoch"]), float(ckpt.card.get("best_dice", -1.0))


def load_run_config(run_dir: Path) -> TrainConfig:
    """Read a run folder's ``config.toml`` back into a ``TrainConfig`` (the split is recomputed)."""
    data = load_toml(run_dir / "config.toml")
    data.pop("split", None)
    return TrainConfig.from_dict(data)
