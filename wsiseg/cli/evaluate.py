"""``wsiseg evaluate``: the paper's metrics on tile datasets (with a checkpoint) or on slide masks."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from wsiseg.cli import _options as o

__all__ = ["evaluate"]


def evaluate(
    masks: Annotated[list[Path] | None, typer.Argument(help="Predicted mask.tif files (slide-level mode).")] = None,
    truth: Annotated[
        list[Path] | None, typer.Option(help="Ground truth per mask, same order: label image, GeoJSON or XML.")
    ] = None,
    slide: Annotated[list[Path] | None, typer.Option(help="The slides (level-0 size for annotations).")] = None,
    palette: Annotated[str, typer.Option(help="Label image convention: auto, ids or wsss4luad.")] = "auto",
    checkpoint: o.CheckpointOpt = None,
    model: o.DeprecatedModelPath = None,
    data: Annotated[list[Path] | None, typer.Option(help="Tile dataset(s) for tile-level mode.")] = None,
    split: Annotated[str, typer.Option(help="Tile mode: test (the checkpoint's held-out slides) or all.")] = "test",
    batch_size: Annotated[int, typer.Option(help="Tile mode batch size.")] = 24,
    device: o.DeviceOpt = "auto",
    out: Annotated[Path | None, typer.Option(help="Folder for metrics.csv and metrics.json.")] = None,
) -> None:
    """Report Dice, Jaccard and accuracy per class and their means (paper definitions and plain ones)."""
    from wsiseg.cli._options import checkpoint_path
    from wsiseg.errors import ConfigError

    model = checkpoint_path(checkpoint, model)
    if model is not None:
        report = _tile_mode(model, data or [Path("tiles")], split, batch_size, device)
    elif masks:
        report = _slide_mode(masks, truth or [], slide or [], palette)
    else:
        msg = "give predicted masks with --truth, or --checkpoint with --data for tile datasets"
        raise ConfigError(msg)
    _show(report, out)


def _tile_mode(model: Path, data: list[Path], split: str, batch_size: int, device: str) -> Any:
    from torch.utils.data import DataLoader

    from wsiseg.config import resolve_device
    from wsiseg.data.dataset import TileDataset, load_sources
    from wsiseg.errors import ConfigError
    from wsiseg.train.checkpoint import load_checkpoint
    from wsiseg.train.loop import evaluate as run_eval

    ckpt = load_checkpoint(model)
    dev = resolve_device(device)
    net = ckpt.build_model().to(dev)
    source = load_sources(data)
    if split == "test":
        held = list(ckpt.card.get("split", {}).get("test", []))
        held += [s for c in _fed_split(Path(model)).get("clients", []) for s in c.get("heldout_slides", [])]
        if not held:
            msg = f"{model}: the checkpoint records no held-out slides; use --split all"
            raise ConfigError(msg)
        source = source.subset(held)
    elif split != "all":
        msg = f"--split must be test or all, got {split!r}"
        raise ConfigError(msg)
    loader = DataLoader(TileDataset(source), batch_size=batch_size, num_workers=min(2, os.cpu_count() or 1))
    return run_eval(net, loader, source.classes.names, device=dev)


def _fed_split(model: Path) -> dict[str, Any]:
    """A federated run's private ``split.json`` (slide ids never go into the shareable card), if present."""
    folder = model if model.is_dir() else model.parent
    for path in (folder / "split.json", folder.parent / "split.json"):
        if path.is_file():
            return dict(json.loads(path.read_text(encoding="utf-8")))
    return {}


def _slide_mode(masks: list[Path], truth: list[Path], slides: list[Path], palette: str) -> Any:
    from wsiseg.errors import ConfigError
    from wsiseg.export.compare import ground_truth_on_grid, level0_size_from, load_prediction, recorded_slide_size
    from wsiseg.slide import open_slide
    from wsiseg.train.report import MetricAccumulator

    if len(truth) != len(masks) or (slides and len(slides) != len(masks)):
        msg = f"{len(masks)} masks need as many --truth files (got {len(truth)}) and --slide files if given"
        raise ConfigError(msg)
    acc = None
    for i, mask in enumerate(masks):
        size = recorded_slide_size(mask)
        if slides:
            with open_slide(slides[i]) as s:
                size = s.dimensions
        labels, ds, classes = load_prediction(mask, size)
        if acc is None:
            acc = MetricAccumulator(len(classes), classes.names)
        level0 = size or level0_size_from(labels.shape, ds)
        gt = ground_truth_on_grid(truth[i], shape=labels.shape, downsample=ds, level0_size=level0, classes=classes,
                                  palette=palette)  # fmt: skip
        acc.update(labels, gt, mask.name)
    assert acc is not None
    return acc.compute()


def _show(report: Any, out: Path | None) -> None:
    from rich.table import Table

    from wsiseg.cli._console import console

    rows = report.to_rows()
    table = Table(title=f"Metrics over {report.num_slides} slide(s) (paper: one-vs-rest per class, mean over slides)")
    cols = ["class", "paper_dice", "paper_jaccard", "paper_acc", "dice", "iou", "support"]
    for col in cols:
        table.add_column(col)
    for row in rows:
        table.add_row(*[f"{row[c]:.4f}" if isinstance(row[c], float) else str(row[c]) for c in cols])
    console.print(table)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        with (out / "metrics.csv").open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        (out / "metrics.json").write_text(json.dumps(report.to_dict(), indent=2), encoding="utf-8")
        console.print(f"written: {out / 'metrics.csv'}, {out / 'metrics.json'}", highlight=False)
