"""``wsiseg train``: centralised training (no federation), the paper's first Table-I column."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

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
    class_weights: Annotated[
        str,
        typer.Option(
            help="Cross-entropy class weights: none (as the paper), balanced (median frequency of the training "
            "pixels; for rare classes such as normal tissue in patch data) or a list, background first: 1,1,1,4.",
            rich_help_panel=o.OPTIMISER,
        ),
    ] = "none",
    test_fraction: Annotated[
        float, typer.Option(help="Held-out fraction of slides (0 with --heldout).", rich_help_panel=o.DATA)
    ] = 0.3,
    heldout: o.HeldoutOpt = None,
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
    time_budget: o.TimeBudgetOpt = None,
    patience: Annotated[
        int,
        typer.Option(
            help="Stop after N epochs without a better held-out mean Dice (0: never).", rich_help_panel=o.OPTIMISER
        ),
    ] = 0,
    log_every: o.LogEveryOpt = 0,
    img_size: o.ImgSizeOpt = None,
    runs: o.RunsOpt = Path("runs"),
    config: o.ConfigOpt = None,
    resume: o.ResumeOpt = None,
) -> None:
    """Train one model on tiles (default ./tiles), evaluating on held-out slides after each epoch."""
    from wsiseg.cli._console import console, given, make_progress, merged_model_args
    from wsiseg.cli._options import resolve_heldout
    from wsiseg.cli._scores import show_scores
    from wsiseg.config import load_toml
    from wsiseg.errors import ConfigError
    from wsiseg.train.trainer import TrainConfig, load_run_config, run_training

    if resume is not None:
        cfg = load_run_config(resume)
    else:
        base = load_toml(config) if config else {}
        flags = {
            "data": tuple(str(p) for p in data) if data else base.get("data", ("tiles",)), "model": model,
            "pretrained": pretrained, "epochs": epochs, "batch_size": batch_size, "class_weights": class_weights,
            "lr": lr, "augment": augment, "test_fraction": test_fraction, "folds": folds, "fold": fold,
            "seed": seed, "workers": workers, "device": device, "max_steps_per_epoch": max_steps_per_epoch,
            "heldout": resolve_heldout(heldout), "time_budget": time_budget, "patience": patience,
        }  # fmt: skip
        explicit = {k: v for k, v in flags.items() if given(ctx, k)}
        if heldout and given(ctx, "test_fraction") and test_fraction != 0:
            msg = "--heldout fixes the held-out slides; drop --test-fraction or pass --test-fraction 0"
            raise ConfigError(msg)
        cfg = TrainConfig.from_dict({**base, **explicit, "model_args": merged_model_args(base, norm, img_size)})
    with make_progress("img") as bar:
        task = bar.add_task(f"train {cfg.model}", total=cfg.epochs, rate="")

        def on_epoch(row: dict) -> None:  # type: ignore[type-arg]
            bar.advance(task)
            console.print(
                f"epoch {row['epoch']:>3}  loss {row['train_loss']:.4f}  "
                f"held-out mean Dice {row['test_mean_dice']:.4f}  IoU {row['test_mean_iou']:.4f}  "
                f"(paper Dice {row['test_dice']:.4f})  {row['images_per_s']:.1f} img/s",
                highlight=False,
            )

        def on_step(step: int, loss: float, images: int) -> None:
            del images
            if log_every and step % log_every == 0:
                console.print(f"step {step:>6}  loss {loss:.4f}", highlight=False)

        result = run_training(cfg, runs_root=runs, run_dir=resume, resume=resume is not None, on_epoch=on_epoch,
                              on_step=on_step)  # fmt: skip
    console.print(f"[green]done:[/] {escape(str(result.run_dir))}  ({escape(result.stop_reason)} after "
                  f"{result.epochs_done} epochs)", highlight=False)  # fmt: skip
    if result.final_report is not None:
        show_scores(
            result.final_report, result.baselines, note="held-out slides; baselines fitted on the training slides"
        )
    console.print(f"final checkpoint: {result.run_dir / 'checkpoints' / 'final'}", highlight=False, markup=False)
