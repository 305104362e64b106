"""``wsiseg audit canary``: an empirical lower bound on epsilon from one training run with canaries."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from wsiseg.cli._console import console

__all__ = ["audit_canary"]


def audit_canary(
    run: Annotated[Path | None, typer.Argument(help="A fed-train run folder whose mechanism to audit.")] = None,
    dp: Annotated[str, typer.Option(help="Without a run: central, local or sample.")] = "central",
    sigma: Annotated[float | None, typer.Option(help="Noise multiplier (default: the run's, else 1.0).")] = None,
    clip: Annotated[float | None, typer.Option(help="Clip norm C (default: the run's, else 1.0).")] = None,
    rounds: Annotated[int, typer.Option(help="Rounds of the instrumented training.")] = 5,
    canaries: Annotated[int, typer.Option(help="Canaries m, each included with probability 1/2.")] = 200,
    guesses: Annotated[int | None, typer.Option(help="Guesses k each side (default m/8).")] = None,
    confidence: Annotated[float, typer.Option(help="Confidence of the lower bound.")] = 0.95,
    sample_rate: Annotated[float, typer.Option(help="Sample mode: Poisson rate q of units per step.")] = 0.1,
    steps_per_round: Annotated[int, typer.Option(help="Sample mode: DP-SGD steps per round.")] = 2,
    sites: Annotated[int, typer.Option(help="Real sites beside the canaries (client-level modes).")] = 2,
    tiles: Annotated[Path | None, typer.Option(help="Tiles of the real sites (default: a generated cohort).")] = None,
    model: Annotated[str, typer.Option(help="Model without a run folder (GroupNorm).")] = "unet_tiny",
    tile_size: Annotated[int, typer.Option(help="Tile size of the generated cohort.")] = 32,
    out: Annotated[Path | None, typer.Option(help="Output folder (default: RUN/audit, or audit/ here).")] = None,
    quick: Annotated[bool, typer.Option(help="Minutes on 2 CPUs: 3 rounds.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the membership bits and directions.")] = 0,
    noise_seed: Annotated[int | None, typer.Option(help="Seed of the mechanism's noise (default OS entropy).")] = None,
) -> None:
    """Train once with canaries under the mechanism and bound its epsilon from below.

    Client-level DP (central, local): canary sites send a random direction (or nothing) through the real
    aggregation and noise. Sample-level DP-SGD: canary gradients are sampled, clipped and noised with the real
    tiles. The bound (Steinke, Nasr and Jagielski 2023) holds with the stated confidence; a bound above the
    accountant's epsilon means the mechanism does not behave as accounted.
    """
    from rich.markup import escape
    from rich.table import Table

    from wsiseg.audit.canary import CanaryConfig, run_canary_audit
    from wsiseg.audit.inputs import default_work, generated_tiles, load_audit_model, pick_targets
    from wsiseg.audit.report import write_canary
    from wsiseg.errors import ConfigError
    from wsiseg.train.loop import make_loss

    am = load_audit_model(run, model_name=model, tile_size=tile_size, seed=seed)
    mode = am.dp if run is not None else dp
    cfg = CanaryConfig(mode=mode, clip=clip if clip is not None else am.clip,
                       sigma=sigma if sigma is not None else (am.sigma or 1.0), rounds=3 if quick else rounds,
                       canaries=canaries, guesses=guesses, confidence=confidence, sample_rate=sample_rate,
                       steps_per_round=steps_per_round, seed=seed, noise_seed=noise_seed)  # fmt: skip
    if sites < 1:
        msg = f"--sites must be >= 1, got {sites}"
        raise ConfigError(msg)
    if tiles is None:
        tiles = generated_tiles(default_work(), am.tile_size or tile_size, seed)
    per_site = 4 if mode != "sample" else 16
    t = pick_targets(tiles, per_site * (sites if mode != "sample" else 1), tile_size=am.tile_size,
                     num_classes=am.num_classes, seed=seed)  # fmt: skip
    data = [(t.images[i * per_site : (i + 1) * per_site], t.masks[i * per_site : (i + 1) * per_site])
            for i in range(sites if mode != "sample" else 1)]  # fmt: skip
    out = out or ((run / "audit") if run is not None else Path("audit"))
    source = f"seed {noise_seed}" if noise_seed is not None else "OS entropy"
    console.print(f"auditing --dp {mode}: sigma {cfg.sigma:g}, C {cfg.clip:g}, {cfg.rounds} rounds, {cfg.canaries} "
                  f"canaries, {cfg.k} guesses each side; noise from {source}", highlight=False)  # fmt: skip
    res = run_canary_audit(cfg, am.model, make_loss(am.model, am.num_classes), data, am.recipe,
                           on_round=lambda r: console.print(f"  round {r}/{cfg.rounds}", highlight=False))  # fmt: skip
    summary = {**res.summary(), "sigma": cfg.sigma, "clip": cfg.clip, "rounds": cfg.rounds, "model": am.source,
               "noise_source": source, "noise_seed": noise_seed}  # fmt: skip
    paths = write_canary(out, summary, res.scores, res.included)
    table = Table(title=f"audit canary: --dp {mode}")
    for col in ("accountant epsilon (PLD / RDP)", f"empirical lower bound ({res.confidence:.0%})", "guesses",
                "correct", "relation"):  # fmt: skip
        table.add_column(col)
    table.add_row(f"{res.claimed_epsilon:.3g} / {res.claimed_epsilon_rdp:.3g}", f"{res.lower_bound:.3g}",
                  str(res.guesses), str(res.correct), escape(res.relation))  # fmt: skip
    console.print(table)
    if res.exceeds_claim:
        console.print("[bold red]the lower bound is above the accountant's epsilon: the mechanism does not add "
                      "the noise it is accounted for[/]", highlight=False)  # fmt: skip
    else:
        most = _ceiling(cfg.canaries, 2 * cfg.k, cfg.delta, cfg.confidence)
        console.print(f"the lower bound is at or below the accountant's epsilon (an audit with {cfg.canaries} "
                      f"canaries cannot show more than about {most:.2g})", highlight=False)  # fmt: skip
    console.print(f"wrote {', '.join(escape(str(p)) for p in paths)}", highlight=False)


def _ceiling(m: int, r: int, delta: float, confidence: float) -> float:
    from wsiseg.audit.onerun import epsilon_lower_bound

    return epsilon_lower_bound(m, r, r, delta=delta, confidence=confidence)
