"""Privacy-utility table: held-out Dice at slide-level epsilon 1, 4 and 8 against no DP and client-level DP.

One generated cohort (``--slides`` synthetic slides of ``--width`` x ``--height`` px, default 1536 x 1024, tiled
into 64 px tiles from 256 px windows so that every slide gives a few dozen tiles), split into ``--clients``
sites by slide; each site holds out ``--test-fraction`` of its slides. Every setting trains ``dhunet_tiny``
(GroupNorm) for the same ``--rounds`` FedAvg rounds on the same tiles from the same initial weights (one seed
per row group):

* ``none``: no DP (local epochs of plain SGD);
* ``central``: client-level central DP (the paper's mechanism), sigma ``--central-sigma``, clip 0.5;
* ``sample`` at slide level: DP-SGD inside every site, a slide's tiles in a step summed and clipped as one,
  Poisson rate ``batch / slides``, sigma calibrated by ``--target-epsilon`` (PLD, delta 1e-5) for 1, 4, 8.

The epsilons are the accountant's (PLD headline, RDP beside it): for ``central`` it protects one *site*
against the others and the server; for ``sample`` it protects one *slide* inside each site against everyone
outside it. They are different guarantees and the table says which is which. Held-out Dice is the final
round's mean foreground Dice over all sites' held-out slides (``rounds.csv`` ``test_dice``); the two
trivial baselines (majority class, colour rule; ``wsiseg.train.baselines``) are scored on the same held-out tiles.

Usage::

    .venv/bin/python benchmarks/bench_privacy_utility.py --seeds 0 1 --out benchmarks/RESULTS.md
    .venv/bin/python benchmarks/bench_privacy_utility.py --rounds 1 --slides 18 --seeds 0   # quick
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from wsiseg.federated.config import FedConfig
from wsiseg.federated.rounds import run_federated

TILE, WINDOW = 64, 256


def ensure_tiles(work: Path, n_slides: int, width: int = 1536, height: int = 1024) -> Path:
    """Generate and tile (once) the cohort: ``n_slides`` small synthetic slides of ``width x height``, 64 px tiles."""
    from wsiseg.testing.synthetic import make_cohort
    from wsiseg.tiling import TilingConfig
    from wsiseg.tiling.batch import expand_sources, tile_many
    from wsiseg.tiling.manifest import MANIFEST_NAME

    size = "" if (width, height) == (1536, 1024) else f"_{width}x{height}"
    cohort, tiles = work / f"pu_cohort_{n_slides}{size}", work / f"pu_tiles_{n_slides}{size}"
    if not (tiles / MANIFEST_NAME).is_file():
        if not (cohort / "cohort.csv").is_file():
            make_cohort(cohort, n_slides=n_slides, width=width, height=height, seed=0)
        tile_many(expand_sources([cohort]), tiles, TilingConfig(window=WINDOW, stride=WINDOW, size=TILE), workers=1)
    return tiles


def settings(args: argparse.Namespace) -> list[tuple[str, dict[str, Any]]]:
    """The rows: label and the FedConfig fields that differ from the common ones."""
    rows: list[tuple[str, dict[str, Any]]] = [
        ("none", {"dp": "none"}),
        (f"central, sigma {args.central_sigma}", {"dp": "central", "sigma": args.central_sigma, "clip": 0.5}),
    ]
    for eps in args.epsilons:
        rows.append((f"sample (slide), target eps {eps:g}", {
            "dp": "sample", "privacy_unit": "slide", "target_epsilon": eps, "clip": args.sample_clip,
            "tiles_per_unit": args.tiles_per_unit, "physical_batch": args.physical_batch,
        }))  # fmt: skip
    return rows


def run_one(tiles: Path, work: Path, seed: int, extra: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """One federated run; returns Dice, epsilon (PLD and RDP where DP), sigma and wall time."""
    cfg = FedConfig(
        data=(str(tiles),), clients=args.clients, rounds=args.rounds, model="dhunet_tiny",
        model_args={"img_size": TILE, "norm": "groupnorm"}, batch_size=args.batch, seed=seed,
        test_fraction=args.test_fraction, eval_every=args.rounds, device="cpu", workers=0, lr=args.lr, **extra,
    )  # fmt: skip
    t0 = time.perf_counter()
    res = run_federated(cfg, runs_root=work / "pu_runs")
    wall = time.perf_counter() - t0
    with (res.run_dir / "rounds.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    dice = next((float(r["test_dice"]) for r in reversed(rows) if r.get("test_dice")), float("nan"))
    card = _card(res.run_dir)
    return {"dice": dice, "epsilon": res.epsilon, "epsilon_rdp": card.get("epsilon_rdp"),
            "sigma": card.get("noise_multiplier"), "rounds": res.rounds_done, "wall_s": wall,
            "stopped": res.stopped_early, "run_dir": str(res.run_dir)}  # fmt: skip


def _card(run_dir: Path) -> dict[str, Any]:
    """The privacy block of the run's checkpoint card (sigma and RDP epsilon), or empty."""
    for path in sorted(run_dir.rglob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        priv = data.get("privacy") if isinstance(data, dict) else None
        if isinstance(priv, dict) and "noise_multiplier" in priv:
            return priv
    return {}


def baselines(run_dir: Path, tiles: Path) -> dict[str, float]:
    """Held-out paper Dice of the two trivial baselines, fitted on the run's training slides of all sites."""
    from wsiseg.data.dataset import load_sources
    from wsiseg.train.baselines import evaluate_baselines, fit_baselines

    split = json.loads((run_dir / "split.json").read_text(encoding="utf-8"))["clients"]
    source = load_sources([tiles])
    train = source.subset([s for c in split for s in c["train_slides"]])
    test = source.subset([s for c in split for s in c["heldout_slides"]])
    reports = evaluate_baselines(fit_baselines(train), test)
    return {name: float(rep.paper["dice"]) for name, rep in reports.items()}


def main() -> None:
    """Run every setting for every seed and print (and append) the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slides", type=int, default=90)
    ap.add_argument("--width", type=int, default=1536, help="level-0 width of each generated slide")
    ap.add_argument("--height", type=int, default=1024, help="level-0 height of each generated slide")
    ap.add_argument("--clients", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4, help="batch (tiles, or expected slides a step in sample mode)")
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--test-fraction", type=float, default=0.3)
    ap.add_argument("--central-sigma", type=float, default=1.0)
    ap.add_argument("--sample-clip", type=float, default=1.0)
    ap.add_argument("--tiles-per-unit", type=int, default=8)
    ap.add_argument("--physical-batch", type=int, default=16)
    ap.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 4.0, 8.0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "wsiseg-bench")
    ap.add_argument("--out", type=Path, help="append the markdown table to this file")
    ap.add_argument("--from-log", type=Path, help="only build the table from this run's printed lines")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    tiles = ensure_tiles(args.work, args.slides, args.width, args.height)
    results: dict[str, list[dict[str, Any]]] = {}
    base: dict[str, list[float]] = {}
    if args.from_log:  # rebuild the table from the per-run lines of an interrupted run (complete seeds only)
        rows = [line.split(" | ", 2) for line in args.from_log.read_text(encoding="utf-8").splitlines()
                if line.startswith("seed ")]  # fmt: skip
        done = [sd for sd in dict.fromkeys(r[0] for r in rows) if sum(r[0] == sd for r in rows) == len(settings(args))]
        args.seeds = [int(sd.split()[1]) for sd in done]
        for _sd, label, blob in (r for r in rows if r[0] in done):
            results.setdefault(label, []).append(json.loads(blob))
        for sd in done:
            last = json.loads(next(r[2] for r in reversed(rows) if r[0] == sd))
            for name, dice in baselines(Path(last["run_dir"]), tiles).items():
                base.setdefault(name, []).append(dice)
    for seed in [] if args.from_log else args.seeds:
        for label, extra in settings(args):
            r = run_one(tiles, args.work, seed, extra, args)
            results.setdefault(label, []).append(r)
            print(f"seed {seed} | {label} | {json.dumps(r)}", flush=True)
        for name, dice in baselines(Path(r["run_dir"]), tiles).items():
            base.setdefault(name, []).append(dice)
    seeds = " ".join(map(str, args.seeds))
    lines = [
        f"### bench_privacy_utility: {args.clients} sites, {args.slides} generated slides of {args.width} x "
        f"{args.height} px (64 px tiles from "
        f"{WINDOW} px windows, {args.test_fraction:g} of each site's slides held out), dhunet_tiny GroupNorm, "
        f"{args.rounds} rounds, batch {args.batch}, lr {args.lr:g}, delta 1e-5, seeds {seeds}, "
        f"CPU {args.threads} threads",
        "",
        "| setting | protects | sigma | epsilon PLD (RDP) | held-out Dice, mean of seeds | per seed "
        "| min / run (shared machine) |",
        "|---|---|---:|---:|---:|---|---:|",
    ]
    for label, rs in results.items():
        who = ("nothing" if label == "none" else "one site, from server and other sites" if label.startswith(
            "central") else "one slide of a site, from everyone outside the site")  # fmt: skip
        eps = rs[0]["epsilon"]
        eps_s = "n/a" if eps is None else f"{eps:.3g} ({rs[0]['epsilon_rdp']:.3g})" if rs[0]["epsilon_rdp"] else (
            f"{eps:.3g}")  # fmt: skip
        sig = rs[0]["sigma"]
        sig_s = "-" if sig is None else f"{float(sig):.3g}"
        dices = [r["dice"] for r in rs]
        minutes = statistics.mean(r["wall_s"] for r in rs) / 60
        lines.append(f"| {label} | {who} | {sig_s} | {eps_s} | {statistics.mean(dices):.4f} | "
                     f"{' / '.join(f'{d:.4f}' for d in dices)} | {minutes:.1f} |")  # fmt: skip
    for name, dices in base.items():
        lines.append(f"| baseline: {name} (no training, same held-out tiles) | - | - | - | "
                     f"{statistics.mean(dices):.4f} | {' / '.join(f'{d:.4f}' for d in dices)} | - |")  # fmt: skip
    text = "\n".join(lines) + "\n"
    print(text, flush=True)
    if args.out:
        with args.out.open("a", encoding="utf-8") as fh:
            fh.write("\n" + text)


if __name__ == "__main__":
    main()
