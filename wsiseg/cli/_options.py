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

from wsiseg.federated.modes import DEFAULT_DP_MODE, DP_MODES, PARTITIONS

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
    "ImgSizeOpt",
    "LocalEpochsOpt",
    "LocalStepsOpt",
    "LrOpt",
    "ModelOpt",
    "NoiseSeedOpt",
    "NormOpt",
    "PartitionOpt",
    "PretrainedOpt",
    "ResumeOpt",
    "RoundsOpt",
    "RunsOpt",
    "SeedOpt",
    "SigmaOpt",
    "TargetEpsilonOpt",
    "WorkersOpt",
    "checkpoint_path",
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
            "the server); none: plain FedAvg."
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
NoiseSeedOpt = Annotated[
    int | None,
    typer.Option(
        help="Seed DP noise and client sampling too: reproductions only (no amplification claimed).",
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
