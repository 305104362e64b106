"""Synthetic H&E cohorts: Aperio-style pyramidal TIFFs with exact ground-truth label masks.

``make_slide`` writes a tiled JPEG pyramid that openslide recognises as ``aperio`` (page 0 level 0, page 1
a stripped thumbnail, then reduced levels at downsample 4, 16, ...; MPP and AppMag in the Aperio
ImageDescription) and a ``<stem>_mask.png`` of class ids at ``mask_downsample``. Level 0 is rendered tile by
tile from coarse low-frequency fields and periodic textures, so a 20000 x 20000 slide needs no full-size
array. Classes are ``wsiseg.classes.DEFAULT_CLASSES``: 0 background, 1 tumour (crowded dark nuclei),
2 stroma (pink fibres), 3 normal (airy alveoli). With several sites, each site has its own stain shift and
class proportions (non-IID).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from wsiseg.classes import DEFAULT_CLASSES, WSSS4LUAD_PALETTE_REMAP
from wsiseg.errors import ConfigError, DataError
from wsiseg.testing._texture import Scene, build_scene, label_mask, render_scene

__all__ = [
    "WSSS4LUAD_COLORS",
    "SyntheticSlide",
    "make_cohort",
    "make_patch_image",
    "make_slide",
    "render_level0",
    "write_cohort_csv",
    "write_wsss4luad_palette_mask",
]

#: Palette of WSSS4LUAD masks: index 0 tumour, 1 stroma, 2 normal, 3 background.
WSSS4LUAD_COLORS = ((0, 64, 128), (64, 128, 0), (243, 152, 0), (255, 255, 255))
_SLIDE_TISSUE = (0.4, 0.6)  # range of the tissue fraction of a slide


@dataclass(frozen=True)
class SyntheticSlide:
    """A generated slide (or patch image) and its ground-truth mask."""

    slide_path: Path
    mask_path: Path
    width: int
    height: int
    mpp: float
    mask_downsample: int
    site: int
    class_fractions: dict[str, float]
    seed: int = 0


def _reduce4(img: np.ndarray) -> np.ndarray:
    """Area-average by 4 (ceil size, edge pixels replicated)."""
    h, w = img.shape[:2]
    ph, pw = (-h) % 4, (-w) % 4
    if ph or pw:
        img = np.pad(img, ((0, ph), (0, pw), (0, 0)), mode="edge")
    acc = img.astype(np.uint16)
    acc = acc[0::4] + acc[1::4] + acc[2::4] + acc[3::4]
    acc = acc[:, 0::4] + acc[:, 1::4] + acc[:, 2::4] + acc[:, 3::4]
    return ((acc + 8) >> 4).astype(np.uint8)


def _level0_tiles(scene: Scene, labels: np.ndarray, ds: int, tile: int, level1: np.ndarray) -> Iterator[np.ndarray]:
    """Yield level-0 tiles in row-major order and fill ``level1`` (downsample 4) on the way."""
    for y0 in range(0, scene.height, tile):
        for x0 in range(0, scene.width, tile):
            rgb = render_scene(scene, labels, ds, y0, x0, tile, tile)
            small = _reduce4(rgb)
            ly, lx = y0 // 4, x0 // 4
            hh, ww = min(small.shape[0], level1.shape[0] - ly), min(small.shape[1], level1.shape[1] - lx)
            level1[ly : ly + hh, lx : lx + ww] = small[:hh, :ww]
            yield rgb


def _describe(width: int, height: int, tail: str, *, head: str = "", size: tuple[int, int] | None = None) -> str:
    """Aperio ImageDescription: level 0 (``head``) or a reduced image of ``size`` (w, h)."""
    if size is None:
        dims = f"{width}x{height} [0,0 {width}x{height}] {head}"
    else:
        dims = f"{width}x{height} -> {size[0]}x{size[1]} - "
    return f"Aperio Image Library v12.0.15 \r\n{dims}|{tail}"


def _validate(width: int, height: int, mpp: float, tile: int, ds: int, quality: int) -> None:
    if width < 16 or height < 16:
        msg = f"slide size {width}x{height} is too small; use width and height >= 16"
        raise ConfigError(msg)
    if not mpp > 0:
        msg = f"mpp must be > 0, got {mpp}; pass the microns per pixel of level 0, e.g. 0.5"
        raise ConfigError(msg)
    if tile < 16 or tile % 16:
        msg = f"tile must be a positive multiple of 16 (TIFF rule), got {tile}"
        raise ConfigError(msg)
    if ds < 1:
        msg = f"mask_downsample must be >= 1, got {ds}"
        raise ConfigError(msg)
    if not 1 <= quality <= 100:
        msg = f"JPEG quality must be in 1..100, got {quality}"
        raise ConfigError(msg)


def _fractions(labels: np.ndarray) -> dict[str, float]:
    counts = np.bincount(labels.ravel(), minlength=len(DEFAULT_CLASSES))
    return {n: float(c) / labels.size for n, c in zip(DEFAULT_CLASSES.names, counts, strict=True)}


def make_slide(
    path: str | Path,
    *,
    width: int,
    height: int,
    seed: int,
    mpp: float = 0.5,
    tile: int = 256,
    quality: int = 85,
    mask_downsample: int = 4,
    site: int = 0,
    min_level_size: int = 512,
) -> SyntheticSlide:
    """Write a synthetic Aperio-style slide and its ground-truth mask ``<stem>_mask.png``.

    Args:
        path: Output ``.svs``/``.tif`` path (parent folders are created).
        width: Level-0 width in pixels.
        height: Level-0 height in pixels.
        seed: Layout and texture seed; the same arguments give the same pixels and mask.
        mpp: Microns per pixel of level 0 (written as ``MPP``; ``AppMag = 10 / mpp``).
        tile: TIFF tile side in pixels (multiple of 16).
        quality: JPEG quality.
        mask_downsample: Downsample of the mask relative to level 0 (size ``ceil(slide / ds)``).
        site: Site (hospital) index; sites > 0 get a stain shift and other class proportions.
        min_level_size: Reduced levels (downsample 4, 16, ...) are written while their longer side is
            at least this.

    Returns:
        The written ``SyntheticSlide``.

    Raises:
        ConfigError: If a size, mpp, tile, downsample or quality is invalid.
    """
    import tifffile

    _validate(width, height, mpp, tile, mask_downsample, quality)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mask_path = path.with_name(f"{path.stem}_mask.png")
    scene = build_scene(width, height, seed, site, tissue_frac=_SLIDE_TISSUE)
    labels = label_mask(scene, mask_downsample)
    Image.fromarray(labels).save(mask_path)
    levels = [np.zeros((math.ceil(height / 4), math.ceil(width / 4), 3), dtype=np.uint8)]
    tail = f"AppMag = {10 / mpp:g}|ScanScope ID = WSISEG-SYNTH|Filename = {path.stem}|MPP = {mpp}"
    opts: dict[str, Any] = {"photometric": "rgb", "metadata": None, "software": "wsiseg.testing", "maxworkers": 1}
    jpeg: dict[str, Any] = {"compression": "jpeg", "compressionargs": {"level": quality}}
    with tifffile.TiffWriter(path, bigtiff=width * height * 3 > 3_500_000_000) as tw:
        head = f"({tile}x{tile}) JPEG/RGB Q={quality}"
        tw.write(
            _level0_tiles(scene, labels, mask_downsample, tile, levels[0]),
            shape=(height, width, 3),
            dtype=np.uint8,
            tile=(tile, tile),
            description=_describe(width, height, tail, head=head),
            **jpeg,
            **opts,
        )
        while max(levels[-1].shape[:2]) >= 4 * min_level_size:
            levels.append(_reduce4(levels[-1]))
        thumb = Image.fromarray(levels[0])
        thumb.thumbnail((768, 768), Image.Resampling.BILINEAR)
        tw.write(
            np.asarray(thumb),
            description=_describe(width, height, tail, size=thumb.size),
            rowsperstrip=16,
            **jpeg,
            **opts,
        )
        for arr in levels:
            if max(arr.shape[:2]) < min_level_size:
                break
            size = (arr.shape[1], arr.shape[0])
            desc = _describe(width, height, tail, size=size)
            tw.write(arr, tile=(tile, tile), description=desc, **jpeg, **opts)
    fractions = _fractions(labels)
    return SyntheticSlide(path, mask_path, width, height, float(mpp), mask_downsample, site, fractions, seed)


def render_level0(slide: SyntheticSlide, x: int, y: int, width: int, height: int) -> np.ndarray:
    """Re-render the exact level-0 pixels (before JPEG) of a region of a ``make_slide`` slide.

    Args:
        slide: A slide returned by ``make_slide`` (its mask file must exist).
        x: Left level-0 column.
        y: Top level-0 row.
        width: Region width.
        height: Region height.

    Returns:
        ``(height, width, 3)`` uint8 RGB; pixels outside the slide are rendered as background.
    """
    scene = build_scene(slide.width, slide.height, slide.seed, slide.site, tissue_frac=_SLIDE_TISSUE)
    labels = np.asarray(Image.open(slide.mask_path))
    return render_scene(scene, labels, slide.mask_downsample, y, x, height, width)


def make_cohort(
    out_dir: str | Path,
    *,
    n_slides: int = 6,
    width: int = 4096,
    height: int = 3072,
    seed: int = 0,
    mpp: float = 0.5,
    n_sites: int = 1,
    on_slide: Callable[[SyntheticSlide], None] | None = None,
    **kw: int,
) -> list[SyntheticSlide]:
    """Write ``slide_000.svs``... with masks and a ``cohort.csv`` (slide, mask, site, width, height, mpp).

    Args:
        out_dir: Output folder (created).
        n_slides: Number of slides.
        width: Level-0 width of every slide.
        height: Level-0 height of every slide.
        seed: Cohort seed; slide ``i`` uses a seed derived from ``(seed, i)``.
        mpp: Microns per pixel of level 0.
        n_sites: Number of sites; slide ``i`` belongs to site ``i % n_sites``.
        on_slide: Called after each slide is written (progress reporting).
        **kw: Passed to ``make_slide`` (``tile``, ``quality``, ``mask_downsample``, ``min_level_size``).

    Returns:
        The slides in order.

    Raises:
        ConfigError: If ``n_slides`` or ``n_sites`` is < 1, or a slide argument is invalid.
    """
    if n_slides < 1 or n_sites < 1:
        msg = f"n_slides and n_sites must be >= 1, got {n_slides} and {n_sites}"
        raise ConfigError(msg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    slides = []
    for i in range(n_slides):
        slide = make_slide(
            out / f"slide_{i:03d}.svs",
            width=width,
            height=height,
            seed=int(np.random.SeedSequence([seed, i]).generate_state(1)[0]),
            mpp=mpp,
            site=i % n_sites,
            **kw,
        )
        slides.append(slide)
        if on_slide is not None:
            on_slide(slide)
    write_cohort_csv(slides, out / "cohort.csv")
    return slides


def write_cohort_csv(slides: list[SyntheticSlide], path: Path) -> None:
    """Write the cohort table (paths relative to the csv's folder)."""
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["slide", "mask", "site", "width", "height", "mpp"])
        for s in slides:
            rel = [p.relative_to(path.parent).as_posix() for p in (s.slide_path, s.mask_path)]
            writer.writerow([*rel, s.site, s.width, s.height, s.mpp])


def make_patch_image(
    path: str | Path, *, size: tuple[int, int] = (600, 400), seed: int, site: int = 0
) -> SyntheticSlide:
    """Write a small plain RGB PNG (a WSSS4LUAD-like patch) and its ``<stem>_mask.png`` (ids, mode L).

    Args:
        path: Output PNG path.
        size: ``(width, height)`` in pixels.
        seed: Seed of the content.
        site: Site index (stain shift and class proportions).

    Returns:
        The written patch as a ``SyntheticSlide`` (mask at downsample 1, mpp 0.5).

    Raises:
        ConfigError: If the size is smaller than 16 x 16.
    """
    width, height = size
    _validate(width, height, 0.5, 16, 1, 85)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scene = build_scene(width, height, seed, site, tissue_frac=(0.75, 0.9))
    labels = label_mask(scene, 1)
    rgb = render_scene(scene, labels, 1, 0, 0, height, width)
    Image.fromarray(rgb).save(path)
    mask_path = path.with_name(f"{path.stem}_mask.png")
    Image.fromarray(labels).save(mask_path)
    return SyntheticSlide(path, mask_path, width, height, 0.5, 1, site, _fractions(labels), seed)


def write_wsss4luad_palette_mask(labels: np.ndarray, path: str | Path) -> Path:
    """Write our class ids as a WSSS4LUAD palette PNG (0 tumour, 1 stroma, 2 normal, 3 background).

    Args:
        labels: ``(h, w)`` integer class ids of ``DEFAULT_CLASSES`` (0..3).
        path: Output PNG path.

    Returns:
        The path written.

    Raises:
        DataError: If ``labels`` is not 2-D or holds ids outside 0..3.
    """
    labels = np.asarray(labels)
    n = len(WSSS4LUAD_PALETTE_REMAP)
    if labels.ndim != 2 or labels.size == 0 or labels.min() < 0 or labels.max() >= n:
        msg = f"labels for {path} must be a 2-D array of class ids 0..{n - 1}; got shape {labels.shape}"
        raise DataError(msg)
    inverse = np.empty(n, dtype=np.uint8)
    inverse[WSSS4LUAD_PALETTE_REMAP] = np.arange(n, dtype=np.uint8)
    img = Image.fromarray(inverse[labels.astype(np.intp)])
    img.putpalette([v for color in WSSS4LUAD_COLORS for v in color])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path
