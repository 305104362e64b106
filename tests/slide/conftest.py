"""Fixtures for the slide tests: a synthetic Aperio-style pyramid and the shared real slides.

Kept here (not in an importable helper) because tests run with ``--import-mode=importlib``;
test files get ``SyntheticSlide`` only for type checking.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

SLIDES_ROOT = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "slides"
LABEL_RGB = (30, 60, 200)
MACRO_RGB = (200, 60, 30)


@dataclass(frozen=True)
class SyntheticSlide:
    path: Path
    levels: tuple[np.ndarray, ...]  # what was written, level 0 first
    downsamples: tuple[int, ...]
    label_rgb: tuple[int, int, int] = LABEL_RGB
    macro_rgb: tuple[int, int, int] = MACRO_RGB


def make_rgb(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth pink/purple texture with blobs: JPEG-friendly, yet not constant anywhere."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.empty((height, width, 3), np.float32)
    img[..., 0] = 200 + 40 * np.sin(xx / 97.0) * np.cos(yy / 131.0)
    img[..., 1] = 150 + 60 * np.sin((xx + yy) / 173.0)
    img[..., 2] = 190 + 50 * np.cos(xx / 211.0 - yy / 89.0)
    for _ in range(12):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(40, 160)
        blob = ((xx - cx) ** 2 + (yy - cy) ** 2) < r * r
        img[blob] = img[blob] * 0.5 + np.array([90, 40, 140], np.float32) * 0.5
    return np.clip(img, 0, 255).astype(np.uint8)


def shrink(arr: np.ndarray, factor: int) -> np.ndarray:
    h, w = arr.shape[0] // factor, arr.shape[1] // factor
    return np.asarray(Image.fromarray(arr).resize((w, h), Image.Resampling.BOX))


def write_aperio_tiff(
    path: Path, base: np.ndarray, downsamples: tuple[int, ...] = (1, 4, 16), mpp: float = 0.5
) -> tuple[np.ndarray, ...]:
    """Write an Aperio-layout SVS: tiled JPEG levels, stripped thumbnail, label and macro."""
    height, width = base.shape[:2]
    head = "Aperio Image Library v12.0.15 \r\n"
    desc = f"{head}{width}x{height} [0,0 {width}x{height}] (256x256) JPEG/RGB Q=95"
    desc += f"|AppMag = 20|MPP = {mpp:.4f}|Filename = synthetic"
    tiled = {"photometric": "rgb", "compression": "jpeg", "compressionargs": {"level": 95}}
    tiled |= {"tile": (256, 256), "metadata": None}
    levels = tuple(base if d == 1 else shrink(base, d) for d in downsamples)
    with tifffile.TiffWriter(path) as tw:
        tw.write(levels[0], description=desc, **tiled)
        thumb = shrink(base, 16)
        tw.write(thumb, photometric="rgb", compression="jpeg", metadata=None, description=head)
        for level in levels[1:]:
            tw.write(level, description=f"{head}{width}x{height} -> {level.shape[1]}", **tiled)
        label = np.full((60, 100, 3), LABEL_RGB, np.uint8)
        tw.write(
            label,
            subfiletype=1,
            photometric="rgb",
            compression="lzw",
            metadata=None,
            description=f"{head}label 100x60",
        )
        macro = np.full((80, 200, 3), MACRO_RGB, np.uint8)
        tw.write(
            macro,
            subfiletype=9,
            photometric="rgb",
            compression="lzw",
            metadata=None,
            description=f"{head}macro 200x80",
        )
    return levels


@pytest.fixture(scope="session")
def aperio_slide(tmp_path_factory: pytest.TempPathFactory) -> SyntheticSlide:
    path = tmp_path_factory.mktemp("slide") / "synthetic slide (1).svs"
    base = make_rgb(2048, 1536, np.random.default_rng(7))
    levels = write_aperio_tiff(path, base)
    return SyntheticSlide(path=path, levels=levels, downsamples=(1, 4, 16))


@pytest.fixture(scope="session")
def slides_root() -> Path:
    if not SLIDES_ROOT.is_dir():
        pytest.skip(f"shared slides not present at {SLIDES_ROOT}")
    return SLIDES_ROOT
