"""Training throughput: images/s of a full step (forward, CE+Dice loss, backward, SGD), loader vs memory.

A small synthetic cohort is generated and tiled once into ``--work`` (224 px tiles with masks). For each
model three rates are measured in one process:

- **loader only**: ``TileDataset`` (JPEG/PNG decode, ``PairTransform`` augmentation, normalisation) through
  a ``DataLoader`` at the training batch size, no model;
- **train, loader**: ``train_steps`` fed by that loader (what ``wsiseg train`` does);
- **train, in-memory**: ``train_steps`` fed one pre-loaded batch over and over (compute only).

If "train, loader" is close to "train, in-memory", compute is the bottleneck; if it is close to "loader
only", loading is. CPU: fp32 at batch 8 (a warm-up step, then ``--steps``; full DHUnet takes ~16 s a
step here). CUDA (when available, else owed): bf16 autocast + channels_last at batch 24, target
>= 600 img/s for DHUnet on an H100.

Usage::

    .venv/bin/python benchmarks/bench_train.py                              # CPU, dhunet_tiny + dhunet
    .venv/bin/python benchmarks/bench_train.py --models dhunet_tiny --steps 3
    .venv/bin/python benchmarks/bench_train.py --gpu --out benchmarks/RESULTS.md   # CUDA only
"""

from __future__ import annotations

import argparse
import itertools
import resource
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from wsiseg.data.dataset import TileDataset, TileSource, load_sources
from wsiseg.data.transforms import PairTransform
from wsiseg.models import create_model
from wsiseg.train.loop import OptimConfig, make_loss, make_optimizer, poly_lr, train_steps


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    k = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime + k.ru_utime + k.ru_stime


def ensure_tiles(work: Path, n_slides: int, seed: int) -> Path:
    """Generate and tile (once) ``n_slides`` 4096 x 3072 synthetic slides at 224 px with masks."""
    from wsiseg.testing.synthetic import make_cohort
    from wsiseg.tiling import TilingConfig
    from wsiseg.tiling.batch import expand_sources, tile_many
    from wsiseg.tiling.manifest import MANIFEST_NAME

    cohort, tiles = work / f"train_cohort_{n_slides}_s{seed}", work / f"train_tiles_{n_slides}_s{seed}"
    if not (tiles / MANIFEST_NAME).is_file():
        if not (cohort / "cohort.csv").is_file():
            make_cohort(cohort, n_slides=n_slides, seed=seed)
        tile_many(expand_sources([cohort]), tiles, TilingConfig(), workers=1)
    return tiles


def loader_for(source: TileSource, batch: int, workers: int, seed: int, device: str) -> DataLoader[Any]:
    """The training loader: shuffled, augmented, last partial batch dropped."""
    ds = TileDataset(source, transform=PairTransform(), seed=seed)
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=batch, shuffle=True, generator=gen, num_workers=workers, drop_last=True,
                      pin_memory=device.startswith("cuda"), persistent_workers=workers > 0)  # fmt: skip


def cycle(loader: DataLoader[Any]) -> Iterator[dict[str, Any]]:
    """Endless batches (new epoch order each pass)."""
    while True:
        yield from loader


def rate(fn: Any, n_images: int, device: str) -> tuple[float, float]:
    """Run ``fn``; return ``(images/s wall, CPU s per image)``."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), _cpu_s()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return n_images / (time.perf_counter() - t0), (_cpu_s() - c0) / n_images


def bench_model(name: str, source: TileSource, args: argparse.Namespace, device: str) -> list[str]:
    """Three rates for one model; markdown rows."""
    batch, steps = (args.gpu_batch, args.gpu_steps) if device.startswith("cuda") else (args.batch, args.steps)
    if name == "dhunet" and device == "cpu":
        steps = min(steps, args.dhunet_steps)
    workers = args.gpu_workers if device.startswith("cuda") else args.workers
    loader = loader_for(source, batch, workers, args.seed, device)
    batches = cycle(loader)
    fixed = next(batches)
    torch.manual_seed(args.seed)
    model = create_model(name, pretrained=False, num_classes=len(source.classes)).to(device)
    if device.startswith("cuda"):
        model = model.to(memory_format=torch.channels_last)
    opt, loss_fn = make_optimizer(model, OptimConfig()), make_loss(model, len(source.classes))
    total = 10 * steps + 10

    def run(it: Iterator[dict[str, Any]], n: int, first: int) -> None:
        train_steps(model, it, opt, loss_fn, lr_at=lambda s: poly_lr(0.01, s, total), first_step=first,
                    max_steps=n, device=device, amp=True, channels_last=True)  # fmt: skip

    run(itertools.repeat(fixed), args.gpu_warmup if device.startswith("cuda") else args.warmup, 0)
    rows = []
    n_load = max(steps, 3)
    rows.append(("loader only", *rate(lambda: list(itertools.islice(batches, n_load)), n_load * batch, device)))
    rows.append(("train, loader", *rate(lambda: run(batches, steps, 10), steps * batch, device)))
    rows.append(
        ("train, in-memory batch", *rate(lambda: run(itertools.repeat(fixed), steps, 20), steps * batch, device))
    )
    return [
        f"| {name} | {device} | {batch} | {'bf16+channels_last' if device.startswith('cuda') else 'fp32'} "
        f"| {label} | {steps if label != 'loader only' else n_load} | {r:.2f} | {1e3 * c:.0f} |"
        for label, r, c in rows
    ]


def main() -> None:
    """Parse arguments, run, print (and append) the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["dhunet_tiny", "dhunet"])
    ap.add_argument("--batch", type=int, default=8, help="CPU batch")
    ap.add_argument("--steps", type=int, default=5, help="measured CPU steps per mode")
    ap.add_argument("--dhunet-steps", type=int, default=2, help="cap on measured steps for full dhunet on CPU")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    ap.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (2 on the shared 2-core box ran ~9x slower than 1)"
    )
    ap.add_argument("--gpu", action="store_true", help="also run on CUDA (bf16 + channels_last)")
    ap.add_argument("--gpu-only", action="store_true", help="only the CUDA rows (implies --gpu; gpu_suite.sh)")
    ap.add_argument("--gpu-batch", type=int, default=24)
    ap.add_argument("--gpu-steps", type=int, default=30)
    ap.add_argument("--gpu-warmup", type=int, default=5)
    ap.add_argument("--gpu-workers", type=int, default=8, help="DataLoader workers on CUDA")
    ap.add_argument("--slides", type=int, default=2, help="slides in the generated cohort")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "wsiseg-bench")
    ap.add_argument("--out", type=Path, help="append the markdown table to this file")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    source = load_sources([ensure_tiles(args.work, args.slides, args.seed)])
    args.gpu = args.gpu or args.gpu_only
    devices = ([] if args.gpu_only else ["cpu"]) + (["cuda"] if args.gpu and torch.cuda.is_available() else [])
    lines = [
        f"### bench_train: {len(source.records)} real 224 px tiles ({args.slides} synthetic slides), "
        f"{torch.get_num_threads()} CPU threads, loader workers {args.workers}"
        + (f", {torch.cuda.get_device_name()}" if "cuda" in devices else ""),
        "",
        "| model | device | batch | precision | mode | steps | images/s | CPU ms/image |",
        "|---|---|---:|---|---|---:|---:|---:|",
    ]
    for device in devices:
        for name in args.models:
            rows = bench_model(name, source, args, device)
            lines += rows
            print("\n".join(rows), flush=True)
    if args.gpu and "cuda" not in devices:
        lines.append("\n(CUDA part skipped: no GPU)")
    text = "\n".join(lines) + "\n"
    print(text, flush=True)
    if args.out:
        with args.out.open("a", encoding="utf-8") as fh:
            fh.write("\n" + text)


if __name__ == "__main__":
    main()
