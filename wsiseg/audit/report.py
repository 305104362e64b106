"""Audit outputs: CSV, JSON and a figure, all written into a scratch folder and moved into place at the end.

The figure is the paper's Fig. 3 made complete: for each scenario, the true tile, then the reconstruction
under every protection, each with its PSNR / SSIM and the accountant's epsilon under it, and the two
baselines' scores in the row title.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from wsiseg.audit.attack import AttackRow

__all__ = ["epsilon_text", "output_folder", "write_canary", "write_invert"]

CELL = 128
TEXT_H = 46


def epsilon_text(eps: float | None) -> str:
    """The accountant's epsilon in words (``none`` without noise)."""
    if eps is None:
        return "none (no noise)"
    if math.isinf(eps):
        return "inf (too little noise to account)"
    return f"{eps:.3g}" + (" (meaningless)" if eps > 10 else "")


@contextmanager
def output_folder(out: Path) -> Iterator[Path]:
    """A scratch folder next to ``out``; its files replace those in ``out`` only when the block succeeds."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        out.mkdir(exist_ok=True)
        for f in sorted(tmp.iterdir()):
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _tile(img: torch.Tensor) -> Image.Image:
    arr = (img.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(arr).resize((CELL, CELL), Image.Resampling.NEAREST)


def _short(label: str) -> str:
    return label if len(label) <= 30 else label[:29] + "."


def figure(rows: Sequence[AttackRow], truth: torch.Tensor, title: str) -> Image.Image:
    """The grid: one line per scenario, true tile first, then one reconstruction per protection."""
    font = ImageFont.load_default()
    scenarios = list(dict.fromkeys(r.scenario for r in rows))
    cols = 1 + max(sum(r.scenario == s for r in rows) for s in scenarios)
    col_w, row_h = CELL + 40, CELL + TEXT_H + 18
    fig = Image.new("RGB", (cols * col_w + 10, 22 + len(scenarios) * row_h), "white")
    draw = ImageDraw.Draw(fig)
    draw.text((6, 4), title, fill="black", font=font)
    for i, sc in enumerate(scenarios):
        group = [r for r in rows if r.scenario == sc]
        y = 22 + i * row_h
        base = group[0]
        draw.text((6, y), f"{sc}: batch {base.batch}, {base.local_steps} local step(s); baselines mean colour "
                          f"{base.baseline_mean_psnr:.1f} dB / {base.baseline_mean_ssim:.2f}, random tile "
                          f"{base.baseline_random_psnr:.1f} dB / {base.baseline_random_ssim:.2f}", fill="black",
                  font=font)  # fmt: skip
        fig.paste(_tile(truth[0]), (6, y + 14))
        draw.text((6, y + 16 + CELL), "true tile", fill="black", font=font)
        for j, r in enumerate(group, start=1):
            x = 6 + j * col_w
            if r.images is not None:
                fig.paste(_tile(r.images[0]), (x, y + 14))
            lines = [_short(r.condition), f"PSNR {r.psnr:.1f} dB  SSIM {r.ssim:.2f}",
                     f"eps {epsilon_text(r.epsilon)}"]  # fmt: skip
            for k, line in enumerate(lines):
                draw.text((x, y + 16 + CELL + 11 * k), line, fill="black", font=font)
    return fig


def write_invert(out: Path, rows: Sequence[AttackRow], truth: torch.Tensor, meta: dict[str, Any]) -> list[Path]:
    """``invert.csv``, ``invert.json`` and ``invert.png`` in ``out`` (replaced together at the end)."""
    with output_folder(out) as tmp:
        dicts = [r.to_dict() for r in rows]
        with (tmp / "invert.csv").open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(dicts[0]))
            writer.writeheader()
            writer.writerows(dicts)
        (tmp / "invert.json").write_text(json.dumps({**meta, "attacks": dicts}, indent=2), encoding="utf-8")
        figure(rows, truth, str(meta.get("title", ""))).save(tmp / "invert.png")
    return [out / n for n in ("invert.csv", "invert.json", "invert.png")]


def write_canary(out: Path, summary: dict[str, Any], scores: Sequence[float], included: Sequence[bool]) -> list[Path]:
    """``canary.json`` (the bound beside the accountant's epsilon) and ``canary.csv`` (every canary's score)."""
    with output_folder(out) as tmp:
        (tmp / "canary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
        with (tmp / "canary.csv").open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["canary", "included", "score"])
            w.writerows([j, int(inc), f"{s:.6g}"] for j, (s, inc) in enumerate(zip(scores, included, strict=True)))
    return [out / "canary.json", out / "canary.csv"]
