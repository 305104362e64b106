"""Train on real H&E patches on a CPU and compare with trivial baselines, k-fold by patch, in one command.

The recipe (chosen for 2 CPU cores and about 20 minutes for all folds together):

* tiles: 224 px windows at stride 112 (level-0 px of the patch, about 1 um/px for WSSS4LUAD, an assumption:
  the patches record no mpp), resized to 112 px, PNG, kept from 5 % tissue;
* model ``unet_tiny`` (U-Net widths 8..128, 0.6 M parameters), SGD lr 0.05, batch 8, 30 epochs, poly decay,
  flips/rotation/HSV jitter; each fold has a wall-clock budget (``--budget`` split over the folds);
* k-fold by patch (every patch is held out once); the final checkpoint of each fold is scored, never the
  best one (no selection on held-out patches), beside the majority-class and colour-rule baselines fitted
  on that fold's training patches.

Scores are confusion-matrix Dice per class, pooled over the held-out patches of all folds, and their mean
over the classes present in the truth (background excluded); the paper's per-patch metric is reported beside.

Run on the shared WSSS4LUAD patches::

    python examples/patch_recipe.py --images ../shared/data/wsss4luad/img --masks ../shared/data/wsss4luad/mask

It writes ``OUT/results.md`` and ``OUT/results.json`` (default OUT: ``runs/patch-recipe``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsiseg.tiling.batch import expand_sources, tile_many
from wsiseg.tiling.geometry import TilingConfig
from wsiseg.train.metrics import confusion_metrics
from wsiseg.train.trainer import TrainConfig, run_training

PREDICTORS = ("model", "majority class", "colour rule")


def cpu_name() -> str:
    """The CPU model and the cores torch uses."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {torch.get_num_threads()} torch threads, {os.cpu_count()} logical CPUs"


def tile_patches(images: Path, masks: Path, out: Path, size: int = 112) -> Path:
    """Tile the patches with the recipe's settings (skips patches already tiled alike)."""
    config = TilingConfig(window=224, stride=112, size=size, min_tissue=0.05, image_format="png")
    outcomes = tile_many(expand_sources([images]), out, config, masks_dir=masks, palette="wsss4luad", workers=1)
    failed = [o.error for o in outcomes if o.status == "failed"]
    if failed:
        raise SystemExit("tiling failed: " + "; ".join(failed))
    return out


def recipe_config(
    tiles: Path,
    fold: int,
    folds: int,
    budget: float | None,
    epochs: int,
    seed: int,
    model: str = "unet_tiny",
    class_weights: str = "balanced",
) -> TrainConfig:
    """The training settings of one fold (``unet_tiny``, batch 8, lr 0.05 on a CPU, balanced CE weights)."""
    return TrainConfig(data=(str(tiles),), model=model, epochs=epochs, batch_size=8, lr=0.05, folds=folds,
                       fold=fold, seed=seed, time_budget=budget, class_weights=class_weights)  # fmt: skip


def _pooled(matrices: list[np.ndarray]) -> dict[str, Any]:
    m = confusion_metrics(np.sum(matrices, axis=0))
    return {"mean_dice": m["present_mean_dice"], "mean_iou": m["present_mean_iou"],
            "dice": [float(v) for v in m["dice"]], "present": m["present_classes"]}  # fmt: skip


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Tile, train every fold, pool the held-out confusion matrices and return the results."""
    start = time.perf_counter()
    tiles = tile_patches(args.images, args.masks, args.out / f"tiles-{args.tile_size}", args.tile_size)
    budget = args.budget / args.folds if args.budget else None
    matrices: dict[str, list[np.ndarray]] = {p: [] for p in PREDICTORS}
    per_fold: list[dict[str, Any]] = []
    names: list[str] = []
    for fold in range(args.folds):
        t0 = time.perf_counter()
        cfg = recipe_config(tiles, fold, args.folds, budget, args.epochs, args.seed, args.model, args.class_weights)
        res = run_training(cfg, runs_root=args.out / "runs")
        summary = res.final_metrics
        names = summary["class_names"]
        reports = {"model": summary, **summary["baselines"]}
        row: dict[str, Any] = {"fold": fold, "seconds": time.perf_counter() - t0, "epochs": res.epochs_done,
                               "stop": res.stop_reason}  # fmt: skip
        for p in PREDICTORS:
            matrices[p].append(np.asarray(reports[p]["confusion"]["matrix"], dtype=np.int64))
            row[p] = {"mean_dice": reports[p]["mean_dice"], "paper_dice": reports[p]["paper"]["dice"]}
        per_fold.append(row)
        print(f"fold {fold}: " + "  ".join(f"{p} {row[p]['mean_dice']:.4f}" for p in PREDICTORS), flush=True)
    pooled = {p: _pooled(matrices[p]) for p in PREDICTORS}
    for p in PREDICTORS:
        folds = [r[p]["mean_dice"] for r in per_fold]
        pooled[p]["fold_mean"], pooled[p]["fold_sd"] = float(np.mean(folds)), float(np.std(folds))
        pooled[p]["paper_dice"] = float(np.mean([r[p]["paper_dice"] for r in per_fold]))
    return {"classes": names, "pooled": pooled, "per_fold": per_fold, "seconds": time.perf_counter() - start,
            "cpu": cpu_name(), "torch": torch.__version__, "folds": args.folds, "epochs": args.epochs,
            "model": args.model, "tile_size": args.tile_size, "class_weights": args.class_weights,
            "seed": args.seed}  # fmt: skip


def markdown(results: dict[str, Any]) -> str:
    """The results as a Markdown table."""
    names = results["classes"]
    lines = [
        f"{results['folds']}-fold by patch, pooled held-out confusion matrices; mean over the classes present "
        f"(background excluded). {results['seconds'] / 60:.1f} min in all on {results['cpu']}, torch "
        f"{results['torch']}.",
        "",
        "| predictor | mean Dice | mean IoU | "
        + " | ".join(f"{n} Dice" for n in names)
        + " | per-fold mean Dice (sd) | paper Dice |",
        "|---|---|---|" + "---|" * len(names) + "---|---|",
    ]
    for p in PREDICTORS:
        r = results["pooled"][p]
        cells = [f"{v:.3f}" if not np.isnan(v) else "-" for v in r["dice"]]
        lines.append(f"| {p} | {r['mean_dice']:.3f} | {r['mean_iou']:.3f} | " + " | ".join(cells)
                     + f" | {r['fold_mean']:.3f} ({r['fold_sd']:.3f}) | {r['paper_dice']:.3f} |")  # fmt: skip
    gain = results["pooled"]["model"]["mean_dice"] - results["pooled"]["colour rule"]["mean_dice"]
    lines += ["", f"Model minus colour rule, mean Dice: {gain:+.3f}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Parse arguments, run the recipe, write and print the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=Path, required=True, help="Folder of RGB patches.")
    parser.add_argument("--masks", type=Path, required=True, help="Folder of WSSS4LUAD palette masks, same names.")
    parser.add_argument("--out", type=Path, default=Path("runs/patch-recipe"))
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--budget", type=float, default=1080.0, help="Seconds for all folds (0: no limit).")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--model", default="unet_tiny", help="e.g. dhunet with --tile-size 224 on a GPU.")
    parser.add_argument("--tile-size", type=int, default=112, help="Tile side in px (224 px windows).")
    parser.add_argument("--class-weights", default="balanced", help="CE class weights: balanced, none or a list.")
    args = parser.parse_args()
    results = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    text = markdown(results)
    (args.out / "results.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
