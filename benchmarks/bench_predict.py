"""Whole-slide prediction: peak memory as the slide grows, stitcher cost, end-to-end windows/s.

(a) ``--rss``: a virtual slide (``VirtualSlide``: the ``Slide`` surface that ``plan_prediction`` and
    ``run_prediction`` use, with generated pixels) of 25k, 50k and 100k px square is planned, predicted with
    a cheap stand-in model (per-pixel affine map of the mean RGB to 4 logits) and written to a pyramidal
    mask TIFF through ``MaskTiffWriter`` + ``StitchSink``, i.e. the body of ``predict_to_tiff`` with the slide injected
    (``predict_to_tiff`` opens the slide from a path itself). Each size runs in a fresh subprocess and
    reports ``ru_maxrss``. Target: < 1 GiB and flat as the slide grows.
(b) Same subprocess, afterwards: the stitcher + TIFF writer alone fed the same windows with a cached
    probability map, i.e. the stitcher's share of the per-window cost.
(c) ``--real``: ``predict_to_tiff`` on a generated 4096 x 3072 slide with ``dhunet_tiny`` (224 px), and
    with full ``dhunet`` on a 2048 x 1536 slide (a handful of windows), on CPU.
(d) ``--gpu`` (CUDA only; owed when there is none): ``dhunet`` windows/s via ``predict_to_tiff`` with
    bf16 autocast, channels_last and DataLoader workers, against fp32 without channels_last.

Usage::

    .venv/bin/python benchmarks/bench_predict.py --rss --real           # CPU parts
    .venv/bin/python benchmarks/bench_predict.py --rss --sizes 25000    # quick
    .venv/bin/python benchmarks/bench_predict.py --gpu --out benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from wsiseg.classes import DEFAULT_CLASSES
from wsiseg.tiling import TilingConfig

CLASSES = 4


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class VirtualSlide:
    """A square slide with levels 1, 4, 16 whose pixels are generated, not read from disk.

    Tissue is a disc covering ~64 % of the slide (so ~64 % of the windows are predicted); every
    ``read_region`` returns a copy of a cached random pink texture of the requested size.

    Args:
        size: Level-0 side in px.
        seed: Texture seed.
    """

    def __init__(self, size: int, seed: int = 0) -> None:
        self.dimensions = (size, size)
        self.level_downsamples = (1.0, 4.0, 16.0)
        self.mpp: tuple[float, float] | None = (0.25, 0.25)
        self.path = Path(f"virtual_{size}.svs")
        rng = np.random.default_rng(seed)
        base = np.array([200, 120, 170], dtype=np.int16)
        noise = rng.integers(-30, 31, size=(1024, 1024, 3), dtype=np.int16)
        self._texture = (base + noise).clip(0, 255).astype(np.uint8)

    def get_thumbnail(self, max_size: int) -> np.ndarray:
        """White background with a pink disc of radius 0.45 of the side."""
        n = min(max_size, self.dimensions[0])
        yy, xx = np.mgrid[0:n, 0:n]
        disc = (xx - n / 2) ** 2 + (yy - n / 2) ** 2 < (0.45 * n) ** 2
        thumb = np.full((n, n, 3), 245, dtype=np.uint8)
        thumb[disc] = (200, 120, 170)
        return thumb

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """Generated RGB pixels of the requested size (location and level only shift the texture)."""
        w, h = size
        ox = (location[0] // int(self.level_downsamples[level])) % 256
        return np.ascontiguousarray(self._texture[ox : ox + h, :w])


class StandIn(nn.Module):
    """Cheap segmentation stand-in: class logits ``w_c * mean_rgb + b_c`` (fixed ``w``, ``b``)."""

    num_classes = CLASSES

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("w", torch.linspace(-1.0, 1.0, CLASSES).reshape(1, CLASSES, 1, 1))
        self.register_buffer("b", torch.linspace(0.5, -0.5, CLASSES).reshape(1, CLASSES, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``(B, 4, H, W)`` logits."""
        return x.mean(1, keepdim=True) * self.w + self.b


def rss_one(size: int, batch: int, threads: int) -> dict[str, float]:
    """Plan, predict, stitch and write one virtual slide; then time the stitcher alone on the same plan."""
    from wsiseg.export.sinks import StitchSink
    from wsiseg.export.tiff import MaskTiffWriter
    from wsiseg.inference.predictor import PredictSettings, plan_prediction, run_prediction
    from wsiseg.inference.stitching import BandStitcher

    torch.set_num_threads(threads)  # the stand-in needs none; OpenMP spinning only hurts on a shared CPU
    tiling = TilingConfig()
    slide, model = VirtualSlide(size), StandIn()
    rss_start = _rss_mib()
    t0, c0 = time.perf_counter(), _cpu_s()
    plan = plan_prediction(slide, tiling)  # type: ignore[arg-type]
    geo = plan.geometry
    with tempfile.TemporaryDirectory() as tmp:
        writer = MaskTiffWriter(Path(tmp) / "mask.tif", geo.width, geo.height, mpp=plan.mask_mpp,
                                classes=DEFAULT_CLASSES, downsample_to_level0=1.0 / geo.scale)  # fmt: skip
        settings = PredictSettings(batch_size=batch, workers=0, device="cpu", threads=threads)
        stats = run_prediction(slide, model, plan, tiling, StitchSink(writer), settings)  # type: ignore[arg-type]
        writer.close()
        t1, c1 = time.perf_counter(), _cpu_s()
        peak = _rss_mib()
        tiff_mb = writer.path.stat().st_size / 1e6
        probs = torch.softmax(model(torch.zeros(1, 3, tiling.size, tiling.size)), 1)[0].detach().numpy()
        w2 = MaskTiffWriter(Path(tmp) / "mask2.tif", geo.width, geo.height, mpp=plan.mask_mpp, classes=DEFAULT_CLASSES)
        st = BandStitcher(geo.width, geo.height, geo.window, geo.stride, CLASSES, StitchSink(w2))
        t2, c2 = time.perf_counter(), _cpu_s()
        for x0, y0 in plan.origins:
            st.add(geo.to_output(x0), geo.to_output(y0), probs)
        st.finish()
        w2.close()
        t3, c3 = time.perf_counter(), _cpu_s()
    n = len(plan.origins)
    return {
        "size": size, "mask": geo.width, "windows": n, "grid": plan.n_grid, "wall_s": t1 - t0, "cpu_s": c1 - c0,
        "loop_s": stats["seconds"], "rss_start": rss_start, "peak": peak, "tiff_mb": tiff_mb,
        "stitch_ms": 1e3 * (t3 - t2) / n, "stitch_cpu_ms": 1e3 * (c3 - c2) / n,
    }  # fmt: skip


def rss_table(sizes: list[int], batch: int, threads: int) -> list[str]:
    """Run every size in its own subprocess; return markdown lines."""
    lines = [
        f"### bench_predict (a, b): virtual slides, stand-in model, batch {batch}, "
        f"{threads} torch thread(s), CPU, mask TIFF written",
        "",
        "| level-0 side | mask px | windows predicted / grid | wall s (plan+predict+TIFF) | CPU s | windows/s (loop) "
        "| RSS after imports MiB "
        "| **peak RSS MiB** | TIFF MB | stitch+TIFF alone ms/window (CPU) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size in sizes:
        cmd = [sys.executable, __file__, "--one", str(size), "--batch", str(batch), "--threads", str(threads)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        lines.append(
            f"| {r['size']:,} | {r['mask']:,}² | {r['windows']:,} / {r['grid']:,} | {r['wall_s']:.1f} "
            f"| {r['cpu_s']:.1f} | {r['windows'] / r['loop_s']:.0f} | {r['rss_start']:.0f} | **{r['peak']:.0f}** "
            f"| {r['tiff_mb']:.1f} | {r['stitch_ms']:.2f} ({r['stitch_cpu_ms']:.2f}) |"
        )
        print(lines[-1], flush=True)
    return lines


def _slide(work: Path, w: int, h: int, seed: int) -> Path:
    from wsiseg.testing.synthetic import make_slide

    path = work / f"predict_bench_{w}x{h}_s{seed}.svs"
    if not path.is_file():
        make_slide(path, width=w, height=h, seed=seed)
    return path


def real_row(work: Path, name: str, path: Path, settings: Any, label: str) -> str:
    """``predict_to_tiff`` with a real (randomly initialised) model; one markdown row."""
    from wsiseg.export.slide_mask import predict_to_tiff
    from wsiseg.models import create_model

    torch.manual_seed(0)
    model = create_model(name, pretrained=False, num_classes=CLASSES).to(settings.device)
    if settings.device.startswith("cuda") and settings.channels_last:
        model = model.to(memory_format=torch.channels_last)
    out = Path(tempfile.mkdtemp(dir=work)) / "mask.tif"
    t0, c0 = time.perf_counter(), _cpu_s()
    res = predict_to_tiff(path, model, out, tiling=TilingConfig(), classes=DEFAULT_CLASSES, settings=settings)
    wall, cpu = time.perf_counter() - t0, _cpu_s() - c0
    return (
        f"| {name} | {label} | {path.stem} | {res.windows} / {res.grid_windows} | {wall:.1f} | {cpu:.1f} "
        f"| {res.windows / res.seconds:.2f} | {res.windows / wall:.2f} |"
    )


def real_table(work: Path, threads: int) -> list[str]:
    """(c): CPU end-to-end with ``dhunet_tiny`` and full ``dhunet``."""
    from wsiseg.inference.predictor import PredictSettings

    torch.set_num_threads(threads)
    cpu = PredictSettings(batch_size=8, workers=0, device="cpu", threads=threads)
    lines = _real_header(f"CPU, {torch.get_num_threads()} threads, batch 8, loader workers 0, fp32")
    lines.append(real_row(work, "dhunet_tiny", _slide(work, 4096, 3072, 3), cpu, "fp32"))
    print(lines[-1], flush=True)
    lines.append(real_row(work, "dhunet", _slide(work, 2048, 1536, 4), cpu, "fp32"))
    print(lines[-1], flush=True)
    return lines


def gpu_table(work: Path, workers: int) -> list[str]:
    """(d): DHUnet on CUDA, bf16 + channels_last + loader workers against plain fp32."""
    from wsiseg.inference.predictor import PredictSettings

    if not torch.cuda.is_available():
        return ["(d) skipped: no CUDA device"]
    path = _slide(work, 20_000, 20_000, 1)
    warm = _slide(work, 4096, 3072, 3)
    lines = _real_header(f"{torch.cuda.get_device_name()}, 20000² synthetic slide")
    plans = [
        ("fp32", PredictSettings(batch_size=64, workers=workers, device="cuda", amp=False, channels_last=False)),
        ("bf16+channels_last", PredictSettings(batch_size=64, workers=workers, device="cuda")),
        ("bf16+channels_last, workers 0", PredictSettings(batch_size=64, workers=0, device="cuda")),
    ]
    for label, s in plans:
        real_row(work, "dhunet", warm, s, label)  # warm-up (cuDNN autotune, worker start)
        lines.append(real_row(work, "dhunet", path, s, f"{label}, batch 64, workers {s.workers}"))
        print(lines[-1], flush=True)
    return lines


def _real_header(note: str) -> list[str]:
    return [
        f"### bench_predict (c/d): `predict_to_tiff` end to end, {note}",
        "",
        "| model | settings | slide | windows / grid | wall s (incl. plan + TIFF) | CPU s | windows/s (loop) "
        "| windows/s (end to end) |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]


def main() -> None:
    """Parse arguments, run the chosen parts, print (and append) the tables."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rss", action="store_true", help="(a)+(b) virtual slides in subprocesses")
    ap.add_argument("--sizes", type=int, nargs="+", default=[25_000, 50_000, 100_000])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads for (a) and (c)")
    ap.add_argument("--real", action="store_true", help="(c) dhunet_tiny and dhunet on CPU")
    ap.add_argument("--gpu", action="store_true", help="(d) dhunet on CUDA")
    ap.add_argument("--gpu-workers", type=int, default=min(8, os.cpu_count() or 1))
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "wsiseg-bench")
    ap.add_argument("--out", type=Path, help="append the markdown tables to this file")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(rss_one(args.one, args.batch, args.threads)))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    if args.rss:
        lines += [*rss_table(args.sizes, args.batch, args.threads), ""]
    if args.real:
        lines += [*real_table(args.work, args.threads), ""]
    if args.gpu:
        lines += [*gpu_table(args.work, args.gpu_workers), ""]
    text = "\n".join(lines)
    print(text, flush=True)
    if args.out and lines:
        with args.out.open("a", encoding="utf-8") as fh:
            fh.write("\n" + text)


if __name__ == "__main__":
    main()
