"""Benchmark the streaming stitcher + mask TIFF writer on virtual slides of growing size.

Every window of a W0=1000 / S0=500 grid on a square level-0 slide is "predicted" by a stand-in
model that cycles through 8 cached random probability maps (224 x 224, 4 classes), blended by
``BandStitcher`` and streamed into ``MaskTiffWriter`` in a temporary folder. Each size runs in a
fresh subprocess so that ``ru_maxrss`` (peak RSS) belongs to that size alone.

Usage::

    .venv/bin/python benchmarks/bench_stitch.py                 # 25k, 50k, 100k
    .venv/bin/python benchmarks/bench_stitch.py --sizes 25000 --probs
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

WINDOW0, STRIDE0, OUT, CLASSES = 1000, 500, 224, 4


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_one(size0: int, probs: bool, seed: int = 0) -> dict[str, float]:
    """Stitch and write one virtual ``size0`` x ``size0`` slide; return timings and memory."""
    from wsiseg.classes import DEFAULT_CLASSES
    from wsiseg.export.sinks import StitchSink, open_prob_writers
    from wsiseg.export.tiff import MaskTiffWriter
    from wsiseg.inference.stitching import BandStitcher, band_memory_bytes, stitch_geometry

    rss_start = _rss_mib()
    rng = np.random.default_rng(seed)
    # smooth stand-in outputs (bilinear upsampling of 8 x 8 noise): real masks are blobby, and
    # per-pixel noise would only measure zlib on incompressible data
    coarse = rng.normal(scale=3.0, size=(8, CLASSES, 8, 8))
    t = np.linspace(0, 7, OUT)
    i0 = np.minimum(t.astype(int), 6)
    f = (t - i0)[:, None]
    rows = coarse[:, :, i0] * (1 - f) + coarse[:, :, i0 + 1] * f
    logits = (rows[..., i0] * (1 - f.T) + rows[..., i0 + 1] * f.T).astype(np.float32)
    cached = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    g = stitch_geometry(size0, size0, WINDOW0, STRIDE0, OUT)
    grid0 = range(0, size0 - WINDOW0 + 1, STRIDE0)
    mpp = 0.25 / g.scale
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "mask.tif"
        kw = {"mpp": mpp, "classes": DEFAULT_CLASSES}
        writers = open_prob_writers(out, g.width, g.height, **kw) if probs else []
        sink = StitchSink(MaskTiffWriter(out, g.width, g.height, **kw), writers)
        st = BandStitcher(g.width, g.height, g.window, g.stride, CLASSES, sink, emit_probs=probs)
        t0, c0 = time.perf_counter(), time.process_time()
        n = 0
        for y0 in grid0:
            for x0 in grid0:
                st.add(g.to_output(x0), g.to_output(y0), cached[n % 8])
                n += 1
        st.finish()
        t1, c1 = time.perf_counter(), time.process_time()
        for w in sink.writers():
            w.close()
        t2, c2 = time.perf_counter(), time.process_time()
        tiff_mb = sum(p.stat().st_size for p in Path(tmp).glob("*.tif")) / 1e6
    return {
        "size0": size0,
        "mask": g.width,
        "windows": n,
        "ms_per_window": 1e3 * (t1 - t0) / n,
        "cpu_ms_per_window": 1e3 * (c1 - c0) / n,
        "tiff_cpu_s": c2 - c1,
        "stitch_s": t1 - t0,
        "tiff_s": t2 - t1,
        "band_mib": band_memory_bytes(g.width, g.window, CLASSES) / 2**20,
        "rss_start_mib": rss_start,
        "peak_rss_mib": _rss_mib(),
        "tiff_mb": tiff_mb,
    }


def main() -> None:
    """Run every size in its own process and print a markdown table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[25_000, 50_000, 100_000])
    ap.add_argument("--probs", action="store_true", help="also write 4 probability-map TIFFs")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.probs)))
        return
    print(
        "| level-0 size | mask px | windows | stitch ms/window (CPU) | stitch s | TIFF s (CPU) "
        "| band MiB | RSS after imports MiB | peak RSS MiB | TIFF MB"
        + (" (labels + 4 prob maps) |" if args.probs else " |")
    )
    print("|---" * 10 + "|")
    for size in args.sizes:
        cmd = [sys.executable, __file__, "--one", str(size)] + (["--probs"] if args.probs else [])
        r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        print(
            f"| {r['size0']:,} | {r['mask']:,}² | {r['windows']:,} | {r['ms_per_window']:.2f} "
            f"({r['cpu_ms_per_window']:.2f}) | {r['stitch_s']:.1f} | {r['tiff_s']:.1f} "
            f"({r['tiff_cpu_s']:.1f}) | {r['band_mib']:.0f} | {r['rss_start_mib']:.0f} "
            f"| {r['peak_rss_mib']:.0f} | {r['tiff_mb']:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
