"""Federated rounds: DP + aggregation overhead per round, and held-out Dice vs epsilon for three DP settings.

(1) ``--overhead``: ``run_federated`` with ``dhunet_tiny`` (64 px tiles, GroupNorm) and central DP on a
    generated cohort, with 3 and 5 clients; ``rounds.csv`` gives per round ``train_seconds`` (all clients'
    local training, run one after another) and ``dp_agg_seconds`` (clip + noise + mean + apply + load), whose
    ratio is ``dp_overhead``.
(2) ``--dhunet``: the server step alone on DHUnet-size updates (every trainable tensor of ``dhunet``,
    55.4 M float32, random deltas) for 5 clients: ``FedAvg`` (no DP), ``CentralDp``, and local
    (client-side clip + noise of all 5 clients, then the server mean), each followed by ``apply_update``.
    The fraction is taken against an *estimate* of a round's local training: ``clients x local images /
    img/s`` (``--local-images`` per client, ``--train-img-s`` from bench_train on CPU, 600 img/s for the
    H100 target). The aggregation is numpy on the host CPU in either case.
(3) ``--quality``: the same small federated run (3 clients, 8 rounds, ``dhunet_tiny`` at 64 px, fixed seed)
    with ``--dp none``, ``central`` at sigma 0.05 (FedDP paper) and ``central`` at sigma 1.0: held-out Dice
    and final epsilon (PLD, delta 1e-5) side by side.

Usage::

    .venv/bin/python benchmarks/bench_fed.py --overhead --dhunet --quality --out benchmarks/RESULTS.md
    .venv/bin/python benchmarks/bench_fed.py --quality --rounds 2          # quick
"""

from __future__ import annotations

import argparse
import csv
import gc
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsiseg.federated.aggregate import apply_update
from wsiseg.federated.clients import ClientResult
from wsiseg.federated.config import FedConfig
from wsiseg.federated.rounds import run_federated
from wsiseg.federated.strategies import CentralDp, FedAvg, LocalDp
from wsiseg.privacy.parallel import noise_workers

TILE = 64


def _blas() -> str:
    """The BLAS thread setting (``np.dot`` in the clipping norms spins OpenBLAS threads on a loaded box)."""
    return f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}"


def ensure_tiles(work: Path, n_slides: int, seed: int) -> Path:
    """Generate and tile (once) ``n_slides`` 4096 x 3072 synthetic slides into 64 px tiles with masks."""
    from wsiseg.testing.synthetic import make_cohort
    from wsiseg.tiling import TilingConfig
    from wsiseg.tiling.batch import expand_sources, tile_many
    from wsiseg.tiling.manifest import MANIFEST_NAME

    cohort, tiles = work / f"fed_cohort_{n_slides}_s{seed}", work / f"fed_tiles{TILE}_{n_slides}_s{seed}"
    if not (tiles / MANIFEST_NAME).is_file():
        if not (cohort / "cohort.csv").is_file():
            make_cohort(cohort, n_slides=n_slides, seed=seed)
        tile_many(expand_sources([cohort]), tiles, TilingConfig(size=TILE), workers=1)
    return tiles


def fed_config(
    tiles: Path, clients: int, rounds: int, dp: str, sigma: float | None, seed: int, device: str = "cpu"
) -> FedConfig:
    """The small run: dhunet_tiny at 64 px with GroupNorm in every mode (DP forbids BatchNorm statistics)."""
    return FedConfig(
        data=(str(tiles),), clients=clients, rounds=rounds, model="dhunet_tiny",
        model_args={"img_size": TILE, "norm": "groupnorm"}, batch_size=8, dp=dp, sigma=sigma, seed=seed,
        eval_every=rounds, device=device, workers=0,
    )  # fmt: skip


def read_rounds(run_dir: Path) -> list[dict[str, str]]:
    """Rows of a run's ``rounds.csv``."""
    with (run_dir / "rounds.csv").open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def overhead_table(tiles: Path, work: Path, args: argparse.Namespace) -> list[str]:
    """(1): per-round DP overhead of real runs with 3 and 5 clients."""
    lines = [
        f"### bench_fed (1): `run_federated`, dhunet_tiny {TILE} px GroupNorm, central DP sigma 1.0, batch 8, "
        f"{args.overhead_rounds} rounds, {args.device}, {torch.get_num_threads()} torch thread(s), {_blas()}",
        "",
        "| clients | rounds | train s / round (all clients) | DP+agg s / round | dp_overhead (median) "
        "| dp_overhead (max) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for k in (3, 5):
        cfg = fed_config(tiles, k, args.overhead_rounds, "central", 1.0, args.seed, args.device)
        res = run_federated(cfg, runs_root=work / "fed_runs")
        rows = read_rounds(res.run_dir)
        train = [float(r["train_seconds"]) for r in rows]
        agg = [float(r["dp_agg_seconds"]) for r in rows]
        ovh = [float(r["dp_overhead"]) for r in rows]
        lines.append(
            f"| {k} | {len(rows)} | {np.mean(train):.2f} | {np.mean(agg):.3f} | {100 * np.median(ovh):.2f} % "
            f"| {100 * max(ovh):.2f} % |"
        )
        print(lines[-1], flush=True)
    return lines


def dhunet_updates(n_clients: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Random float32 deltas with the shapes of every trainable tensor of ``dhunet`` (GroupNorm)."""
    from wsiseg.models import create_model

    model = create_model("dhunet", pretrained=False, num_classes=4, norm="groupnorm")
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad}
    del model
    gc.collect()
    rng = np.random.default_rng(seed)
    return [
        {n: rng.standard_normal(s, dtype=np.float32) * np.float32(1e-4) for n, s in shapes.items()}
        for _ in range(n_clients)
    ]


def _timed(fn: Any, repeats: int = 1) -> float:
    """Median wall seconds of ``repeats`` calls (the first call also pays page faults for fresh memory)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def dhunet_table(args: argparse.Namespace) -> list[str]:
    """(2): server-side cost on DHUnet-size updates against estimated local training time."""
    k = 5
    updates = dhunet_updates(k, args.seed)
    n_params = sum(v.size for v in updates[0].values())
    base = {n: np.zeros_like(v) for n, v in updates[0].items()}
    results = [ClientResult(f"c{i}", u, {}, 100, 10, 0.0, 0.0) for i, u in enumerate(updates)]
    central = CentralDp(clip=0.5, noise_multiplier=1.0, rng=np.random.default_rng(args.seed + 1))
    local = LocalDp(clip=0.5, noise_multiplier=1.0)
    client_rngs = [np.random.default_rng([args.seed, i]) for i in range(k)]

    def server(strategy: FedAvg, res: list[ClientResult]) -> None:
        apply_update(base, strategy.aggregate(res, expected_clients=float(k)).update)

    reps = 3
    timings: list[tuple[str, float]] = [("FedAvg, no DP (server)", _timed(lambda: server(FedAvg(), results), reps))]
    timings.append(("central DP (server: clip, sum, noise, mean)", _timed(lambda: server(central, results), reps)))
    released: list[ClientResult] = []

    def release() -> None:
        released.clear()
        released.extend(local.release(r, g) for r, g in zip(results, client_rngs, strict=True))

    t_client = _timed(release, reps)
    t_server = _timed(lambda: server(local, released), reps)
    timings.append(("local DP: 5 clients clip + noise", t_client))
    timings.append(("local DP: server mean", t_server))
    est_cpu = k * args.local_images / args.train_img_s
    est_gpu = k * args.local_images / 600.0
    lines = [
        f"### bench_fed (2): server step on DHUnet-size updates ({n_params / 1e6:.1f} M float32 x {k} clients), "
        f"numpy on this CPU, {_blas()}, {noise_workers()} noise threads, median of 3; "
        f"local training estimated as {k} clients x {args.local_images} images",
        "",
        f"| step | seconds | % of CPU training round ({args.train_img_s} img/s: {est_cpu:,.0f} s) "
        f"| % of H100 round at 600 img/s ({est_gpu:.0f} s) |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {name} | {t:.2f} | {100 * t / est_cpu:.3f} % | {100 * t / est_gpu:.2f} % |" for name, t in timings]
    return lines


def quality_table(tiles: Path, work: Path, args: argparse.Namespace) -> list[str]:
    """(3): held-out Dice and epsilon for none / central 0.05 / central 1.0."""
    lines = [
        f"### bench_fed (3): 3 clients, {args.rounds} rounds, dhunet_tiny {TILE} px GroupNorm, batch 8, clip 0.5, "
        f"delta 1e-5, seed {args.seed}, {_blas()}",
        "",
        "| DP | sigma | held-out Dice (final round) | epsilon (PLD) | train s / round | DP+agg s / round |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for dp, sigma in (("none", None), ("central", 0.05), ("central", 1.0)):
        res = run_federated(
            fed_config(tiles, 3, args.rounds, dp, sigma, args.seed, args.device), runs_root=work / "fed_runs"
        )
        rows = read_rounds(res.run_dir)
        dice = next((float(r["test_dice"]) for r in reversed(rows) if r["test_dice"]), float("nan"))
        eps = "n/a (no DP)" if res.epsilon is None else f"{res.epsilon:.4g}"
        train = np.mean([float(r["train_seconds"]) for r in rows])
        agg = np.mean([float(r["dp_agg_seconds"]) for r in rows])
        lines.append(f"| {dp} | {sigma if sigma is not None else '-'} | {dice:.4f} | {eps} | {train:.2f} | {agg:.3f} |")
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    """Parse arguments, run the chosen parts, print (and append) the tables."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--overhead", action="store_true", help="(1) rounds.csv dp_overhead, 3 and 5 clients")
    ap.add_argument("--overhead-rounds", type=int, default=3)
    ap.add_argument("--dhunet", action="store_true", help="(2) server step on DHUnet-size updates")
    ap.add_argument("--local-images", type=int, default=2400, help="images per client per round (estimate)")
    ap.add_argument("--train-img-s", type=float, default=0.5, help="DHUnet CPU training img/s (bench_train)")
    ap.add_argument("--quality", action="store_true", help="(3) Dice and epsilon for three DP settings")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--slides", type=int, default=10, help="slides in the generated cohort")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--device", default="cpu", help="device of the (1) and (3) runs (cuda on a GPU host)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "wsiseg-bench")
    ap.add_argument("--out", type=Path, help="append the markdown tables to this file")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    lines: list[str] = []
    if args.overhead or args.quality:
        tiles = ensure_tiles(args.work, args.slides, args.seed)
        if args.overhead:
            lines += [*overhead_table(tiles, args.work, args), ""]
        if args.quality:
            lines += [*quality_table(tiles, args.work, args), ""]
    if args.dhunet:
        lines += [*dhunet_table(args), ""]
    text = "\n".join(lines)
    print(text, flush=True)
    if args.out and lines:
        with args.out.open("a", encoding="utf-8") as fh:
            fh.write("\n" + text)


if __name__ == "__main__":
    main()
