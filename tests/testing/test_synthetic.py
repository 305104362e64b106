"""Tests for the synthetic H&E cohort generator: slides open in openslide/tiffslide, masks, content."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile
import tiffslide
import typer
from PIL import Image
from typer.testing import CliRunner

from wsiseg.classes import DEFAULT_CLASSES, WSSS4LUAD_PALETTE_REMAP
from wsiseg.cli.synth import synth
from wsiseg.errors import ConfigError, DataError
from wsiseg.testing import (
    WSSS4LUAD_COLORS,
    SyntheticSlide,
    make_cohort,
    make_patch_image,
    make_slide,
    render_level0,
    write_wsss4luad_palette_mask,
)

W, H = 2048, 1536


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> SyntheticSlide:
    return make_slide(tmp_path_factory.mktemp("synth") / "s.svs", width=W, height=H, seed=5)


@pytest.fixture(scope="module")
def pixels(slide: SyntheticSlide) -> tuple[np.ndarray, np.ndarray]:
    """Level-0 RGB as decoded from the file, and level-0 labels from the mask."""
    rgb = tifffile.imread(slide.slide_path)
    mask = np.asarray(Image.open(slide.mask_path))
    ds = slide.mask_downsample
    labels = np.repeat(np.repeat(mask, ds, axis=0), ds, axis=1)[:H, :W]
    return rgb, labels


def test_openslide_sees_aperio_pyramid(slide: SyntheticSlide) -> None:
    with openslide.OpenSlide(str(slide.slide_path)) as osr:
        assert osr.properties["openslide.vendor"] == "aperio"
        assert osr.level_dimensions == ((W, H), (W // 4, H // 4))
        assert osr.level_downsamples == pytest.approx((1.0, 4.0))
        assert float(osr.properties["openslide.mpp-x"]) == 0.5
        assert float(osr.properties["openslide.mpp-y"]) == 0.5
        assert osr.properties["openslide.objective-power"] == "20"
        thumb = osr.associated_images["thumbnail"]
        assert max(thumb.size) <= 768
        assert thumb.size[0] / thumb.size[1] == pytest.approx(W / H, 0.01)


def test_tiffslide_sees_same_levels_and_mpp(slide: SyntheticSlide) -> None:
    with tiffslide.TiffSlide(slide.slide_path) as ts:
        assert ts.level_count == 2
        assert ts.level_dimensions == ((W, H), (W // 4, H // 4))
        assert ts.level_downsamples == pytest.approx((1.0, 4.0))
        assert float(ts.properties["tiffslide.mpp-x"]) == 0.5
        assert ts.properties["tiffslide.vendor"] == "aperio"
        region = ts.read_region((300, 200), 0, (400, 300), as_array=True)
    with openslide.OpenSlide(str(slide.slide_path)) as osr:
        ref = np.asarray(osr.read_region((300, 200), 0, (400, 300)).convert("RGB"))
    assert np.abs(region.astype(int) - ref.astype(int)).max() <= 2


def test_pixels_read_by_openslide_match_rendered_array(slide: SyntheticSlide) -> None:
    x, y, w, h = 700, 500, 600, 500
    want = render_level0(slide, x, y, w, h).astype(np.float32)
    with openslide.OpenSlide(str(slide.slide_path)) as osr:
        got = np.asarray(osr.read_region((x, y), 0, (w, h)).convert("RGB")).astype(np.float32)
        lvl1 = np.asarray(osr.read_region((x, y), 1, (w // 4, h // 4)).convert("RGB"))
    err = np.abs(got - want)
    assert err.mean() < 6.0  # JPEG Q85 with 4:2:0 chroma on a busy texture
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.97
    # level 1 is the 4x4 area mean of level 0 (JPEG error on a busy texture, far below a 1-px shift)
    area = want.reshape(h // 4, 4, w // 4, 4, 3).mean(axis=(1, 3))
    diff = np.abs(lvl1.astype(np.float32) - area)[1:-1, 1:-1].mean()
    shifted = np.abs(lvl1.astype(np.float32) - np.roll(area, 1, axis=1))[1:-1, 1:-1].mean()
    assert diff < 8.0
    assert diff < 0.75 * shifted


def test_mask_size_values_and_fractions(slide: SyntheticSlide) -> None:
    mask = Image.open(slide.mask_path)
    assert mask.mode == "L"
    assert mask.size == (math.ceil(W / 4), math.ceil(H / 4))
    arr = np.asarray(mask)
    assert set(np.unique(arr)) == {0, 1, 2, 3}
    fr = slide.class_fractions
    assert list(fr) == DEFAULT_CLASSES.names
    assert sum(fr.values()) == pytest.approx(1.0)
    assert all(v > 0.02 for v in fr.values())
    assert 0.3 <= 1.0 - fr["background"] <= 0.7
    counts = np.bincount(arr.ravel(), minlength=4) / arr.size
    assert np.allclose(counts, list(fr.values()))


def test_mask_rounds_up_for_odd_sizes(tmp_path: Path) -> None:
    s = make_slide(tmp_path / "odd.svs", width=1001, height=703, seed=1, mask_downsample=8)
    assert Image.open(s.mask_path).size == (126, 88)
    with openslide.OpenSlide(str(s.slide_path)) as osr:
        assert osr.dimensions == (1001, 703)
        assert osr.level_count == 1
        assert np.asarray(osr.read_region((990, 690), 0, (11, 13)).convert("RGB")).min() > 200


def test_classes_have_distinct_colour_and_texture(pixels: tuple[np.ndarray, np.ndarray]) -> None:
    rgb, labels = pixels
    stats = {}
    for c in range(4):
        px = rgb[labels == c].astype(np.float32)
        grey = px.mean(axis=1)
        stats[c] = (px.mean(axis=0), (grey < 130).mean(), (grey > 225).mean())
    bg, tum, stro, norm = (stats[c] for c in range(4))
    assert (bg[0] > 245).all()
    assert bg[1] == 0.0
    assert tum[0].mean() < stro[0].mean() - 50  # tumour darker than stroma
    assert tum[0][2] - tum[0][0] > stro[0][2] - stro[0][0] + 20  # and bluer
    assert stro[0][0] > stro[0][1] + 30  # stroma pink: red over green
    assert tum[1] > 0.3
    assert stro[1] < 0.05
    assert norm[1] < 0.1
    assert norm[2] > 0.5
    assert stro[2] < 0.35


def test_texture_survives_downsampling(slide: SyntheticSlide) -> None:
    page = tifffile.TiffFile(slide.slide_path).pages[2]  # level 1, downsample 4
    lvl1 = page.asarray().astype(np.float32).mean(axis=2)
    mask = np.asarray(Image.open(slide.mask_path))[: lvl1.shape[0], : lvl1.shape[1]]
    std = {c: lvl1[mask == c].std() for c in range(4)}
    assert std[0] < 3.0
    assert std[1] > 20.0
    assert std[2] > 10.0
    assert std[3] > 20.0


def test_same_seed_same_pixels_other_seed_differs(tmp_path: Path) -> None:
    kw = {"width": 1024, "height": 768}
    a = make_slide(tmp_path / "a.svs", seed=3, **kw)
    b = make_slide(tmp_path / "b.svs", seed=3, **kw)
    c = make_slide(tmp_path / "c.svs", seed=4, **kw)
    ra, rb, rc = (tifffile.imread(s.slide_path) for s in (a, b, c))
    ma, mb, mc = (np.asarray(Image.open(s.mask_path)) for s in (a, b, c))
    assert np.array_equal(ra, rb)
    assert np.array_equal(ma, mb)
    assert a.class_fractions == b.class_fractions
    assert (ma != mc).mean() > 0.1
    assert np.abs(ra.astype(int) - rc).mean() > 10


def test_cohort_csv_and_site_stains(tmp_path: Path) -> None:
    slides = make_cohort(tmp_path / "c", n_slides=4, width=1024, height=768, seed=2, n_sites=2)
    with (tmp_path / "c" / "cohort.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["slide"] for r in rows] == [f"slide_{i:03d}.svs" for i in range(4)]
    assert [r["mask"] for r in rows] == [f"slide_{i:03d}_mask.png" for i in range(4)]
    assert [int(r["site"]) for r in rows] == [0, 1, 0, 1]
    assert {(r["width"], r["height"], float(r["mpp"])) for r in rows} == {("1024", "768", 0.5)}
    assert all((tmp_path / "c" / r["slide"]).is_file() for r in rows)
    # mean colour of the tissue classes: sites differ more than slides within a site
    means = []
    for s in slides:
        rgb = tifffile.TiffFile(s.slide_path).pages[0].asarray()[::4, ::4].astype(np.float32)
        mask = np.asarray(Image.open(s.mask_path))
        means.append(np.stack([rgb[mask == c].mean(axis=0) for c in (1, 2)]))
    within = max(np.abs(means[0] - means[2]).max(), np.abs(means[1] - means[3]).max())
    between = np.abs((means[0] + means[2]) / 2 - (means[1] + means[3]) / 2).max()
    assert between > 5.0
    assert between > within


def test_patch_image_and_wsss4luad_palette_mask(tmp_path: Path) -> None:
    p = make_patch_image(tmp_path / "patch.png", size=(600, 400), seed=1)
    img = Image.open(p.slide_path)
    assert img.mode == "RGB"
    assert img.size == (600, 400)
    labels = np.asarray(Image.open(p.mask_path))
    assert labels.shape == (400, 600)
    assert labels.max() <= 3
    assert p.class_fractions["background"] < 0.35
    out = write_wsss4luad_palette_mask(labels, tmp_path / "patch_gt.png")
    pal = Image.open(out)
    assert pal.mode == "P"
    colours = np.array(pal.getpalette()[:12]).reshape(4, 3)
    assert [tuple(c) for c in colours] == list(WSSS4LUAD_COLORS)
    raw = np.asarray(pal)
    assert np.array_equal(WSSS4LUAD_PALETTE_REMAP[raw], labels)
    assert np.array_equal(raw[labels == 0], np.full((labels == 0).sum(), 3))  # background -> 3
    assert np.array_equal(raw[labels == 1], np.zeros((labels == 1).sum()))  # tumour -> 0
    with pytest.raises(DataError):
        write_wsss4luad_palette_mask(np.array([[0, 4]]), tmp_path / "bad.png")


@pytest.mark.parametrize(
    "kw",
    [{"width": 8}, {"mpp": 0.0}, {"tile": 100}, {"mask_downsample": 0}, {"quality": 0}],
)
def test_bad_arguments_raise_config_error(tmp_path: Path, kw: dict) -> None:
    args = {"width": 256, "height": 256, "seed": 0, **kw}
    with pytest.raises(ConfigError):
        make_slide(tmp_path / "x.svs", **args)


def test_cli_synth(tmp_path: Path) -> None:
    app = typer.Typer()
    app.command()(synth)
    out = tmp_path / "cohort"
    args = [str(out), "--n", "2", "--width", "512", "--height", "384", "--sites", "2"]
    result = CliRunner().invoke(app, [*args, "--mpp", "0.25"])
    assert result.exit_code == 0, result.output
    assert "slide_001.svs" in result.output
    rows = list(csv.DictReader((out / "cohort.csv").open()))
    assert [(r["site"], r["mpp"]) for r in rows] == [("0", "0.25"), ("1", "0.25")]
    with openslide.OpenSlide(str(out / "slide_001.svs")) as osr:
        assert osr.dimensions == (512, 384)
        assert float(osr.properties["openslide.mpp-x"]) == 0.25
        assert osr.properties["openslide.objective-power"] == "40"
    bad = CliRunner().invoke(app, [str(out / "cohort.csv"), "--n", "1"])
    assert isinstance(bad.exception, ConfigError)
    bad = CliRunner().invoke(app, [str(tmp_path / "other"), "--n", "0"])
    assert isinstance(bad.exception, ConfigError)
