"""Centralised training (the paper's first column): split by slide, train, evaluate, checkpoint, resume."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from wsiseg.config import checked_kwargs, load_toml, resolve_device
from wsiseg.data.dataset import TileDataset, TileSource, load_sources
from wsiseg.data.partition import explicit_split, kfold_slides, split_slides
from wsiseg.data.transforms import PairTransform
from wsiseg.errors import ConfigError
from wsiseg.models import args_for_tiles, create_model
from wsiseg.seeds import stream_seed
from wsiseg.train.baselines import evaluate_baselines, fit_baselines
from wsiseg.train.card import ModelCard, ModelSpec
from wsiseg.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from wsiseg.train.loop import OptimConfig, evaluate, make_loss, make_optimizer, poly_lr, train_steps
from wsiseg.train.losses import balanced_class_weights
from wsiseg.train.report import MetricReport
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
    class_weights: str = "none"
    augment: bool = True
    test_fraction: float = 0.3
    heldout: tuple[str, ...] = ()
    folds: int = 0
    fold: int = 0
    seed: int = 301
    workers: int = 0
    device: str = "auto"
    amp: bool = True
    channels_last: bool = True
    max_steps_per_epoch: int | None = None
    time_budget: float | None = None
    patience: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            msg = f"--epochs ({self.epochs}) and --batch-size ({self.batch_size}) must be positive"
            raise ConfigError(msg)
        if self.time_budget is not None and self.time_budget <= 0:
            msg = f"--time-budget must be a positive number of seconds, got {self.time_budget}"
            raise ConfigError(msg)
        if self.patience < 0:
            msg = f"--patience must be >= 0 epochs (0: no early stopping), got {self.patience}"
            raise ConfigError(msg)
        if self.heldout and self.folds:
            msg = "--heldout fixes the held-out slides; it cannot be combined with --folds"
            raise ConfigError(msg)
        if not self.heldout and not self.folds and not 0.0 < self.test_fraction < 1.0:
            msg = f"--test-fraction must be in (0, 1), got {self.test_fraction}; 0 goes with --heldout"
            raise ConfigError(msg)
        parse_class_weights(self.class_weights)
        if self.folds and not 0 <= self.fold < self.folds:
            msg = f"--fold {self.fold} must be in 0..{self.folds - 1}"
            raise ConfigError(msg)

    def to_dict(self) -> dict[str, Any]:
        """JSON/TOML-ready dict."""
        data = dataclasses.asdict(self)
        data["data"] = list(self.data)
        data["heldout"] = list(self.heldout)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a dict (unknown keys are an error)."""
        return cls(**checked_kwargs(cls, data, "training", ("data", "heldout")))


def parse_class_weights(spec: str) -> str | list[float] | None:
    """Read ``--class-weights``: ``none``, ``balanced`` (median frequency) or comma-separated positive weights.

    Raises:
        ConfigError: Anything else.
    """
    text = spec.strip().lower()
    if text in ("none", ""):
        return None
    if text == "balanced":
        return "balanced"
    try:
        weights = [float(v) for v in text.split(",")]
    except ValueError:
        weights = []
    if not weights or min(weights) <= 0:
        msg = f"--class-weights must be 'none', 'balanced' or positive numbers such as 1,1,1,4; got {spec!r}"
        raise ConfigError(msg)
    return weights


def class_weights_for(spec: str, class_pixels: np.ndarray) -> list[float] | None:
    """The CE class weights of a run: none, median frequency of the training pixels, or as given.

    Raises:
        ConfigError: A list whose length is not the number of classes.
    """
    parsed = parse_class_weights(spec)
    if parsed == "balanced":
        return balanced_class_weights([int(c) for c in class_pixels])
    if isinstance(parsed, list) and len(parsed) != len(class_pixels):
        msg = f"--class-weights gives {len(parsed)} weights for {len(class_pixels)} classes (background first)"
        raise ConfigError(msg)
    return parsed if isinstance(parsed, list) else None


@dataclass
class TrainResult:
    """Where a run went and how it ended."""

    run_dir: Path
    best_dice: float
    final_metrics: dict[str, Any]
    epochs_done: int
    stop_reason: str = "epochs done"
    final_report: MetricReport | None = None
    baselines: dict[str, MetricReport] = field(default_factory=dict)


def slide_split(source: TileSource, cfg: TrainConfig) -> tuple[list[str], list[str]]:
    """Train and test slide keys: the explicit held-out list, fold ``cfg.fold`` of ``cfg.folds``, or a seeded split."""
    if cfg.heldout:
        return explicit_split(source.slide_ids, cfg.heldout)
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
    fitted = fit_baselines(source.subset(train_ids))
    class_weights = class_weights_for(cfg.class_weights, fitted.class_pixels)
    loss_fn = make_loss(model, len(source.classes), ce_weight=cfg.ce_weight, dice_weight=cfg.dice_weight,
                        class_weights=class_weights)  # fmt: skip
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
        folder.write_json("split.json", {"train": train_ids, "test": test_ids, "how": _split_how(cfg)})
    assert run_dir is not None
    log = CsvLog(run_dir / "metrics.csv", keep_until=("epoch", float(start_epoch)))
    card = model_card(cfg, source, {"split": {"train": train_ids, "test": test_ids}, "class_weights": class_weights})
    clock = RunClock(cfg.time_budget, total, cfg.poly_power)
    report: MetricReport | None = None
    epoch, stalled, reason = start_epoch, 0, "epochs done"
    while epoch < cfg.epochs:
        loader = epoch_loader(train_ds, cfg, epoch, device)
        stats = train_steps(
            model, iter(loader), optimizer, loss_fn, lr_at=lambda step: cfg.lr * clock.lr_factor(step),
            first_step=epoch * steps_per_epoch, max_steps=steps_per_epoch, device=device, amp=cfg.amp,
            channels_last=cfg.channels_last, on_step=on_step, should_stop=clock.out_of_time,
        )  # fmt: skip
        assert test_loader is not None
        eval_start = time.monotonic()
        report = evaluate(model, test_loader, source.classes.names, device=device, amp=cfg.amp)
        clock.eval_seconds = time.monotonic() - eval_start
        epoch += 1
        score = float(np.nan_to_num(report.mean_dice, nan=0.0))
        row = {
            "epoch": epoch, "step": (epoch - 1) * steps_per_epoch + stats.steps,
            "lr": optimizer.param_groups[0]["lr"], "train_loss": stats.loss, "images_per_s": stats.images_per_s,
            "test_mean_dice": report.mean_dice, "test_mean_iou": report.mean_iou, "test_dice": report.paper["dice"],
            "test_jaccard": report.paper["jaccard"], "test_acc": report.paper["acc"],
        }  # fmt: skip
        for name, value in zip(source.classes.names[1:], report.confusion_metrics["dice"][1:], strict=True):
            row[f"dice_{name}"] = float(value)
        log.append(row)
        meta = {"epoch": epoch, "best_dice": max(best, score), "metrics": report.to_dict()}
        stalled = 0 if score > best else stalled + 1
        if score > best:
            best = score
            save_checkpoint(run_dir / "checkpoints" / "best", model, {**card, **meta})
        state = {**rng_state(), **_optimizer_tensors(optimizer)}
        save_checkpoint(run_dir / "checkpoints" / "last", model, {**card, **meta}, state=state)
        panels = [("loss", ["train_loss"]), ("held-out slides", ["test_mean_dice", "test_mean_iou", "test_dice"])]
        plot_curves(run_dir / "curves.png", log.rows(), "epoch", panels)
        if on_epoch:
            on_epoch(row)
        if stop_after_epoch is not None and epoch >= stop_after_epoch:
            return TrainResult(run_dir, best, report.to_dict(), epoch)
        if clock.out_of_time():
            reason = f"time budget of {cfg.time_budget:g} s reached"
            break
        if cfg.patience and stalled >= cfg.patience:
            reason = f"early stop: held-out mean Dice did not improve for {cfg.patience} epoch(s)"
            break
    if report is None:
        report = evaluate(model, test_loader, source.classes.names, device=device, amp=cfg.amp)  # type: ignore[arg-type]
    baselines = evaluate_baselines(fitted, source.subset(test_ids))
    summary = {**report.to_dict(), "baselines": {n: b.to_dict() for n, b in baselines.items()},
               "stop_reason": reason, "epochs_done": epoch, "seconds": clock.elapsed()}  # fmt: skip
    save_checkpoint(run_dir / "checkpoints" / "final", model, {**card, "epoch": epoch, "metrics": summary})
    folder.write_json("metrics.json", summary)
    return TrainResult(run_dir, best, summary, epoch, reason, report, baselines)


def _split_how(cfg: TrainConfig) -> str:
    if cfg.heldout:
        return "explicit --heldout list"
    if cfg.folds:
        return f"fold {cfg.fold} of {cfg.folds} by slide, seed {cfg.seed}"
    return f"seeded split by slide, test fraction {cfg.test_fraction}, seed {cfg.seed}"


class RunClock:
    """Wall-clock budget and learning-rate schedule of one run.

    The poly schedule runs on the further of two progress measures, steps done over planned steps and time
    spent over the budget, so a run cut short by its budget has still decayed its learning rate to near 0.
    Steps stop early enough that the held-out evaluation after them (timed at the previous epoch) still fits.

    Args:
        budget: Seconds allowed, or None for no limit.
        total_steps: Planned optimizer steps.
        power: Poly decay power.
    """

    def __init__(self, budget: float | None, total_steps: int, power: float) -> None:
        self.budget = budget
        self.total_steps = total_steps
        self.power = power
        self.start = time.monotonic()
        self.eval_seconds = 0.0

    def elapsed(self) -> float:
        """Seconds since the run started (this process)."""
        return time.monotonic() - self.start

    def out_of_time(self) -> bool:
        """Whether the budget, less the time one evaluation takes, is spent."""
        return self.budget is not None and self.elapsed() + self.eval_seconds >= self.budget

    def lr_factor(self, step: int) -> float:
        """Learning rate over base learning rate at global ``step``."""
        factor = poly_lr(1.0, step, self.total_steps, self.power)
        if self.budget is not None:
            factor = min(factor, max(0.0, 1.0 - self.elapsed() / self.budget) ** self.power)
        return factor


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
