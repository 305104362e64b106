"""Tiling throughput: wsiseg's pyramid path against a naive level-0 read + resize loop, in one run.

A synthetic Aperio-style slide (levels at downsample 1, 4, 16) is generated once into ``--work``. The
window list is every tissue window of the default grid (1000 px windows, stride 500, 224 px tiles,
min tissue 0.1), computed exactly as ``tile_slide`` does. Measured on that list:

- ``tile_slide`` (full: tissue detection, JPEG image tiles, PNG mask tiles, CSV, preview) with
  ``workers=1`` and ``workers=2``;
- wsiseg read + resize only (``Slide.read_region`` at the level ``choose_level`` picks, Pillow resize to
  224 with the manifest's kernel), ``workers=1`` and ``workers=2``;
- the naive loop: openslide ``read_region`` of the 1000 x 1000 window at level 0, resized to 224 with
  Pillow bilinear, on an evenly spaced subset (``--naive-n``), extrapolated per window;
- read + resize through ``WindowReader`` in strips (each stored tile decoded once) against the same reader
  one ``read_region`` per window, and the naive loop, interleaved over ``--rounds`` rounds in one process,
  with tile decodes per window (the strip reader's counter; for per-window reads, the tiles under each
  window, which is what they decode without a cache) and the strip reader's peak RSS in a fresh subprocess;
- TIAToolbox's patch extractor when it is installed (skipped, and said so, when it is not).

Windows/s are wall-clock; "per CPU-s" divides windows by the CPU seconds of this process and its worker
processes, which is the per-core rate on a loaded machine. Targets (issue): >= 5x the naive loop, and
>= 300 windows/s per core on the pyramid path.

Usage::

    .venv/bin/python benchmarks/bench_tile.py                  # 20000 x 20000 slide
    .venv/bin/python benchmarks/bench_tile.py --size 8000 --naive-n 50 --out benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from wsiseg.classes import DEFAULT_CLASSES
from wsiseg.slide import Slide, open_slide
from wsiseg.slide.strips import StripReader, TileLayout, tile_layout
from wsiseg.testing.synthetic import make_slide
from wsiseg.tiling import TilingConfig, choose_level, window_grid
from wsiseg.tiling.batch import load_labels
from wsiseg.tiling.tissue import TISSUE_THUMBNAIL, tissue_fractions, tissue_mask
from wsiseg.tiling.window import WindowReader, plan_reads, read_window
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


def strip_pass(path: Path, windows: list[Window], level: int, read: int, size: int, strips: bool) -> tuple[int, int]:
    """Read + resize every window through ``WindowReader``; return ``(windows, tile decodes)``."""
    with open_slide(path) as slide:
        reader = WindowReader(slide, windows, level, read, size, "bilinear", plan_reads(slide, level, strips=strips))
        for _ in reader:
            pass
        if reader.strips is not None:
            return len(windows), reader.strips.decodes
        return len(windows), -1


def tiles_under(path: Path, windows: list[Window], level: int, read: int) -> float:
    """Tiles under each window on average: what a per-window read decodes when nothing is cached."""
    with open_slide(path) as slide:
        layout = tile_layout(slide, level)
    assert isinstance(layout, TileLayout), layout
    return StripReader(layout, windows, read).tiles_touched() / len(windows)


def strip_rss(path: Path, windows: list[Window], level: int, read: int, work: Path) -> dict[str, float]:
    """Memory of a fresh process that strip-reads ``windows``: peak RSS, and the read pass's own peak.

    Peak RSS is the process's ``VmHWM`` (imports included; unlike ``ru_maxrss`` it does not inherit the
    parent's peak across fork and exec); the pass's own peak comes from ``tracemalloc``, which sees numpy's
    buffers (decoded tiles, windows, resize inputs).
    """
    plan = work / "strip_rss_windows.json"
    plan.write_text(json.dumps(windows))
    code = (
        "import json,re,tracemalloc;from pathlib import Path;"
        "hwm=lambda:int(re.search(r'VmHWM:\\s+(\\d+)',Path('/proc/self/status').read_text()).group(1))/1024;"
        "from wsiseg.slide import open_slide;from wsiseg.tiling.window import WindowReader;"
        f"w=[tuple(o) for o in json.loads(Path({str(plan)!r}).read_text())];s=open_slide({str(path)!r});"
        f"r=WindowReader(s,w,{level},{read},224,'bilinear');"
        "base=hwm();"
        "tracemalloc.start();[None for _ in r];heap=tracemalloc.get_traced_memory()[1]/2**20;tracemalloc.stop();"
        "peak=hwm();"
        "L=r.strips.layout;"
        "print(json.dumps({'base':base,'peak':peak,'heap':heap,'peak_tiles':r.strips.peak_tiles,"
        "'tile_bytes':L.tile_width*L.tile_height*3,'tiles_across':L.tiles_across,'max_tiles':r.strips.max_tiles}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def tiatoolbox_rows(path: Path, windows: list[Window], mpp: float) -> list[tuple[str, int, float, float]] | str:
    """TIAToolbox's reader at the windows' resolution (224 px over 1000 level-0 px), or why it was skipped."""
    try:
        from tiatoolbox.wsicore.wsireader import WSIReader  # type: ignore[import-not-found]
    except ImportError:
        return "TIAToolbox is not installed here: its row was skipped (optional dependency)."
    resolution = mpp * 1000 / 224

    def run() -> int:
        reader = WSIReader.open(path)
        for x, y in windows:
            reader.read_rect((x, y), (224, 224), resolution=resolution, units="mpp")
        return len(windows)

    return [(f"TIAToolbox `read_rect` 224² at {resolution:.3f} mpp (naive subset)", *timed(run))]


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
        mpp = slide.mpp[0] if slide.mpp else 0.5
        labels = load_labels(path.with_name(f"{path.stem}_mask.png"), slide.dimensions, DEFAULT_CLASSES, "auto")
    pick = np.linspace(0, len(windows) - 1, min(args.naive_n, len(windows))).round().astype(int)
    subset = [windows[i] for i in sorted(set(pick.tolist()))]
    # (1) read + resize, interleaved: strips, per window, naive, per round
    names = ("strips", "per-window", "naive")
    acc = {k: [0, 0.0, 0.0] for k in names}
    decodes = 0
    for _ in range(args.rounds):
        for key in names:
            if key == "naive":
                n, wall, cpu = timed(lambda: naive_loop(path, subset, config.window, config.size))
            else:
                box: list[int] = []

                def one(key: str = key, box: list[int] = box) -> int:
                    n, d = strip_pass(path, windows, level, read, config.size, key == "strips")
                    box.append(d)
                    return n

                n, wall, cpu = timed(one)
                if key == "strips":
                    decodes = box[0]
            acc[key][0] += n
            acc[key][1] += wall
            acc[key][2] += cpu
    per_window = {
        "strips": decodes / len(windows),
        "per-window": tiles_under(path, windows, level, read),
        "naive": tiles_under(path, subset, 0, config.window),
    }
    lines = read_table(args, acc, per_window, level, read, len(windows), n_grid, len(subset))
    tia = tiatoolbox_rows(path, subset, mpp)
    lines += [
        "",
        tia if isinstance(tia, str) else " ".join(f"{r[0]}: {r[1] / r[3]:.1f} windows per CPU-s" for r in tia),
    ]
    rss = strip_rss(path, windows, level, read, args.work)
    strip_mib = rss["peak_tiles"] * rss["tile_bytes"] / 2**20
    wide = math.ceil(100_000 / 4 / 256) / rss["tiles_across"]  # tile columns at level 1 of a 100k slide
    lines += [
        "",
        f"Strip reader alone in a fresh process: peak RSS {rss['peak']:.0f} MiB for the whole process "
        f"({rss['base']:.0f} MiB after imports and opening the slide); the read pass itself peaked at "
        f"{rss['heap']:.1f} MiB (tracemalloc) with at most {rss['peak_tiles']} decoded tiles held "
        f"({strip_mib:.1f} MiB; cap {rss['max_tiles']}). At 100k x 100k the level-1 strip is {wide:.1f}x wider: "
        f"about {strip_mib * wide:.0f} MiB of tiles (estimate, scaled by width).",
    ]
    # (2) the full tiling job, strips against per-window reads
    rows: list[tuple[str, int, float, float]] = []
    for strips, w in ((True, 1), (False, 1), (True, 2), (False, 2)):
        out = Path(tempfile.mkdtemp(prefix="tiles_", dir=args.work))
        try:

            def full(w: int = w, out: Path = out, strips: bool = strips) -> int:
                return tile_slide(path, out, config, labels=labels, workers=w, strips=strips).n_tiles

            mode = "strips" if strips else "per-window"
            rows.append((f"wsiseg `tile_slide` full, {mode}, workers={w}", *timed(full)))
        finally:
            shutil.rmtree(out, ignore_errors=True)
    for w in (1, 2):
        res = timed(lambda w=w: read_resize(path, windows, level, read, config.size, w))
        rows.append((f"wsiseg read+resize only (`read_window` per window, level {level}), workers={w}", *res))
    naive = acc["naive"]
    rows.append(("naive: openslide level 0 1000² + PIL resize, 1 process", int(naive[0]), naive[1], naive[2]))
    return [*lines, "", *table(rows, args, len(windows), n_grid)]


def read_table(
    args: argparse.Namespace,
    acc: dict[str, list[Any]],
    decodes: dict[str, float],
    level: int,
    read: int,
    n_win: int,
    n_grid: int,
    n_naive: int,
) -> list[str]:
    """Markdown table of the interleaved read + resize paths."""
    rate = {k: v[0] / v[2] for k, v in acc.items()}
    label = {
        "strips": f"wsiseg strips (`WindowReader`, level {level}, {read} px, each tile decoded once)",
        "per-window": f"wsiseg per window (`read_region` level {level}, {read} px, openslide)",
        "naive": "naive: openslide level 0 1000² + PIL resize",
    }
    lines = [
        f"### bench_tile (read + resize to 224, interleaved, {args.rounds} rounds): {args.size}x{args.size} "
        f"synthetic SVS, {n_win} tissue windows of {n_grid} (naive on {n_naive}), {os.cpu_count()} CPUs",
        "",
        "| path (1 process) | windows | wall s | CPU s | windows per CPU-s | x naive | x per-window "
        "| tile decodes per window |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, (n, wall, cpu) in acc.items():
        lines.append(
            f"| {label[key]} | {n} | {wall:.2f} | {cpu:.2f} | {rate[key]:.1f} | {rate[key] / rate['naive']:.1f} "
            f"| {rate[key] / rate['per-window']:.2f} | {decodes[key]:.2f} |"
        )
    return lines


def table(rows: list[tuple[str, int, float, float]], args: argparse.Namespace, n_win: int, n_grid: int) -> list[str]:
    """Markdown table with ratios against the naive loop's per-window rate."""
    naive_rate = rows[-1][1] / rows[-1][2]
    naive_cpu = rows[-1][1] / rows[-1][3]
    lines = [
        f"### bench_tile (full job): {args.size}x{args.size} synthetic SVS, {n_win} tissue windows of {n_grid} "
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
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the read + resize paths")
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
