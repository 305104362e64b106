"""``wsiseg train``: centralised training (no federation), the paper's first Table-I column."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from wsiseg.cli import _options as o

__all__ = ["train"]


def train(
    ctx: typer.Context,
    data: o.DataOpt = None,
    model: o.ModelOpt = "dhunet",
    norm: o.NormOpt = None,
    pretrained: o.PretrainedOpt = None,
    epochs: Annotated[int, typer.Option(help="Training epochs.", rich_help_panel=o.OPTIMISER)] = 150,
    batch_size: o.BatchSize = 24,
    lr: o.LrOpt = 0.01,
    augment: Annotated[bool, typer.Option(help="Flips, rotation and HSV jitter.", rich_help_panel=o.DATA)] = True,
    test_fraction: Annotated[float, typer.Option(help="Held-out fraction of slides.", rich_help_panel=o.DATA)] = 0.3,
    folds: Annotated[
        int, typer.Option(help="k-fold cross-validation by slide (0: one split).", rich_help_panel=o.DATA)
    ] = 0,
    fold: Annotated[int, typer.Option(help="Which fold to run.", rich_help_panel=o.DATA)] = 0,
    seed: o.SeedOpt = None,
    workers: o.WorkersOpt = 0,
    device: o.DeviceOpt = "auto",
    max_steps_per_epoch: Annotated[
        int | None, typer.Option(help="Cap steps per epoch (quick runs).", rich_help_panel=o.OPTIMISER)
    ] = None,
    img_size: o.ImgSizeOpt = None,
    runs: o.RunsOpt = Path("runs"),
    config: o.ConfigOpt = None,
    resume: o.ResumeOpt = None,
) -> None:
    """Train one model on tiles (default ./tiles), evaluating on held-out slides after each epoch."""
    from wsiseg.cli._console import console, given, make_progress, merged_model_args
    from wsiseg.config import load_toml
    from wsiseg.train.trainer import TrainConfig, load_run_config, run_training

    if resume is not None:
        cfg = load_run_config(resume)
    else:
        base = load_toml(config) if config else {}
        flags = {
            "data": tuple(str(p) for p in data) if data else base.get("data", ("tiles",)), "model": model,
            "pretrained": pretrained, "epochs": epochs, "batch_size": batch_size,
            "lr": lr, "augment": augment, "test_fraction": test_fraction, "folds": folds, "fold": fold,
            "seed": seed, "workers": workers, "device": device, "max_steps_per_epoch": max_steps_per_epoch,
        }  # fmt: skip
        explicit = {k: v for k, v in flags.items() if given(ctx, k)}
        cfg = TrainConfig.from_dict({**base, **explicit, "model_args": merged_model_args(base, norm, img_size)})
    with make_progress("img") as bar:
        task = bar.add_task(f"train {cfg.model}", total=cfg.epochs, rate="")

        def on_epoch(row: dict) -> None:  # type: ignore[type-arg]
            bar.advance(task)
            console.print(
                f"epoch {row['epoch']:>3}  loss {row['train_loss']:.4f}  "
                f"test Dice {row['test_dice']:.4f}  Jaccard {row['test_jaccard']:.4f}  "
                f"Acc {row['test_acc']:.4f}  {row['images_per_s']:.1f} img/s",
                highlight=False,
            )

        result = run_training(cfg, runs_root=runs, run_dir=resume, resume=resume is not None, on_epoch=on_epoch)
    console.print(f"[green]done:[/] {result.run_dir}  best held-out Dice {result.best_dice:.4f}")
    console.print(f"final checkpoint: {result.run_dir / 'checkpoints' / 'final'}")
