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


def strip_pass(
    path: Path, windows: list[Window], level: int, read: int, size: int, strips: bool, decodes: list[int]
) -> int:
    """Read + resize every window through ``WindowReader``; the strip reader's tile decodes go to ``decodes``."""
    with open_slide(path) as slide:
        reader = WindowReader(slide, windows, level, read, size, "bilinear", plan_reads(slide, level, strips=strips))
        for _ in reader:
            pass
        if reader.strips is not None:
            decodes[:] = [reader.strips.decodes]
        return len(windows)


def interleaved(passes: dict[str, Callable[[], int]], rounds: int) -> dict[str, list[Any]]:
    """Run every pass once per round, in turn, and sum ``[windows, wall s, CPU s]`` per pass."""
    acc: dict[str, list[Any]] = {k: [0, 0.0, 0.0] for k in passes}
    for _ in range(rounds):
        for key, fn in passes.items():
            for i, v in enumerate(timed(fn)):
                acc[key][i] += v
    return acc


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


def strip_rss_line(path: Path, windows: list[Window], level: int, read: int, work: Path) -> str:
    """One sentence on the strip reader's memory over ``windows`` of ``path`` (a fresh process)."""
    rss = strip_rss(path, windows, level, read, work)
    strip_mib = rss["peak_tiles"] * rss["tile_bytes"] / 2**20
    with open_slide(path) as slide:
        size = f"{slide.dimensions[0]}x{slide.dimensions[1]}"
    return (
        f"Strip reader alone in a fresh process, {len(windows)} tissue windows of a {size} slide: peak RSS "
        f"{rss['peak']:.0f} MiB for the whole process ({rss['base']:.0f} MiB after imports and opening the "
        f"slide); the read pass itself peaked at {rss['heap']:.1f} MiB (tracemalloc) with at most "
        f"{rss['peak_tiles']} decoded tiles held ({strip_mib:.1f} MiB; cap {rss['max_tiles']}, "
        f"{rss['tiles_across']} tiles across)."
    )


def large_rss_line(args: argparse.Namespace, config: TilingConfig) -> str:
    """The strip reader's memory on a ``--rss-size`` square slide (``make_large_slide``, deleted afterwards)."""
    from wsiseg.testing.large import make_large_slide

    path = args.work / f"large_{args.rss_size}_s{args.seed}.svs"
    t0 = time.perf_counter()
    make_large_slide(path, width=args.rss_size, height=args.rss_size, seed=args.seed)
    made = time.perf_counter() - t0
    try:
        with open_slide(path) as slide:
            level, read = choose_level(slide.level_downsamples, config.window, config.size)
            windows = tissue_windows(slide, config)
        gb = path.stat().st_size / 1e9
        return (
            f"{strip_rss_line(path, windows, level, read, args.work)} (`make_large_slide`: {gb:.2f} GB in {made:.0f} s)"
        )
    finally:
        if not args.keep:
            path.unlink(missing_ok=True)


def tiatoolbox_pass(path: Path, windows: list[Window], mpp: float, config: TilingConfig) -> Callable[[], int] | str:
    """A pass of TIAToolbox's sliding-window extractor over ``windows``, or why it cannot run.

    The extractor is built as a user would (``SlidingWindowPatchExtractor``, 224 px patches at stride 112 at
    the mpp that puts a 1000 level-0 px window into 224 px); its grid is wsiseg's grid scaled by 224/1000, so
    the pass reads exactly the tissue windows of the other paths, in the same raster order. Each patch is its
    ``read_rect``: openslide ``read_region`` at the best level, then an OpenCV resize.
    """
    try:
        from tiatoolbox.tools.patchextraction import (  # type: ignore[import-not-found]
            SlidingWindowPatchExtractor,
        )
    except ImportError as err:
        return f"TIAToolbox is not installed here ({err}): its row was skipped (optional dependency)."
    scale = config.size / config.window
    resolution = mpp / scale

    def run() -> int:
        ex = SlidingWindowPatchExtractor(str(path), patch_size=(config.size, config.size),
                                         stride=(round(config.stride * scale),) * 2, resolution=resolution,
                                         units="mpp")  # fmt: skip
        where = {(int(x), int(y)): i for i, (x, y) in enumerate(ex.coordinate_list[:, :2].tolist())}
        picks = [where[(round(x * scale), round(y * scale))] for x, y in windows]
        for i in picks:
            patch = ex[i]
        assert patch.shape == (config.size, config.size, 3), patch.shape
        return len(picks)

    return run


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
    # (1) read + resize, interleaved: strips, per window, TIAToolbox, naive, per round
    tia = tiatoolbox_pass(path, windows, mpp, config)
    box: list[int] = []  # the strip reader's decodes of its last pass
    passes: dict[str, Callable[[], int]] = {
        "strips": lambda: strip_pass(path, windows, level, read, config.size, True, box),
        "per-window": lambda: strip_pass(path, windows, level, read, config.size, False, box),
        "naive": lambda: naive_loop(path, subset, config.window, config.size),
    }
    if not isinstance(tia, str):
        passes = {**dict(list(passes.items())[:2]), "tiatoolbox": tia, "naive": passes["naive"]}
    acc = interleaved(passes, args.rounds)
    under = tiles_under(path, windows, level, read)
    per_window = {"strips": box[0] / len(windows), "per-window": under, "tiatoolbox": under,
                  "naive": tiles_under(path, subset, 0, config.window)}  # fmt: skip
    lines = read_table(args, acc, per_window, level, read, len(windows), n_grid, len(subset))
    if isinstance(tia, str):
        lines += ["", tia]
    lines += ["", strip_rss_line(path, windows, level, read, args.work)]
    if args.rss_size:
        lines += ["", large_rss_line(args, config)]
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

        def only(w: int = w) -> int:
            return read_resize(path, windows, level, read, config.size, w)

        res = timed(only)
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
        "tiatoolbox": "TIAToolbox 2.1.3 `SlidingWindowPatchExtractor` (224 px at the matching mpp, `read_rect`)",
        "naive": "naive: openslide level 0 1000² + PIL resize",
    }
    ref = "tiatoolbox" if "tiatoolbox" in rate else "per-window"
    lines = [
        f"### bench_tile (read + resize to 224, interleaved, {args.rounds} rounds): {args.size}x{args.size} "
        f"synthetic SVS, {n_win} tissue windows of {n_grid} (naive on {n_naive}), {os.cpu_count()} CPUs",
        "",
        "| path (1 process) | windows | wall s | CPU s | windows per CPU-s | x naive | x per-window "
        f"{'| x TIAToolbox ' if ref == 'tiatoolbox' else ''}| tile decodes per window |",
        f"|---|---:|---:|---:|---:|---:|---:|{'---:|' if ref == 'tiatoolbox' else ''}---:|",
    ]
    for key, (n, wall, cpu) in acc.items():
        tia = f"| {rate[key] / rate[ref]:.2f} " if ref == "tiatoolbox" else ""
        lines.append(
            f"| {label[key]} | {n} | {wall:.2f} | {cpu:.2f} | {rate[key]:.1f} | {rate[key] / rate['naive']:.1f} "
            f"| {rate[key] / rate['per-window']:.2f} {tia}| {decodes[key]:.2f} |"
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
    ap.add_argument("--rss-size", type=int, default=0, help="also measure the strip reader on a slide this large")
    ap.add_argument("--keep", action="store_true", help="keep the --rss-size slide")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    text = "\n".join(run(args)) + "\n"
    print(text, flush=True)
    if args.out:
        with args.out.open("a", encoding="utf-8") as fh:
            fh.write("\n" + text)


if __name__ == "__main__":
    main()
