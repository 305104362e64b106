"""``wsiseg evaluate``: the paper's metrics on tile datasets (with a checkpoint) or on slide masks."""

from __future__ import annotations

import csv
import io
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
    """Score a model beside two baselines: confusion-matrix Dice per class and its mean over present classes.

    The headline is Dice and IoU from the confusion matrix, per class and averaged over the foreground
    classes present in the ground truth. The majority class and a colour rule, both fitted on the training
    tiles, are scored on the same tiles. The paper's per-slide one-vs-rest metric is shown beside them.
    A ground truth without any tissue class is refused (exit 5).
    """
    from wsiseg.cli._options import checkpoint_path
    from wsiseg.cli._scores import show_scores
    from wsiseg.errors import ConfigError

    model = checkpoint_path(checkpoint, model)
    baselines: dict[str, Any] = {}
    note = ""
    if model is not None:
        report, baselines, note = _tile_mode(model, data or [Path("tiles")], split, batch_size, device)
    elif masks:
        report = _slide_mode(masks, truth or [], slide or [], palette)
        note = "baselines need training tiles: evaluate a checkpoint with --data to see them"
    else:
        msg = "give predicted masks with --truth, or --checkpoint with --data for tile datasets"
        raise ConfigError(msg)
    show_scores(report, baselines, note=note)
    _write(report, baselines, out)


def _tile_mode(model: Path, data: list[Path], split: str, batch_size: int, device: str) -> tuple[Any, Any, str]:
    from torch.utils.data import DataLoader

    from wsiseg.config import resolve_device
    from wsiseg.data.dataset import TileDataset, load_sources
    from wsiseg.errors import ConfigError, DataError
    from wsiseg.train.baselines import evaluate_baselines, fit_baselines
    from wsiseg.train.checkpoint import load_checkpoint
    from wsiseg.train.loop import evaluate as run_eval

    ckpt = load_checkpoint(model)
    dev = resolve_device(device)
    net = ckpt.build_model().to(dev)
    source = load_sources(data)
    recorded = ckpt.card.get("split", {})
    clients = _fed_split(Path(model)).get("clients", [])
    trained = list(recorded.get("train", [])) + [s for c in clients for s in c.get("train_slides", [])]
    note = "baselines fitted on the checkpoint's training slides"
    if split == "test":
        held = list(recorded.get("test", [])) + [s for c in clients for s in c.get("heldout_slides", [])]
        if not held:
            msg = f"{model}: the checkpoint records no held-out slides; use --split all"
            raise ConfigError(msg)
        test = source.subset(held)
    elif split == "all":
        test = source
    else:
        msg = f"--split must be test or all, got {split!r}"
        raise ConfigError(msg)
    train = source.subset(trained)
    if not train.records:
        train = test
        note = "baselines fitted on the evaluated tiles themselves (no training slides found in --data)"
    loader = DataLoader(TileDataset(test), batch_size=batch_size, num_workers=min(2, os.cpu_count() or 1))
    report = run_eval(net, loader, test.classes.names, device=dev)
    if not report.confusion_metrics["present_classes"]:
        msg = f"{', '.join(map(str, data))}: the evaluated tiles have no tissue class in their masks; check --data"
        raise DataError(msg)
    return report, evaluate_baselines(fit_baselines(train), test), note


def _fed_split(model: Path) -> dict[str, Any]:
    """A federated run's private ``split.json`` (slide ids never go into the shareable card), if present."""
    folder = model if model.is_dir() else model.parent
    for path in (folder / "split.json", folder.parent / "split.json"):
        if path.is_file():
            return dict(json.loads(path.read_text(encoding="utf-8")))
    return {}


def _slide_mode(masks: list[Path], truth: list[Path], slides: list[Path], palette: str) -> Any:
    from wsiseg.errors import ConfigError, DataError
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
        if not gt.any():
            msg = (
                f"{truth[i]}: the ground truth has no annotated tissue on {mask.name}'s grid (all background), "
                "so any score would be meaningless; check that it belongs to this slide and uses level-0 px"
            )
            raise DataError(msg)
        acc.update(labels, gt, mask.name)
    assert acc is not None
    return acc.compute()


def _write(report: Any, baselines: dict[str, Any], out: Path | None) -> None:
    from wsiseg.cli._console import console
    from wsiseg.fileio import atomic_write_text

    if out is None:
        return
    rows = report.to_rows()
    out.mkdir(parents=True, exist_ok=True)
    lines = io.StringIO()
    writer = csv.DictWriter(lines, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "metrics.csv", lines.getvalue())
    data = {**report.to_dict(), "baselines": {n: b.to_dict() for n, b in baselines.items()}}
    atomic_write_text(out / "metrics.json", json.dumps(data, indent=2))
    console.print(f"written: {out / 'metrics.csv'}, {out / 'metrics.json'}", highlight=False, markup=False)
