"""Command-line options shared by the commands: one declaration each, so they cannot drift apart.

``train``, ``fed-train``, ``fed-server``, ``fed-client``, ``predict`` and ``evaluate`` use these aliases, so
names, defaults, help and choices are the same everywhere.

Choices are typed (``click.Choice``), so ``--help`` lists them and the parser rejects anything else with the
allowed values (exit 2). Options are grouped in help panels. Only light modules are imported here, so
``wsiseg --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import click
import typer

from wsiseg.federated.modes import DEFAULT_DP_MODE, DP_MODES, PARTITIONS, PRIVACY_UNITS

__all__ = [
    "DATA",
    "FEDERATION",
    "MODEL",
    "OPTIMISER",
    "PRIVACY",
    "RUN",
    "BatchSize",
    "CheckpointOpt",
    "ClipOpt",
    "ClipScopeOpt",
    "ConfigOpt",
    "DataOpt",
    "DeltaOpt",
    "DeprecatedModelPath",
    "DeviceOpt",
    "DpOpt",
    "DryRunOpt",
    "FractionOpt",
    "HeldoutOpt",
    "ImgSizeOpt",
    "LocalEpochsOpt",
    "LocalStepsOpt",
    "LogEveryOpt",
    "LrOpt",
    "ModelOpt",
    "NoiseSeedOpt",
    "NormOpt",
    "OverrideMppOpt",
    "PartitionOpt",
    "PatientsOpt",
    "PhysicalBatchOpt",
    "PretrainedOpt",
    "PrivacyUnitOpt",
    "ResumeOpt",
    "RoundBudgetOpt",
    "RoundsOpt",
    "RunsOpt",
    "SampleRateOpt",
    "SecureAggOpt",
    "SeedOpt",
    "SigmaOpt",
    "SlideMppOpt",
    "TargetEpsilonOpt",
    "TilesPerUnitOpt",
    "TimeBudgetOpt",
    "WorkersOpt",
    "checkpoint_path",
    "resolve_heldout",
]

DATA, MODEL, OPTIMISER, PRIVACY, FEDERATION, RUN = "Data", "Model", "Optimiser", "Privacy", "Federation", "Run"

DEVICES = ("auto", "cpu", "cuda")
NORMS = ("batchnorm", "groupnorm")
CLIP_SCOPES = ("model", "layer")


def _choice(values: tuple[str, ...]) -> click.Choice:
    return click.Choice(list(values))


DataOpt = Annotated[
    list[Path] | None, typer.Option("--data", help="Tile dataset folder(s) (default ./tiles).", rich_help_panel=DATA)
]
ModelOpt = Annotated[str, typer.Option(help="Model name (see `wsiseg models`).", rich_help_panel=MODEL)]
NormOpt = Annotated[
    str | None,
    typer.Option(
        click_type=_choice(NORMS),
        help="Norm layers (default: groupnorm under DP, else batchnorm).",
        rich_help_panel=MODEL,
    ),
]
ImgSizeOpt = Annotated[
    int | None, typer.Option(help="Model input size (default: the tiles' size).", rich_help_panel=MODEL)
]
PretrainedOpt = Annotated[
    str | None,
    typer.Option(help="ImageNet weights: 'imagenet' (download) or a local file/folder.", rich_help_panel=MODEL),
]
BatchSize = Annotated[int, typer.Option(help="Batch size.", rich_help_panel=OPTIMISER)]
LrOpt = Annotated[float, typer.Option(help="Base learning rate (poly decay).", rich_help_panel=OPTIMISER)]
SeedOpt = Annotated[
    int | None,
    typer.Option(
        help="Seed of initialisation, data split and order (never of DP noise or client sampling).", rich_help_panel=RUN
    ),
]
DeviceOpt = Annotated[str, typer.Option(click_type=_choice(DEVICES), help="Torch device.", rich_help_panel=RUN)]
WorkersOpt = Annotated[int, typer.Option(help="DataLoader workers.", rich_help_panel=RUN)]
RunsOpt = Annotated[Path, typer.Option(help="Folder for run folders.", rich_help_panel=RUN)]
ConfigOpt = Annotated[Path | None, typer.Option(help="TOML file with any of these settings.", rich_help_panel=RUN)]
ResumeOpt = Annotated[
    Path | None, typer.Option(help="Run folder to continue after an interruption.", rich_help_panel=RUN)
]

SlideMppOpt = Annotated[
    float | None,
    typer.Option(help="Level-0 um/px for slides without mpp (a slide's own mpp wins unless --override-mpp)."),
]
OverrideMppOpt = Annotated[
    bool,
    typer.Option(help="Use --slide-mpp even where the slide records an mpp (warned; recorded in the outputs)."),
]
HeldoutOpt = Annotated[
    list[str] | None,
    typer.Option(
        help=(
            "Held-out slides, fixed: a slide id, a text file with one id a line, or a folder of slides "
            "(repeatable). Replaces the random split; write the same list for train and fed-train."
        ),
        rich_help_panel=DATA,
    ),
]
TimeBudgetOpt = Annotated[
    float | None,
    typer.Option(
        help="Wall-clock budget in seconds: stop cleanly with a final checkpoint; the LR decays to fit it.",
        rich_help_panel=RUN,
    ),
]
RoundBudgetOpt = Annotated[
    float | None,
    typer.Option(
        "--time-budget",
        help="Wall-clock budget in seconds: stop after the round that reaches it, with a final checkpoint "
        "(the per-round LR schedule is not stretched).",
        rich_help_panel=RUN,
    ),
]
LogEveryOpt = Annotated[
    int,
    typer.Option(
        help="Print a progress line every N optimizer steps (0: only per epoch or round).", rich_help_panel=RUN
    ),
]

RoundsOpt = Annotated[int, typer.Option(help="Server rounds (paper: 150).", rich_help_panel=FEDERATION)]
LocalEpochsOpt = Annotated[int, typer.Option(help="Local epochs per round.", rich_help_panel=FEDERATION)]
LocalStepsOpt = Annotated[
    int | None, typer.Option(help="Local SGD steps per round (overrides epochs).", rich_help_panel=FEDERATION)
]
FractionOpt = Annotated[float, typer.Option(help="Poisson client-sampling rate per round.", rich_help_panel=FEDERATION)]
PartitionOpt = Annotated[
    str,
    typer.Option(
        click_type=_choice(PARTITIONS), help="How one pooled dataset is split into clients.", rich_help_panel=FEDERATION
    ),
]

DpOpt = Annotated[
    str,
    typer.Option(
        click_type=_choice(DP_MODES),
        help=(
            f"DP mode (default {DEFAULT_DP_MODE}). central: the server clips and adds noise (epsilon for zero-out "
            "with the public roster); local: each site clips and noises before upload (replace-one, against "
            "the server); sample: DP-SGD at every site, protecting one tile, slide or patient (--privacy-unit) "
            "against everyone outside its site (the only mode with a meaningful epsilon for a few sites); "
            "none: plain FedAvg."
        ),
        rich_help_panel=PRIVACY,
    ),
]
SigmaOpt = Annotated[
    float | None,
    typer.Option(
        "--sigma",
        "--noise-multiplier",
        help="Noise multiplier z (default 1.0, or calibrated).",
        rich_help_panel=PRIVACY,
    ),
]
ClipOpt = Annotated[float, typer.Option(help="Clip norm C of each client update.", rich_help_panel=PRIVACY)]
ClipScopeOpt = Annotated[
    str,
    typer.Option(
        click_type=_choice(CLIP_SCOPES), help="Clip the whole update or each tensor.", rich_help_panel=PRIVACY
    ),
]
DeltaOpt = Annotated[float, typer.Option(help="Delta of the (epsilon, delta) guarantee.", rich_help_panel=PRIVACY)]
TargetEpsilonOpt = Annotated[
    float | None,
    typer.Option(help="Calibrate sigma to this epsilon and stop before exceeding it.", rich_help_panel=PRIVACY),
]
PrivacyUnitOpt = Annotated[
    str,
    typer.Option(
        click_type=_choice(PRIVACY_UNITS),
        help=(
            "--dp sample: what one guarantee protects. tile; slide (all tiles of a slide clipped together); "
            "patient (all slides of a patient, from --patients). Smaller units protect a patient only by group "
            "privacy."
        ),
        rich_help_panel=PRIVACY,
    ),
]
SampleRateOpt = Annotated[
    float | None,
    typer.Option(
        help="--dp sample: Poisson rate q of units per step (default --batch-size / units at each site).",
        rich_help_panel=PRIVACY,
    ),
]
PhysicalBatchOpt = Annotated[
    int,
    typer.Option(help="--dp sample: examples per per-example-gradient chunk (bounds memory).", rich_help_panel=PRIVACY),
]
TilesPerUnitOpt = Annotated[
    int,
    typer.Option(help="--dp sample: most tiles of one sampled slide or patient per step.", rich_help_panel=PRIVACY),
]
PatientsOpt = Annotated[
    Path | None,
    typer.Option(
        help="--privacy-unit patient: CSV with columns slide,patient covering every slide.", rich_help_panel=PRIVACY
    ),
]
NoiseSeedOpt = Annotated[
    int | None,
    typer.Option(
        help="Seed DP noise and client sampling too: reproductions only (no amplification claimed).",
        rich_help_panel=PRIVACY,
    ),
]

SecureAggOpt = Annotated[
    bool,
    typer.Option(
        "--secure-aggregation",
        help="Sum the sites' releases under SecAgg+ (implied by --dp distributed; also --dp local): the server "
        "sees only the sum.",
        rich_help_panel=PRIVACY,
    ),
]

DryRunOpt = Annotated[
    bool,
    typer.Option(
        help="Print the privacy plan and exit without training or starting anything.", rich_help_panel=PRIVACY
    ),
]

CheckpointOpt = Annotated[
    Path | None,
    typer.Option(
        "--checkpoint",
        "-m",
        help="Checkpoint (run folder, NAME, NAME.json); default: newest run.",
        rich_help_panel=MODEL,
    ),
]
DeprecatedModelPath = Annotated[
    Path | None, typer.Option("--model", hidden=True, help="Deprecated spelling of --checkpoint.")
]


def checkpoint_path(checkpoint: Path | None, model: Path | None) -> Path | None:
    """``--checkpoint``, or the deprecated ``--model`` with a note on the console."""
    if model is None:
        return checkpoint
    from wsiseg.cli._console import console

    console.print("[yellow]note:[/] --model PATH is deprecated here; use --checkpoint PATH", highlight=False)
    return checkpoint or model


def resolve_heldout(values: list[str] | None) -> tuple[str, ...]:
    """Slide ids from ``--heldout`` values: ids as they are, text files read line by line, folders scanned.

    Raises:
        DataError: An empty file or a folder without slides (the message names it).
    """
    if not values:
        return ()
    from wsiseg.errors import DataError
    from wsiseg.tiling.batch import expand_sources
    from wsiseg.tiling.writer import slide_id_for

    ids: list[str] = []
    for value in values:
        path = Path(value)
        if path.is_dir():
            found = [slide_id_for(p) for p in expand_sources([path])]
        elif path.is_file():
            lines = path.read_text(encoding="utf-8").splitlines()
            found = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        else:
            found = [value]
        if not found:
            msg = f"{value}: --heldout names no slide (an empty list or a folder without slides)"
            raise DataError(msg)
        ids.extend(found)
    return tuple(dict.fromkeys(ids))
