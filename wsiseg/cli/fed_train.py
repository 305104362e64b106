"""``wsiseg fed-train``: federated training with client-level differential privacy, in one process."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from wsiseg.cli import _options as o
from wsiseg.federated.modes import DEFAULT_DP_MODE

__all__ = ["fed_train"]


def fed_train(
    ctx: typer.Context,
    data: o.DataOpt = None,
    client_dirs: Annotated[
        list[Path] | None,
        typer.Option("--client-dirs", help="One tile dataset per site (instead of --clients).", rich_help_panel=o.DATA),
    ] = None,
    clients: Annotated[
        int, typer.Option(help="Number of clients when splitting one dataset by slide.", rich_help_panel=o.FEDERATION)
    ] = 5,
    partition: o.PartitionOpt = "iid",
    test_fraction: Annotated[
        float,
        typer.Option(
            help="Held-out fraction of each client's slides (at least one slide each; 0 with --heldout).",
            rich_help_panel=o.DATA,
        ),
    ] = 0.3,
    heldout: o.HeldoutOpt = None,
    alpha: Annotated[
        float, typer.Option(help="Dirichlet concentration (smaller: more skewed).", rich_help_panel=o.FEDERATION)
    ] = 0.5,
    rounds: o.RoundsOpt = 150,
    local_epochs: o.LocalEpochsOpt = 1,
    local_steps: o.LocalStepsOpt = None,
    fraction: o.FractionOpt = 1.0,
    model: o.ModelOpt = "dhunet",
    norm: o.NormOpt = None,
    img_size: o.ImgSizeOpt = None,
    pretrained: o.PretrainedOpt = None,
    batch_size: o.BatchSize = 24,
    lr: o.LrOpt = 0.01,
    dp: o.DpOpt = DEFAULT_DP_MODE,
    sigma: o.SigmaOpt = None,
    clip: o.ClipOpt = 0.5,
    clip_scope: o.ClipScopeOpt = "model",
    delta: o.DeltaOpt = 1e-5,
    target_epsilon: o.TargetEpsilonOpt = None,
    privacy_unit: o.PrivacyUnitOpt = "tile",
    sample_rate: o.SampleRateOpt = None,
    physical_batch: o.PhysicalBatchOpt = 8,
    tiles_per_unit: o.TilesPerUnitOpt = 8,
    patients: o.PatientsOpt = None,
    seed: o.SeedOpt = None,
    noise_seed: o.NoiseSeedOpt = None,
    secure_aggregation: o.SecureAggOpt = False,
    time_budget: o.RoundBudgetOpt = None,
    min_clients: Annotated[
        int,
        typer.Option(
            help="--dp distributed: noise shares calibrated to this many sites (0: all).", rich_help_panel=o.PRIVACY
        ),
    ] = 0,
    eval_every: Annotated[
        int, typer.Option(help="Evaluate the global model every N rounds.", rich_help_panel=o.RUN)
    ] = 1,
    workers: o.WorkersOpt = 0,
    device: o.DeviceOpt = "auto",
    runs: o.RunsOpt = Path("runs"),
    config: o.ConfigOpt = None,
    resume: o.ResumeOpt = None,
    dry_run: o.DryRunOpt = False,
) -> None:
    """Federated DP training (FedAvg, clip to C, Gaussian noise N(0, sigma^2 C^2)) over sites or slide splits.

    --dp sample runs DP-SGD at every site instead (per-unit clipping and noise at every local step), the mode
    whose epsilon means something for a handful of hospitals.
    """
    from wsiseg.cli._console import console, given, merged_model_args
    from wsiseg.cli._options import resolve_heldout
    from wsiseg.cli._privacy import print_plan
    from wsiseg.config import load_toml
    from wsiseg.errors import ConfigError
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
            "privacy_unit": privacy_unit, "sample_rate": sample_rate, "physical_batch": physical_batch,
            "tiles_per_unit": tiles_per_unit, "patients": str(patients) if patients else None,
            "noise_seed": noise_seed, "test_fraction": test_fraction, "heldout": resolve_heldout(heldout),
            "eval_every": eval_every, "workers": workers, "device": device,
            "secure_aggregation": secure_aggregation, "min_clients": min_clients, "time_budget": time_budget,
        }  # fmt: skip
        explicit = {k: v for k, v in flags.items() if given(ctx, k)}
        if heldout and given(ctx, "test_fraction") and test_fraction != 0:
            msg = "--heldout fixes the held-out slides; drop --test-fraction or pass --test-fraction 0"
            raise ConfigError(msg)
        cfg = FedConfig.from_dict({**base, **explicit, "model_args": merged_model_args(base, norm, img_size)})
    if dry_run:
        print_plan(cfg, sites=_site_plans(cfg))
        return
    print_plan(cfg, brief=True, sites=_site_plans(cfg))
    result = run_federated(cfg, runs_root=runs, resume_dir=resume, on_round=_printer(cfg))
    _finish(result, cfg)
    console.print(f"final checkpoint: {result.run_dir / 'checkpoints' / 'final'}", highlight=False, markup=False)


#: Where fed-train's baselines come from (printed under the score table).
POOLED_NOTE = (
    "held-out slides of all sites; baselines fitted on the training slides of all sites pooled, which only "
    "this simulation can do (yardsticks, not a federated result)"
)


def _site_plans(cfg: Any) -> list[tuple[str, int, float, int]] | None:
    """Sample mode: each client's units, q and steps a round, from the data (None in other modes)."""
    if cfg.dp != "sample":
        return None
    from wsiseg.federated.rounds import config_clients, local_training, site_plans

    return site_plans(cfg, config_clients(cfg), local_training(cfg, "cpu"))


def _printer(cfg: Any) -> Any:
    from wsiseg.cli._console import console

    def show(rec: Any) -> None:
        dice = f"{rec.dice:.4f}" if rec.dice is not None else "-"
        loss = "-" if rec.loss != rec.loss else f"{rec.loss:.4f}"  # NaN under DP: the loss stays at the sites
        line = f"round {rec.round:>3}/{cfg.rounds}  clients {len(rec.results)}  loss {loss}  Dice {dice}"
        st = rec.stats
        if cfg.private and st.noise_std_sum is not None:
            line += (
                f"  | sigma {st.noise_std_sum / cfg.clip:.3g} C {cfg.clip} std sum {st.noise_std_sum:.3g} "
                f"mean {st.noise_std_mean:.3g} noise/signal {st.noise_to_signal:.3g}  epsilon {rec.epsilon:.4g}"
            )
        console.print(line + f"  ({rec.seconds:.1f} s)", highlight=False)

    return show


def _finish(result: Any, cfg: Any) -> None:
    from wsiseg.cli._console import console
    from wsiseg.cli._scores import show_scores
    from wsiseg.privacy.accounting import meaningful_warning

    if result.final_report is not None:
        show_scores(result.final_report, result.baselines, note=POOLED_NOTE)
    if result.stopped_early:
        console.print(f"[yellow]{escape(result.stopped_early)}[/]", highlight=False)
    final = result.final_metrics or {}
    mean, paper = final.get("mean_dice"), final.get("paper", {}).get("dice")
    dice_txt = f"{mean:.4f}" if isinstance(mean, float) else "-"
    dice_txt += f" (paper Dice {paper:.4f})" if isinstance(paper, float) else ""
    if result.epsilon is None:
        console.print(f"[green]done:[/] {escape(str(result.run_dir))}  rounds {result.rounds_done}  held-out mean Dice "
                      f"{dice_txt}  "
                      "no differential privacy", highlight=False)  # fmt: skip
        return
    console.print(f"[green]done:[/] {escape(str(result.run_dir))}  rounds {result.rounds_done}  held-out mean Dice "
                  f"{dice_txt}  "
                  f"epsilon {result.epsilon:.4g} at delta {cfg.delta:g} ({_level(cfg)})", highlight=False)  # fmt: skip
    warning = meaningful_warning(result.epsilon)
    if warning:
        console.print(f"[bold red]WARNING:[/] {warning}", highlight=False)


def _level(cfg: Any) -> str:
    if cfg.dp == "sample":
        return f"per {cfg.privacy_unit}, worst site"
    return "client level"
