"""Tiling throughput: wsiseg's pyramid path against a naive level-0 read + resize loop, in one run.

A synthetic Aperio-style slide (levels at downsample 1, 4, 16) is generated once into ``--work``. The
window list is every tissue window of the default grid (1000 px windows, stride 500, 224 px tiles,
min tissue 0.1), computed exactly as ``tile_slide`` does. Measured on that list:

- ``tile_slide`` (full: tissue detection, JPEG image tiles, PNG mask tiles, CSV, preview) with
  ``workers=1`` and ``workers=2``;
- wsiseg read + resize only (``Slide.read_region`` at the level ``choose_level`` picks, Pillow resize to
  224 with the manifest's kernel), ``workers=1`` and ``workers=2``;
- the naive loop: openslide ``read_region`` of the 1000 x 1000 window at level 0, resized to 224 with
  Pillow bilinear, on an evenly spaced subset (``--naive-n``), extrapolated per window.

Windows/s are wall-clock; "per CPU-s" divides windows by the CPU seconds of this process and its worker
processes, which is the per-core rate on a loaded machine. Targets (issue): >= 5x the naive loop, and
>= 300 windows/s per core on the pyramid path.

Usage::

    .venv/bin/python benchmarks/bench_tile.py                  # 20000 x 20000 slide
    .venv/bin/python benchmarks/bench_tile.py --size 8000 --naive-n 50 --out benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from wsiseg.classes import DEFAULT_CLASSES
from wsiseg.slide import Slide, open_slide
from wsiseg.testing.synthetic import make_slide
from wsiseg.tiling import TilingConfig, choose_level, window_grid
from wsiseg.tiling.batch import load_labels
from wsiseg.tiling.tissue import TISSUE_THUMBNAIL, tissue_fractions, tissue_mask
from wsiseg.tiling.window import read_window
from wsiseg.tiling.writer import tile_slide

Window = tuple[int, int]


def _cpu_s() -> float:
    """CPU seconds of this process plus its reaped children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def ensure_slide(work: Path, size: int, seed: int) -> Path:
    """Generate (once) the synthetic slide of ``size`` x ``size`` level-0 px."""
    path = work / f"tile_bench_{size}_s{seed}.svs"
    if not path.is_file():
        t0 = time.perf_counter()
        make_slide(path, width=size, height=size, seed=seed)
        print(f"generated {path} in {time.perf_counter() - t0:.1f} s", flush=True)
    return path


def tissue_windows(slide: Slide, config: TilingConfig) -> list[Window]:
    """The windows ``tile_slide`` keeps (same thumbnail, tissue mask, grid and threshold)."""
    thumb = slide.get_thumbnail(TISSUE_THUMBNAIL)
    ds = slide.dimensions[0] / thumb.shape[1]
    grid = window_grid(slide.dimensions, config.window, config.stride)
    fracs = tissue_fractions(tissue_mask(thumb), ds, grid, config.window)
    return [xy for xy, f in zip(grid, fracs, strict=True) if f >= config.min_tissue]


# --- read + resize only (the pyramid path without writing) -------------------------------------------

_WORKER: dict[str, Any] = {}


def _init_reader(path: str, level: int, read: int, size: int) -> None:
    _WORKER.update(slide=open_slide(Path(path)), level=level, read=read, size=size)


def _read_chunk(chunk: list[Window]) -> int:
    slide, level, read, size = _WORKER["slide"], _WORKER["level"], _WORKER["read"], _WORKER["size"]
    for x, y in chunk:
        read_window(slide, (x, y), level, read, size, "bilinear")  # the manifest's default kernel
    return len(chunk)


def read_resize(path: Path, windows: list[Window], level: int, read: int, size: int, workers: int) -> int:
    """Read and resize every window like ``tile_slide`` does, without writing anything."""
    if workers <= 1:
        _init_reader(str(path), level, read, size)
        try:
            return _read_chunk(windows)
        finally:
            _WORKER["slide"].close()
            _WORKER.clear()
    step = max(1, min(64, len(windows) // (workers * 4)))
    chunks = [windows[i : i + step] for i in range(0, len(windows), step)]
    with mp.get_context("fork").Pool(workers, _init_reader, (str(path), level, read, size)) as pool:
        return sum(pool.imap(_read_chunk, chunks))


def naive_loop(path: Path, windows: list[Window], window: int, size: int) -> int:
    """openslide level-0 read of the full window, then a Pillow resize to ``size``."""
    import openslide

    osr = openslide.OpenSlide(str(path))
    try:
        for x, y in windows:
            img = osr.read_region((x, y), 0, (window, window)).convert("RGB")
            img.resize((size, size), Image.Resampling.BILINEAR)
    finally:
        osr.close()
    return len(windows)


def timed(fn: Callable[[], int]) -> tuple[int, float, float]:
    """Run ``fn`` and return ``(windows, wall s, CPU s incl. children)``."""
    c0, t0 = _cpu_s(), time.perf_counter()
    n = fn()
    return n, time.perf_counter() - t0, _cpu_s() - c0


def run(args: argparse.Namespace) -> list[str]:
    """Measure every path and return the markdown lines."""
    config = TilingConfig()
    path = ensure_slide(args.work, args.size, args.seed)
    with open_slide(path) as slide:
        level, read = choose_level(slide.level_downsamples, config.window, config.size)
        windows = tissue_windows(slide, config)
        n_grid = len(window_grid(slide.dimensions, config.window, config.stride))
        labels = load_labels(path.with_name(f"{path.stem}_mask.png"), slide.dimensions, DEFAULT_CLASSES, "auto")
    pick = np.linspace(0, len(windows) - 1, min(args.naive_n, len(windows))).round().astype(int)
    subset = [windows[i] for i in sorted(set(pick.tolist()))]
    rows: list[tuple[str, int, float, float]] = []
    for w in (1, 2):
        out = Path(tempfile.mkdtemp(prefix="tiles_", dir=args.work))
        try:

            def full(w: int = w, out: Path = out) -> int:
                return tile_slide(path, out, config, labels=labels, workers=w).n_tiles

            rows.append((f"wsiseg `tile_slide` full (level {level}, read {read} px), workers={w}", *timed(full)))
        finally:
            shutil.rmtree(out, ignore_errors=True)
    for w in (1, 2):
        res = timed(lambda w=w: read_resize(path, windows, level, read, config.size, w))
        rows.append((f"wsiseg read+resize only (level {level}), workers={w}", *res))
    rows.append(
        ("naive: openslide level 0 1000² + PIL resize, 1 process", *timed(lambda: naive_loop(path, subset, 1000, 224)))
    )
    return table(rows, args, len(windows), n_grid)


def table(rows: list[tuple[str, int, float, float]], args: argparse.Namespace, n_win: int, n_grid: int) -> list[str]:
    """Markdown table with ratios against the naive loop's per-window rate."""
    naive_rate = rows[-1][1] / rows[-1][2]
    naive_cpu = rows[-1][1] / rows[-1][3]
    lines = [
        f"### bench_tile: {args.size}x{args.size} synthetic SVS, {n_win} tissue windows of {n_grid} "
        f"(naive loop on {rows[-1][1]}), {os.cpu_count()} CPUs",
        "",
        "| path | windows | wall s | CPU s | windows/s (wall) | windows per CPU-s | x naive (wall) | x naive (CPU) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, n, wall, cpu in rows:
        lines.append(
            f"| {name} | {n} | {wall:.2f} | {cpu:.2f} | {n / wall:.1f} | {n / cpu:.1f} "
            f"| {n / wall / naive_rate:.1f} | {n / cpu / naive_cpu:.1f} |"
        )
    return lines


def main() -> None:
    """Parse arguments, run, print (and append) the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=20_000, help="level-0 side of the synthetic slide")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--naive-n", type=int, default=200, help="windows read by the naive loop")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "wsiseg-bench")
    ap.add_argument("--out", type=Path, help="append the markdown table to this file")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    text = "\n".join(run(args)) + "\n"
    print(text, flush=True)
    if args.out:
        with args.out.open("a", encoding="utf-8") as fh:
            fh.write("\n" + text)


if __name__ == "__main__":
    main()
