"""``wsiseg fed-train``: federated training with client-level differential privacy, in one process."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["fed_train"]


def fed_train(  # noqa: PLR0913
    ctx: typer.Context,
    data: Annotated[list[Path] | None, typer.Option("--data", help="Tile dataset(s), pooled, split by slide.")] = None,
    client_dirs: Annotated[
        list[Path] | None, typer.Option("--client-dirs", help="One tile dataset per site (instead of --clients).")
    ] = None,
    clients: Annotated[int, typer.Option(help="Number of clients when splitting one dataset by slide.")] = 5,
    partition: Annotated[str, typer.Option(help="iid, dirichlet or by-site.")] = "iid",
    alpha: Annotated[float, typer.Option(help="Dirichlet concentration (smaller: more skewed).")] = 0.5,
    rounds: Annotated[int, typer.Option(help="Server rounds (paper: 150).")] = 150,
    local_epochs: Annotated[int, typer.Option(help="Local epochs per round.")] = 1,
    local_steps: Annotated[int | None, typer.Option(help="Local SGD steps per round (overrides epochs).")] = None,
    fraction: Annotated[float, typer.Option(help="Poisson client-sampling rate per round.")] = 1.0,
    model: Annotated[str, typer.Option(help="Model name (see `wsiseg models`).")] = "dhunet",
    norm: Annotated[
        str | None, typer.Option(help="batchnorm or groupnorm (default: groupnorm with DP, batchnorm without).")
    ] = None,
    img_size: Annotated[int | None, typer.Option(help="Model input size if the model needs it.")] = None,
    pretrained: Annotated[str | None, typer.Option(help="ImageNet weights: a local file/folder.")] = None,
    batch_size: Annotated[int, typer.Option(help="Local batch size.")] = 24,
    lr: Annotated[float, typer.Option(help="Base learning rate (poly decay over all rounds).")] = 0.01,
    dp: Annotated[
        str,
        typer.Option(
            help=(
                "none; central: the server clips and adds noise (epsilon for zero-out with the public roster); "
                "local: clients clip and noise before upload (epsilon replace-one, against the server)."
            )
        ),
    ] = "central",
    sigma: Annotated[
        float | None,
        typer.Option("--sigma", "--noise-multiplier", help="Noise multiplier z (default 1.0, or calibrated)."),
    ] = None,
    clip: Annotated[float, typer.Option(help="Clip norm C of each client update.")] = 0.5,
    clip_scope: Annotated[str, typer.Option(help="model (whole update) or layer (per tensor).")] = "model",
    delta: Annotated[float, typer.Option(help="Delta of the (epsilon, delta) guarantee.")] = 1e-5,
    target_epsilon: Annotated[
        float | None, typer.Option(help="Calibrate sigma to this epsilon and stop before exceeding it.")
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(help="Seed initialisation, data split and order (never DP noise or client sampling)."),
    ] = None,
    noise_seed: Annotated[
        int | None,
        typer.Option(help="Seed DP noise and client sampling too: reproductions only (no amplification claimed)."),
    ] = None,
    eval_every: Annotated[int, typer.Option(help="Evaluate the global model every N rounds.")] = 1,
    workers: Annotated[int, typer.Option(help="DataLoader workers.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    runs: Annotated[Path, typer.Option(help="Folder for run folders.")] = Path("runs"),
    config: Annotated[Path | None, typer.Option(help="TOML file with any of these settings.")] = None,
    resume: Annotated[Path | None, typer.Option(help="Run folder to continue after an interruption.")] = None,
    dry_run: Annotated[bool, typer.Option(help="Print the privacy plan and exit without training.")] = False,
) -> None:
    """Federated DP training (FedAvg, clip to C, Gaussian noise N(0, sigma^2 C^2)) over sites or slide splits."""
    from wsiseg.cli._console import console, given, merged_model_args
    from wsiseg.cli._privacy import print_plan
    from wsiseg.config import load_toml
    from wsiseg.federated.config import FedConfig
    from wsiseg.federated.rounds import run_federated

    if resume is not None:
        cfg = FedConfig.from_dict({k: v for k, v in load_toml(resume / "config.toml").items()
                                   if k != "resolved_sigma"})  # fmt: skip
    else:
        base = load_toml(config) if config else {}
        flags = {
            "data": tuple(str(p) for p in data or ()), "client_dirs": tuple(str(p) for p in client_dirs or ()),
            "clients": clients, "partition": partition, "alpha": alpha, "rounds": rounds,
            "local_epochs": local_epochs, "local_steps": local_steps, "fraction": fraction, "model": model,
            "pretrained": pretrained, "batch_size": batch_size, "lr": lr, "dp": dp, "sigma": sigma, "clip": clip,
            "clip_scope": clip_scope, "delta": delta, "target_epsilon": target_epsilon, "seed": seed,
            "noise_seed": noise_seed,
            "eval_every": eval_every, "workers": workers, "device": device,
        }  # fmt: skip
        explicit = {k: v for k, v in flags.items() if given(ctx, k)}
        cfg = FedConfig.from_dict({**base, **explicit, "model_args": merged_model_args(base, norm, img_size)})
    if dry_run:
        print_plan(cfg)
        return
    print_plan(cfg, brief=True)
    result = run_federated(cfg, runs_root=runs, resume_dir=resume, on_round=_printer(cfg))
    _finish(result, cfg)
    console.print(f"final checkpoint: {result.run_dir / 'checkpoints' / 'final'}", highlight=False)


def _printer(cfg: Any) -> Any:
    from wsiseg.cli._console import console

    def show(rep: Any) -> None:
        dice = f"{rep.dice:.4f}" if rep.dice is not None else "-"
        line = f"round {rep.round:>3}/{cfg.rounds}  clients {len(rep.clients)}  loss {rep.loss:.4f}  Dice {dice}"
        if cfg.dp != "none":
            nts = rep.stats.get("noise_to_signal")
            line += (
                f"  | sigma {rep.stats.get('noise_std_sum', 0) / cfg.clip:.3g} C {cfg.clip} "
                f"std sum {rep.stats.get('noise_std_sum', float('nan')):.3g} "
                f"mean {rep.stats.get('noise_std_mean', float('nan')):.3g} "
                f"noise/signal {nts:.3g}  epsilon {rep.epsilon:.4g}"
            )
        console.print(line + f"  ({rep.seconds:.1f} s)", highlight=False)

    return show


def _finish(result: Any, cfg: Any) -> None:
    from wsiseg.cli._console import console
    from wsiseg.privacy.accounting import meaningful_warning

    if result.stopped_early:
        console.print(f"[yellow]{result.stopped_early}[/]", highlight=False)
    dice = result.final_metrics.get("paper", {}).get("dice") if result.final_metrics else None
    dice_txt = f"{dice:.4f}" if isinstance(dice, float) else "-"
    if result.epsilon is None:
        console.print(f"[green]done:[/] {result.run_dir}  rounds {result.rounds_done}  held-out Dice {dice_txt}  "
                      "no differential privacy", highlight=False)  # fmt: skip
        return
    console.print(f"[green]done:[/] {result.run_dir}  rounds {result.rounds_done}  held-out Dice {dice_txt}  "
                  f"epsilon {result.epsilon:.4g} at delta {cfg.delta:g} (client level)", highlight=False)  # fmt: skip
    warning = meaningful_warning(result.epsilon)
    if warning:
        console.print(f"[bold red]WARNING:[/] {warning}", highlight=False)
