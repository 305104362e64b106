"""``wsiseg audit invert``: what a curious server recovers from one site's update, under each protection."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from wsiseg.cli import _options as o
from wsiseg.cli._console import console

__all__ = ["QUICK_ITERATIONS", "audit_invert"]

#: Attack iterations of ``--quick`` (one start): enough for dhunet_tiny at 32 px to beat both baselines.
QUICK_ITERATIONS = 400


def audit_invert(
    run: Annotated[Path | None, typer.Argument(help="A train / fed-train run folder (default: a fresh model).")] = None,
    tiles: Annotated[Path | None, typer.Option(help="Tiles folder of the site (default: a generated cohort).")] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder (default: RUN/audit, or audit/ here).")] = None,
    model: Annotated[str, typer.Option(help="Model without a run folder (GroupNorm decoder).")] = "dhunet_tiny",
    tile_size: Annotated[int, typer.Option(help="Tile size of the generated cohort.")] = 32,
    batch: Annotated[int | None, typer.Option(help="Batch of the second scenario (default: the run's).")] = None,
    local_steps: Annotated[int | None, typer.Option(help="Local steps of the second scenario (default: 2).")] = None,
    iterations: Annotated[int, typer.Option(help="Attack iterations per restart.")] = 600,
    restarts: Annotated[int, typer.Option(help="Random starts per attack.")] = 2,
    tv: Annotated[float, typer.Option(help="Total-variation weight of the attack.")] = 1.0,
    attack_lr: Annotated[float, typer.Option(help="Adam step size of the attack (pixels in [0, 1]).")] = 0.05,
    labels: Annotated[str, typer.Option(help="known (worst case) or unknown label masks.")] = "known",
    sigma: Annotated[list[float] | None, typer.Option(help="Client-level noise levels (default 0.05, 1).")] = None,
    dpsgd_epsilon: Annotated[float, typer.Option(help="Epsilon of the DP-SGD condition.")] = 8.0,
    dpsgd_rate: Annotated[float, typer.Option(help="Poisson rate q of the DP-SGD plan.")] = 0.01,
    dpsgd_steps: Annotated[int, typer.Option(help="Steps of the DP-SGD plan.")] = 1000,
    quick: Annotated[bool, typer.Option(help="Minutes on 2 CPUs: worst case only, fewer iterations.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the tile choice and the attack's starts.")] = 0,
    noise_seed: Annotated[int | None, typer.Option(help="Seed the site's noise (logged); default OS entropy.")] = None,
    device: o.DeviceOpt = "auto",
) -> None:
    """Invert one site's update (Inverting Gradients) under each protection and score it against baselines.

    Protections: the raw update; clipped to C (what a curious server sees in central mode); clip plus the
    site's own Gaussian noise (local DP) at each --sigma; DP-SGD at --dpsgd-epsilon. Scenarios: one local step
    on one tile (FedSGD, the worst case), then --local-steps on --batch tiles. Each reconstruction gets PSNR
    and SSIM beside the mean-colour image and a random other tile. Verdicts are given only when the
    unprotected attack beats both baselines; the accountant's epsilon is shown beside every protection.

    Without a run folder the attacked model is a fresh dhunet_tiny (the product's family, without stochastic
    depth). A GroupNorm right after the first conv, as in unet_tiny, makes the update blind to each image's
    mean colour and contrast, so no inversion of it can beat the mean-colour baseline; DHUnet's patch
    embeddings are followed by LayerNorm over channels, which keeps the colour in the update.
    """
    from dataclasses import replace

    import numpy as np
    from rich.markup import escape
    from rich.table import Table

    from wsiseg.audit.attack import PSNR_MARGIN_DB, SSIM_MARGIN, AttackRow, Scenario, run_attacks
    from wsiseg.audit.inputs import conditions_for, default_work, generated_tiles, load_audit_model, pick_targets
    from wsiseg.audit.invert import AttackConfig
    from wsiseg.audit.release import to_pixels
    from wsiseg.audit.report import epsilon_text, write_invert
    from wsiseg.config import resolve_device
    from wsiseg.errors import ConfigError
    from wsiseg.train.loop import make_loss

    if labels not in ("known", "unknown"):
        msg = f"--labels must be known or unknown, got {labels!r}"
        raise ConfigError(msg)
    if iterations < 1 or restarts < 1 or (batch is not None and batch < 1) or attack_lr <= 0 or tv < 0:
        msg = "--iterations, --restarts and --batch must be >= 1, --attack-lr > 0 and --tv >= 0"
        raise ConfigError(msg)
    am = load_audit_model(run, model_name=model, tile_size=tile_size, seed=seed)
    size = am.tile_size or tile_size
    if tiles is None:
        if run is not None:
            msg = f"{run}: pass --tiles with the run's tiles (the attack needs the site's own tiles)"
            raise ConfigError(msg)
        tiles = generated_tiles(default_work(), size, seed)
    scen_batch = batch or min(am.batch, 4)
    steps = local_steps or max(2, am.recipe.steps)
    scenarios = [Scenario("worst case (FedSGD)", 1, replace(am.recipe, steps=1))]
    if not quick:
        scenarios.append(Scenario("the run's training", scen_batch, replace(am.recipe, steps=steps)))
    targets = pick_targets(tiles, max(s.batch for s in scenarios), tile_size=am.tile_size,
                           num_classes=am.num_classes, seed=seed)  # fmt: skip
    conds = conditions_for(am, sigmas=tuple(sigma or (0.05, 1.0)), dpsgd_epsilon=dpsgd_epsilon,
                           dpsgd_rate=dpsgd_rate, dpsgd_steps=dpsgd_steps)  # fmt: skip
    attack = AttackConfig(iterations=min(iterations, QUICK_ITERATIONS) if quick else iterations,
                          restarts=1 if quick else restarts, lr=attack_lr, tv=tv, labels_known=labels == "known",
                          seed=seed)  # fmt: skip
    out = out or ((run / "audit") if run is not None else Path("audit"))
    noise_rng = np.random.default_rng(noise_seed)
    dev = resolve_device(device)
    console.print(f"attacking {len(conds)} protection(s) x {len(scenarios)} scenario(s) of {escape(am.source)} on "
                  f"{dev}; "
                  f"noise from {'seed ' + str(noise_seed) if noise_seed is not None else 'OS entropy'}",
                  highlight=False)  # fmt: skip
    am.model.to(dev).train()
    loss_fn = make_loss(am.model, am.num_classes)
    to_dev = [t.to(dev) for t in (targets.images, targets.masks, targets.mean_colour, targets.random_other)]

    def done(r: AttackRow) -> None:
        console.print(f"  {escape(r.scenario)} | {escape(r.condition)}: PSNR {r.psnr:.2f} dB, SSIM {r.ssim:.3f}",
                      highlight=False)  # fmt: skip

    rows = run_attacks(am.model, loss_fn, (to_dev[0], to_dev[1]), (to_dev[2], to_dev[3]), scenarios, conds, attack,
                       noise_rng, on_done=done)  # fmt: skip
    title = (f"Gradient inversion of {am.source}, tiles {tiles} ({size} px), labels {labels}, "
             f"{attack.iterations} iterations x {attack.restarts} start(s)")  # fmt: skip
    meta = {"title": title, "model": am.source, "tiles": str(tiles), "targets": targets.names, "labels": labels,
            "attack": attack.__dict__, "noise_source": "seed" if noise_seed is not None else "os-entropy",
            "noise_seed": noise_seed, "psnr_margin_db": PSNR_MARGIN_DB, "ssim_margin": SSIM_MARGIN}  # fmt: skip
    paths = write_invert(out, rows, to_pixels(targets.images), meta)
    table = Table(title="audit invert: what the server's attack recovered (higher = more recovered)")
    for col in ("scenario", "protection", "PSNR dB", "SSIM", "mean-colour PSNR / SSIM", "random-tile PSNR / SSIM",
                "noise / signal", "accountant epsilon", "verdict"):  # fmt: skip
        table.add_column(col)
    for r in rows:
        table.add_row(escape(r.scenario), escape(r.condition), f"{r.psnr:.2f}", f"{r.ssim:.3f}",
                      f"{r.baseline_mean_psnr:.2f} / {r.baseline_mean_ssim:.3f}",
                      f"{r.baseline_random_psnr:.2f} / {r.baseline_random_ssim:.3f}", f"{r.noise_to_signal:.3g}",
                      escape(epsilon_text(r.epsilon)), escape(r.verdict))  # fmt: skip
    console.print(table)
    console.print("a protection that stops this attack is not shown to protect against every attack; the accountant's "
                  "epsilon is the guarantee", highlight=False)  # fmt: skip
    console.print(f"wrote {', '.join(escape(str(p)) for p in paths)}", highlight=False)
