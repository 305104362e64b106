"""Layout, texture and stain building blocks for the synthetic H&E generator.

The layout (tissue blobs, class regions, modulation fields) lives on a coarse grid (32 px) that is
sampled bilinearly, so no full-resolution field is ever held.
Everything here is vectorised numpy. Textures are *periodic* tiles (FFT-filtered noise and jittered-grid
Worley fields) that are sliced, without copying, at any level-0 position; overlaying tiles of different
periods (1024 and 768 px) and modulating them by smooth low-frequency fields hides the repetition.
Colours follow the Beer-Lambert optical-density model of H&E: ``rgb = white * exp(-(h * H + e * E))``
with per-pixel haematoxylin ``h`` and eosin ``e`` concentrations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import fft as sfft
from scipy.ndimage import gaussian_filter

__all__ = [
    "Scene",
    "Stain",
    "TextureBank",
    "build_scene",
    "interp_grid",
    "label_mask",
    "make_stain",
    "render_region",
    "render_scene",
]

_H_REF = np.array([0.62, 0.72, 0.31], dtype=np.float32)
_E_REF = np.array([0.12, 0.88, 0.45], dtype=np.float32)
_WHITE = 252.0
_CELL = 32  # spacing of the coarse layout grid in level-0 pixels
_BAND = 256  # mask rows computed at once


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


def _periodic_noise(
    rng: np.random.Generator, period: int, sigma: tuple[float, float], angle: float = 0.0
) -> np.ndarray:
    """Zero-mean, unit-variance periodic Gaussian noise filtered by an oriented Gaussian.

    Args:
        rng: Random generator.
        period: Side of the square tile in pixels (the texture wraps seamlessly).
        sigma: Standard deviations (along ``angle``, across it) of the smoothing kernel in pixels.
        angle: Orientation of the first axis in radians.

    Returns:
        ``(period, period)`` float32 array.
    """
    white = rng.standard_normal((period, period)).astype(np.float32)
    fy = np.fft.fftfreq(period).astype(np.float32)[:, None]
    fx = np.fft.rfftfreq(period).astype(np.float32)[None, :]
    ca, sa = np.cos(angle), np.sin(angle)
    fu = fx * ca + fy * sa
    fv = -fx * sa + fy * ca
    gain = np.exp(-2.0 * np.pi**2 * ((fu * sigma[0]) ** 2 + (fv * sigma[1]) ** 2))
    out = sfft.irfft2(sfft.rfft2(white, workers=1) * gain, s=white.shape, workers=1)
    out = out.astype(np.float32, copy=False)
    out -= out.mean()
    out /= out.std() + 1e-8
    return out


def _worley(
    rng: np.random.Generator,
    period: int,
    n_cells: int,
    warp: float,
    metric: tuple[float, float, float] = (1.0, 1.0, 0.0),
    *,
    second: bool = False,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Periodic jittered-grid Worley field.

    Args:
        rng: Random generator.
        period: Tile side in pixels.
        n_cells: Grid cells per side (one feature point per cell).
        warp: Amplitude in pixels of a smooth displacement that makes cells irregular.
        metric: ``(scale_along, scale_across, angle)`` of an anisotropic distance (elongated cells).
        second: Also return the distance to the second-nearest point.

    Returns:
        ``(f1, f2, key)``: distance to the nearest and (if ``second``, else None) second-nearest point
        in pixels (scaled by the metric), and a per-point uniform random value of the nearest point.
    """
    cell = period / n_cells
    jit = rng.uniform(0.1, 0.9, size=(2, n_cells, n_cells))
    key = rng.uniform(0.0, 1.0, size=(n_cells, n_cells)).astype(np.float32)
    grid = np.arange(period, dtype=np.float32)
    smooth = (period / 48, period / 48)
    y = grid[:, None] + warp * _periodic_noise(rng, period, smooth)
    x = grid[None, :] + warp * _periodic_noise(rng, period, smooth)
    # Tables padded by 2 cells (wrapped) hold unwrapped point positions, so no modulo per pixel.
    side, pad = n_cells + 4, np.arange(-2, n_cells + 2)
    wrap = np.ix_(pad % n_cells, pad % n_cells)
    pos_y = ((pad[:, None] + jit[0][wrap]) * cell).astype(np.float32).ravel()
    pos_x = ((pad[None, :] + jit[1][wrap]) * cell).astype(np.float32).ravel()
    keys = key[wrap].ravel()
    base = (np.floor(y / cell).astype(np.int32) + 2) * side + np.floor(x / cell).astype(np.int32) + 2
    sa, sc, ang = metric
    ca, sn = np.float32(np.cos(ang)), np.float32(np.sin(ang))
    f1 = np.full((period, period), np.inf, dtype=np.float32)
    f2 = np.full((period, period), np.inf, dtype=np.float32) if second else None
    k1 = np.zeros((period, period), dtype=np.float32)
    for off in (dy * side + dx for dy in (-1, 0, 1) for dx in (-1, 0, 1)):
        idx = base + off
        py = pos_y.take(idx) - y
        px = pos_x.take(idx) - x
        if sa != sc:
            px, py = (px * ca + py * sn) / sa, (py * ca - px * sn) / sc
        d = px * px + py * py
        closer = d < f1
        if f2 is not None:
            np.minimum(f2, np.where(closer, f1, d), out=f2)
        np.copyto(k1, keys.take(idx), where=closer)
        np.copyto(f1, d, where=closer)
    return np.sqrt(f1), None if f2 is None else np.sqrt(f2), k1


class _Periodic:
    """A periodic tile that returns the patch at any level-0 position (a view when it does not wrap)."""

    def __init__(self, data: np.ndarray) -> None:
        self.data = data
        self.period = data.shape[0]

    def patch(self, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        p = self.period
        oy, ox = y0 % p, x0 % p
        if oy + h <= p and ox + w <= p:
            return self.data[oy : oy + h, ox : ox + w]
        iy = (oy + np.arange(h)) % p
        ix = (ox + np.arange(w)) % p
        return self.data[np.ix_(iy, ix)]


class TextureBank:
    """Periodic texture tiles for one slide (tumour nuclei, stroma fibres, alveoli, grain)."""

    def __init__(self, rng: np.random.Generator) -> None:
        t1 = float(rng.uniform(0.0, np.pi))
        t2 = t1 + float(rng.uniform(0.9, 1.6))
        f1, _, key = _worley(rng, 1024, 46, warp=2.5)
        radius = 0.5 * 1024 / 46
        self.tum_r = _Periodic(f1 / radius)
        self.tum_key = _Periodic(key)
        f1, _, key = _worley(rng, 768, 18, warp=3.0, metric=(3.0, 1.0, t1))
        self.str_r = _Periodic(f1 / 3.2)
        self.str_key = _Periodic(key)
        f1, f2, _ = _worley(rng, 1024, 10, warp=10.0, second=True)
        self.alv_edge = _Periodic(f2 - f1)
        self.alv_f1 = _Periodic(f1 / (0.5 * 1024 / 10))
        self.fib1 = _Periodic(_periodic_noise(rng, 1024, (16.0, 1.3), t1))
        self.fib2 = _Periodic(_periodic_noise(rng, 768, (16.0, 1.3), t2))
        self.grain1 = _Periodic(_periodic_noise(rng, 512, (0.8, 0.8)))
        self.grain2 = _Periodic(_periodic_noise(rng, 384, (1.6, 1.6)))


@dataclass(frozen=True)
class Stain:
    """H&E optical-density vectors and concentration scales of one slide."""

    h_od: np.ndarray
    e_od: np.ndarray
    h_scale: float
    e_scale: float


def make_stain(site_rng: np.random.Generator, slide_rng: np.random.Generator, site: int) -> Stain:
    """Return the stain of a slide: a site-level shift (none for site 0) plus a small slide jitter.

    Args:
        site_rng: Generator seeded by the site only (same shift for all slides of a site).
        slide_rng: Generator seeded by the slide.
        site: Site index; site 0 is the reference stain.

    Returns:
        The slide's ``Stain``.
    """
    h, e, hs, es = _H_REF.copy(), _E_REF.copy(), 1.0, 1.0
    if site > 0:
        h = _unit(h + site_rng.normal(0.0, 0.14, 3).astype(np.float32))
        e = _unit(e + site_rng.normal(0.0, 0.14, 3).astype(np.float32))
        hs, es = (float(v) for v in site_rng.uniform(0.75, 1.25, 2))
    h = _unit(h + slide_rng.normal(0.0, 0.015, 3).astype(np.float32))
    e = _unit(e + slide_rng.normal(0.0, 0.015, 3).astype(np.float32))
    hs *= float(slide_rng.uniform(0.95, 1.05))
    es *= float(slide_rng.uniform(0.95, 1.05))
    return Stain(h, e, hs, es)


def interp_grid(grid: np.ndarray, ys: np.ndarray, xs: np.ndarray, cell: float) -> np.ndarray:
    """Bilinearly sample a coarse grid (sample ``j`` at level-0 position ``j * cell``).

    Args:
        grid: ``(..., ny, nx)`` float32 coarse grid.
        ys: Level-0 row positions (1-D).
        xs: Level-0 column positions (1-D).
        cell: Grid spacing in level-0 pixels.

    Returns:
        ``(..., len(ys), len(xs))`` float32 array.
    """
    fy = np.asarray(ys, dtype=np.float64) / cell
    fx = np.asarray(xs, dtype=np.float64) / cell
    iy = np.clip(np.floor(fy).astype(np.intp), 0, grid.shape[-2] - 2)
    ix = np.clip(np.floor(fx).astype(np.intp), 0, grid.shape[-1] - 2)
    wy = np.clip(fy - iy, 0.0, 1.0).astype(np.float32)[:, None]
    wx = np.clip(fx - ix, 0.0, 1.0).astype(np.float32)
    y0, x0 = int(iy.min()), int(ix.min())
    local = grid[..., y0 : int(iy.max()) + 2, x0 : int(ix.max()) + 2]
    iy, ix = iy - y0, ix - x0
    rows = local[..., iy, :] * (1 - wy) + local[..., iy + 1, :] * wy
    return rows[..., ix] * (1 - wx) + rows[..., ix + 1] * wx


def _smooth01(x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0.0, 1.0)


def _tumor(bank: TextureBank, pos: tuple[int, int, int, int], density: np.ndarray) -> tuple:
    key = bank.tum_key.patch(*pos)
    r = bank.tum_r.patch(*pos) / (0.8 + 0.35 * ((key * 7.31) % 1.0))  # per-nucleus size
    keep = key < density
    nuc = _smooth01((1.0 - r) * 5.0) * keep
    g = bank.grain1.patch(*pos)
    h = 0.38 + 0.08 * g + nuc * (1.25 + 0.3 * g)
    e = 0.36 + 0.05 * bank.grain2.patch(*pos) - 0.2 * nuc
    return h, e


def _stroma(bank: TextureBank, pos: tuple[int, int, int, int], blend: np.ndarray) -> tuple:
    fib = bank.fib1.patch(*pos) * blend + bank.fib2.patch(*pos) * (1.0 - blend)
    fib = fib / np.sqrt(blend * blend + (1.0 - blend) ** 2)
    gaps = _smooth01((fib + 1.3) * 1.5)
    e = (0.42 + 0.14 * fib) * (0.25 + 0.75 * gaps)
    nuc = _smooth01((1.0 - bank.str_r.patch(*pos)) * 3.0) * (bank.str_key.patch(*pos) < 0.3)
    h = 0.05 + 0.03 * bank.grain1.patch(*pos) + 1.3 * nuc
    return h, e


def _normal(bank: TextureBank, pos: tuple[int, int, int, int]) -> tuple:
    edge = bank.alv_edge.patch(*pos)
    f1 = bank.alv_f1.patch(*pos)
    wall = np.maximum(_smooth01(2.5 - edge / 5.0), _smooth01((f1 - 1.05) * 5.0))
    nuc = _smooth01((1.0 - bank.tum_r.patch(*pos)) * 3.0) * (bank.tum_key.patch(*pos) < 0.25)
    g = bank.grain2.patch(*pos)
    h = 0.02 + wall * (0.3 + 0.05 * g) + wall * nuc * 1.1
    e = 0.03 + wall * (0.42 + 0.06 * g)
    return h, e


def render_region(
    bank: TextureBank,
    stain: Stain,
    labels: np.ndarray,
    aux: np.ndarray,
    y0: int,
    x0: int,
) -> np.ndarray:
    """Render the RGB pixels of a level-0 region.

    Args:
        bank: The slide's texture tiles.
        stain: The slide's stain.
        labels: ``(h, w)`` uint8 class ids (0 background, 1 tumour, 2 stroma, 3 normal).
        aux: ``(3, h, w)`` float32 smooth fields in [-1, 1]: intensity, tumour density, fibre blend.
        y0: Level-0 row of the region's top-left pixel.
        x0: Level-0 column of the region's top-left pixel.

    Returns:
        ``(h, w, 3)`` uint8 RGB.
    """
    hgt, wid = labels.shape
    pos = (y0, x0, hgt, wid)
    conc_h = np.zeros((hgt, wid), dtype=np.float32)
    conc_e = np.zeros((hgt, wid), dtype=np.float32)
    present = np.bincount(labels.ravel(), minlength=4)
    parts = {
        1: lambda: _tumor(bank, pos, 0.88 + 0.1 * aux[1]),
        2: lambda: _stroma(bank, pos, 0.5 + 0.5 * aux[2]),
        3: lambda: _normal(bank, pos),
    }
    for cls, make in parts.items():
        if present[cls]:
            h, e = make()
            where = labels == cls
            np.copyto(conc_h, h, where=where)
            np.copyto(conc_e, e, where=where)
    scale = 1.0 + 0.12 * aux[0]
    conc_h *= scale * stain.h_scale
    conc_e *= scale * stain.e_scale
    grain = bank.grain1.patch(*pos)
    out = np.empty((hgt, wid, 3), dtype=np.uint8)
    for c in range(3):
        od = conc_h * stain.h_od[c] + conc_e * stain.e_od[c]
        val = _WHITE * np.exp(-od) + 1.8 * grain
        np.clip(val, 0.0, 255.0, out=val)
        out[..., c] = val
    return out


@dataclass(frozen=True)
class Scene:
    """Coarse layout fields, textures and stain of one image."""

    width: int
    height: int
    tissue: np.ndarray  # (ny, nx) tissue score; tissue where > threshold
    threshold: float
    classes: np.ndarray  # (3, ny, nx) class scores (tumour, stroma, normal), argmax wins
    aux: np.ndarray  # (3, ny, nx) smooth modulation fields in [-1, 1]
    bank: TextureBank
    stain: Stain


def _noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    field = gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    return (field - field.mean()) / (field.std() + 1e-8)


def _tissue_field(rng: np.random.Generator, width: int, height: int, frac: float) -> np.ndarray:
    ny, nx = math.ceil(height / _CELL) + 2, math.ceil(width / _CELL) + 2
    yy = (np.arange(ny, dtype=np.float32) * _CELL)[:, None]
    xx = (np.arange(nx, dtype=np.float32) * _CELL)[None, :]
    n_blobs = int(rng.integers(1, 4))
    radius = math.sqrt(frac * width * height / (n_blobs * math.pi))
    field = np.zeros((ny, nx), dtype=np.float32)
    for _ in range(n_blobs):
        cy, cx = rng.uniform(0.3, 0.7) * height, rng.uniform(0.25, 0.75) * width
        ang, aspect = rng.uniform(0, np.pi), rng.uniform(0.7, 1.4)
        r = radius * rng.uniform(0.8, 1.2)
        u = ((xx - cx) * np.cos(ang) + (yy - cy) * np.sin(ang)) / (r * aspect)
        v = (-(xx - cx) * np.sin(ang) + (yy - cy) * np.cos(ang)) * aspect / r
        field = np.maximum(field, np.exp(-0.5 * (u * u + v * v)))
    return field + 0.12 * _noise(rng, (ny, nx), max(radius / _CELL / 3, 1.0))


def build_scene(width: int, height: int, seed: int, site: int, *, tissue_frac: tuple[float, float]) -> Scene:
    rng = np.random.default_rng([seed, site, 0])
    site_rng = np.random.default_rng([site, 0x5173])
    biases = site_rng.normal(0.0, 0.45, 3) if site > 0 else np.zeros(3)
    frac = float(rng.uniform(*tissue_frac))
    tissue = _tissue_field(rng, width, height, frac)
    inside = tissue[: math.ceil(height / _CELL), : math.ceil(width / _CELL)]
    threshold = float(np.quantile(inside, 1.0 - frac))
    region_px = float(np.clip(min(width, height) / 8, 100, 600))
    shape = tissue.shape
    classes = np.stack([_noise(rng, shape, region_px / _CELL) + b for b in biases])
    aux = np.clip(0.6 * np.stack([_noise(rng, shape, 300 / _CELL) for _ in range(3)]), -1, 1)
    bank = TextureBank(np.random.default_rng([seed, site, 1]))
    stain = make_stain(site_rng, np.random.default_rng([seed, site, 2]), site)
    return Scene(width, height, tissue, threshold, classes.astype(np.float32), aux, bank, stain)


def label_mask(scene: Scene, ds: int) -> np.ndarray:
    """Class ids at downsample ``ds`` (pixel centres sampled), computed in bands of rows."""
    hm, wm = math.ceil(scene.height / ds), math.ceil(scene.width / ds)
    xs = (np.arange(wm) + 0.5) * ds
    out = np.empty((hm, wm), dtype=np.uint8)
    for r0 in range(0, hm, _BAND):
        ys = (np.arange(r0, min(r0 + _BAND, hm)) + 0.5) * ds
        tissue = interp_grid(scene.tissue, ys, xs, _CELL) > scene.threshold
        cls = np.argmax(interp_grid(scene.classes, ys, xs, _CELL), axis=0).astype(np.uint8) + 1
        out[r0 : r0 + len(ys)] = np.where(tissue, cls, 0)
    return out


def render_scene(scene: Scene, labels: np.ndarray, ds: int, y0: int, x0: int, h: int, w: int) -> np.ndarray:
    """Render level-0 pixels ``[y0:y0+h, x0:x0+w]``; pixels outside the image are background."""
    ry = np.minimum((y0 + np.arange(h)) // ds, labels.shape[0] - 1)
    rx = np.minimum((x0 + np.arange(w)) // ds, labels.shape[1] - 1)
    lab = labels[np.ix_(ry, rx)]
    lab[max(scene.height - y0, 0) :] = 0
    lab[:, max(scene.width - x0, 0) :] = 0
    # The aux fields vary over hundreds of pixels: sample every 4 px and repeat.
    ny, nx = -(-h // 4), -(-w // 4)
    coarse = interp_grid(scene.aux, y0 + 4 * np.arange(ny) + 2, x0 + 4 * np.arange(nx) + 2, _CELL)
    aux = np.broadcast_to(coarse[:, :, None, :, None], (3, ny, 4, nx, 4))
    aux = aux.reshape(3, 4 * ny, 4 * nx)[:, :h, :w]
    return render_region(scene.bank, scene.stain, lab, aux, y0, x0)
