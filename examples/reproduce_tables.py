"""Reproduce the FedDP paper's Table I and Table II on a tile dataset.

Table I: paper Dice / Jaccard / Acc (%) and the confusion-matrix mean Dice over the classes present in the
truth (%) of each model trained centrally, with plain federated learning, and with FedDP (central DP,
C = 0.5, sigma = 0.05). Table II: FedDP DHUnet over the grid C in {0.1, 0.3, 0.5} x sigma in
{0.05, 0.15, 0.25, 0.35}. Every FedDP cell also reports the epsilon the accountant computes (the paper
reports none). Every run, central or federated, holds out the same slides (``--test-fraction`` of them, drawn
once with ``--seed``; the federated runs partition the rest among the clients), and both tables carry two
trivial baselines scored on those held-out tiles (majority class, colour rule; fitted on the training slides),
so a cell can be read against what no training gives. Results go to ``OUT/table1.md``, ``OUT/table2.md``,
``OUT/split.json`` and ``OUT/results.json``.

Paper scale needs a GPU (150 epochs / rounds per cell). A CPU smoke run on the generated cohort::

    python examples/reproduce_tables.py --data demo/tiles --tiny --epochs 2 --rounds 2 --clients 3 --table 1
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from wsiseg.data.dataset import load_sources
from wsiseg.data.partition import split_slides
from wsiseg.federated.config import FedConfig
from wsiseg.federated.rounds import run_federated
from wsiseg.train.trainer import TrainConfig, run_training

MODELS = ["fcn", "unet", "deeplabv3", "convnext", "swinunet", "transfuse", "dhunet"]
LABELS = {"fcn": "FCN", "unet": "Unet", "deeplabv3": "DeeplabV3", "convnext": "ConvNeXt", "swinunet": "SwinUnet",
          "transfuse": "TransFuse", "dhunet": "DHUnet"}  # fmt: skip
CLIPS = [0.1, 0.3, 0.5]
SIGMAS = [0.05, 0.15, 0.25, 0.35]


def _scores(metrics: dict[str, Any]) -> tuple[float, float, float, float]:
    """Paper Dice, Jaccard, Acc and the confusion-matrix mean Dice over the classes present (all in %)."""
    paper = metrics.get("paper", {})
    values = [paper.get(k) for k in ("dice", "jaccard", "acc")] + [metrics.get("mean_dice")]
    return tuple(100.0 * float(v or 0.0) for v in values)  # type: ignore[return-value]


def _baselines(metrics: dict[str, Any]) -> dict[str, tuple[float, float, float, float]]:
    """The baselines of a run's ``metrics.json`` (same held-out tiles as its model), as :func:`_scores`."""
    return {name: _scores(rep) for name, rep in (metrics.get("baselines") or {}).items()}


def _model_args(name: str, args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    # Training builds each model for the tiles' size (``wsiseg.models.args_for_tiles``); the tiny Swin/ViT
    # variants take only 64 px, so a tiny run needs 64 px tiles.
    return (f"{name}_tiny" if args.tiny else name), {}


def table1(args: argparse.Namespace, runs: Path) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name in args.models:
        model, extra = _model_args(name, args)
        row: dict[str, Any] = {}
        cen = run_training(TrainConfig(data=(args.data,), model=model, model_args=extra, epochs=args.epochs,
                                       batch_size=args.batch_size, seed=args.seed, heldout=args.heldout,
                                       test_fraction=0.0), runs_root=runs)  # fmt: skip
        row["centralised"] = _scores(cen.final_metrics)
        results.setdefault("baselines", _baselines(cen.final_metrics))
        for label, dp, sigma in (("fl", "none", None), ("feddp", "central", 0.05)):
            cfg = FedConfig(data=(args.data,), clients=args.clients, rounds=args.rounds, model=model, model_args=extra,
                            dp=dp, sigma=sigma, clip=0.5, batch_size=args.batch_size, seed=args.seed,
                            local_epochs=args.local_epochs, heldout=args.heldout, test_fraction=0.0)  # fmt: skip
            fed = run_federated(cfg, runs_root=runs)
            row[label] = _scores(fed.final_metrics)
            if dp != "none":
                row["epsilon"] = fed.epsilon
        results[name] = row
        print(name, row, flush=True)
    return results


def table2(args: argparse.Namespace, runs: Path) -> dict[str, Any]:
    model, extra = _model_args("dhunet", args)
    grid: dict[str, Any] = {}
    for clip in CLIPS:
        for sigma in SIGMAS:
            cfg = FedConfig(data=(args.data,), clients=args.clients, rounds=args.rounds, model=model, model_args=extra,
                            dp="central", sigma=sigma, clip=clip, batch_size=args.batch_size, seed=args.seed,
                            local_epochs=args.local_epochs, heldout=args.heldout, test_fraction=0.0)  # fmt: skip
            fed = run_federated(cfg, runs_root=runs)
            grid.setdefault("baselines", _baselines(fed.final_metrics))
            grid[f"{clip}/{sigma}"] = {"scores": _scores(fed.final_metrics), "epsilon": fed.epsilon}
            print(clip, sigma, grid[f"{clip}/{sigma}"], flush=True)
    return grid


def render_table1(res: dict[str, Any]) -> str:
    # paper Dice/Jaccard/Acc as in the paper's table, then the confusion-matrix mean Dice over present classes
    cols = " | ".join(f"{s} paper Dice | Jaccard | Acc | mean Dice" for s in ("Centralised", "FL", "FedDP"))
    lines = [f"| Model | {cols} | FedDP epsilon |", "|---" * 14 + "|"]
    for name, row in res.items():
        if name == "baselines":
            continue
        cells = [f"{v:.2f}" for key in ("centralised", "fl", "feddp") for v in row[key]]
        lines.append(f"| {LABELS[name]} | " + " | ".join(cells) + f" | {row.get('epsilon', float('nan')):.4g} |")
    for name, scores in res.get("baselines", {}).items():
        cells = [f"{v:.2f}" for v in scores] * 3  # no training: the same in every column
        lines.append(f"| baseline: {name} (no training) | " + " | ".join(cells) + " | - |")
    return "\n".join(lines) + "\n" + _HELD_NOTE


def render_table2(grid: dict[str, Any]) -> str:
    lines = ["| C \\ sigma | " + " | ".join(str(s) for s in SIGMAS) + " |", "|---" * (len(SIGMAS) + 1) + "|"]
    for clip in CLIPS:
        cells = []
        for sigma in SIGMAS:
            cell = grid[f"{clip}/{sigma}"]
            d, j, a, m = cell["scores"]
            cells.append(f"{d:.2f}/{j:.2f}/{a:.2f}, mean Dice {m:.2f} (eps {cell['epsilon']:.3g})")
        lines.append(f"| {clip} | " + " | ".join(cells) + " |")
    base = [f"{name} {s[0]:.2f}/{s[1]:.2f}/{s[2]:.2f}, mean Dice {s[3]:.2f}"
            for name, s in grid.get("baselines", {}).items()]  # fmt: skip
    return "\n".join(lines) + "\n\nBaselines (no training): " + "; ".join(base) + ".\n" + _HELD_NOTE


_HELD_NOTE = (
    "\nAll cells: the same held-out slides (OUT/split.json); paper metrics as the paper computes them, mean Dice "
    "from the confusion matrix over the classes present in the truth; baselines fitted on the training slides.\n"
)


def heldout_slides(data: str, fraction: float, seed: int) -> tuple[str, ...]:
    """The slides every run of the tables holds out: ``fraction`` of the dataset's slides, drawn with ``seed``."""
    _, held = split_slides(load_sources([data]).slide_ids, test_fraction=fraction, seed=seed)
    return tuple(held)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="tile dataset folder (from `wsiseg tile`)")
    parser.add_argument("--out", default="tables", help="output folder")
    parser.add_argument("--table", choices=["1", "2", "both"], default="both")
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    parser.add_argument("--tiny", action="store_true", help="tiny test variants (CPU smoke run; needs 64 px tiles)")
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=150)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=24)
    parser.add_argument("--seed", type=int, default=301)
    parser.add_argument("--test-fraction", type=float, default=0.3, help="slides held out by every run")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    args.heldout = heldout_slides(args.data, args.test_fraction, args.seed)
    (out / "split.json").write_text(json.dumps({"heldout": list(args.heldout)}, indent=2), encoding="utf-8")
    runs = out / "runs"
    results: dict[str, Any] = {}
    if args.table in ("1", "both"):
        results["table1"] = table1(args, runs)
        (out / "table1.md").write_text(render_table1(results["table1"]), encoding="utf-8")
    if args.table in ("2", "both"):
        results["table2"] = table2(args, runs)
        (out / "table2.md").write_text(render_table2(results["table2"]), encoding="utf-8")
    (out / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
