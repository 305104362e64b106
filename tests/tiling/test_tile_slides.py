"""Tiling end to end on generated slides (and the real slides in ../shared when present)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from wsiseg.cli import app
from wsiseg.testing.synthetic import make_patch_image, make_slide, write_wsss4luad_palette_mask
from wsiseg.tiling.batch import expand_sources, tile_many
from wsiseg.tiling.geometry import TilingConfig
from wsiseg.tiling.manifest import load_manifest
from wsiseg.tiling.writer import slide_id_for

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "slides"
runner = CliRunner()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("slides")
    make_slide(root / "a.svs", width=2048, height=1536, seed=1)
    make_slide(root / "b c (1).svs", width=1536, height=1024, seed=2)  # spaces and parentheses
    return root


def _tile(args: list[str]) -> typer.testing.Result:
    return runner.invoke(app, ["tile", *args])


def test_tile_folder_writes_manifest_tiles_and_masks(cohort: Path, tmp_path: Path) -> None:
    out = tmp_path / "tiles"
    res = _tile([str(cohort), "--out", str(out), "--workers", "1"])
    assert res.exit_code == 0, res.output
    man = load_manifest(out)
    assert {s.id for s in man.slides} == {"a", "b_c_1"}
    a = next(s for s in man.slides if s.id == "a")
    # 2048 x 1536 with 1000/500 windows: x at 0..1500 (4), y at 0..1000 (3); level 1 read at 250 px
    assert a.n_windows == 4 * 3
    assert (a.level, a.read_size, a.window_level0) == (1, 250, 1000)
    assert a.mask_source.endswith("a_mask.png")
    recs = [r for r in man.records if r.slide_id == "a"]
    assert len(recs) == a.n_tiles > 0
    assert all(r.tissue >= 0.1 for r in recs)
    img = Image.open(out / recs[0].image)
    mask = np.asarray(Image.open(out / recs[0].mask))
    assert img.size == (224, 224)
    assert mask.shape == (224, 224)
    assert set(np.unique(mask)) <= {0, 1, 2, 3}
    assert (out / "a" / "preview.png").is_file()
    assert man.config.resize == "bilinear"


def test_mask_tiles_match_ground_truth(cohort: Path, tmp_path: Path) -> None:
    out = tmp_path / "tiles"
    tile_many([cohort / "a.svs"], out, TilingConfig(), workers=1)
    gt = np.asarray(Image.open(cohort / "a_mask.png"))  # downsample 4
    rec = load_manifest(out).records[0]
    tile = np.asarray(Image.open(out / rec.mask))
    # tile pixel (i, j) samples level-0 point (x + (j + .5) * 1000/224, y + (i + .5) * 1000/224)
    i, j = 100, 37
    px = int((rec.x + (j + 0.5) * 1000 / 224) / 4)
    py = int((rec.y + (i + 0.5) * 1000 / 224) / 4)
    assert tile[i, j] == gt[py, px]
    assert (tile == 0).mean() < 0.9


def test_resume_skips_and_overwrite_redoes(cohort: Path, tmp_path: Path) -> None:
    out = tmp_path / "tiles"
    first = tile_many([cohort / "a.svs"], out, TilingConfig(), workers=1)
    assert first[0].status == "tiled"
    stamp = (out / "a" / "slide.json").stat().st_mtime_ns
    again = tile_many([cohort / "a.svs"], out, TilingConfig(), workers=1)
    assert again[0].status == "skipped"
    assert (out / "a" / "slide.json").stat().st_mtime_ns == stamp
    redo = tile_many([cohort / "a.svs"], out, TilingConfig(), workers=1, overwrite=True)
    assert redo[0].status == "tiled"
    res = _tile([str(cohort / "a.svs"), "--out", str(out), "--window", "800", "--stride", "400"])
    assert res.exit_code != 0
    assert "other settings" in res.output


def test_workers_give_identical_tiles(cohort: Path, tmp_path: Path) -> None:
    one = tile_many([cohort / "a.svs"], tmp_path / "one", TilingConfig(), workers=1)[0].entry
    two = tile_many([cohort / "a.svs"], tmp_path / "two", TilingConfig(), workers=2)[0].entry
    assert one is not None
    assert two is not None
    assert one.n_tiles == two.n_tiles
    r1 = load_manifest(tmp_path / "one").records
    r2 = load_manifest(tmp_path / "two").records
    assert [(r.x, r.y) for r in r1] == [(r.x, r.y) for r in r2]
    a = np.asarray(Image.open(tmp_path / "one" / r1[-1].image))
    b = np.asarray(Image.open(tmp_path / "two" / r2[-1].image))
    assert np.array_equal(a, b)


def test_bad_slide_does_not_stop_batch(cohort: Path, tmp_path: Path) -> None:
    bad = tmp_path / "broken.svs"
    bad.write_bytes(b"this is not a slide")
    out = tmp_path / "tiles"
    res = _tile([str(bad), str(cohort / "a.svs"), str(tmp_path / "missing.svs"), "--out", str(out)])
    assert res.exit_code == 1
    assert "broken.svs" in res.output
    assert "missing.svs" in res.output
    assert [s.id for s in load_manifest(out).slides] == ["a"]
    assert not list(out.glob("*.partial"))


def test_physical_windows_and_missing_mpp(tmp_path: Path) -> None:
    make_slide(tmp_path / "s.svs", width=2048, height=1536, seed=3, mpp=0.25)
    out = tmp_path / "tiles"
    # 500 px at 0.5 um/px = 1000 level-0 px at 0.25 um/px
    res = tile_many([tmp_path / "s.svs"], out, TilingConfig(window=500, stride=250, mpp=0.5), workers=1)
    assert res[0].entry is not None
    assert res[0].entry.window_level0 == 1000
    patch = make_patch_image(tmp_path / "p.png", size=(600, 400), seed=1)
    res = tile_many([patch.slide_path], tmp_path / "t2", TilingConfig(mpp=0.5), workers=1, use_masks=False)
    assert res[0].status == "failed"
    assert "--slide-mpp" in res[0].error


def test_small_image_gives_one_padded_window(tmp_path: Path) -> None:
    patch = make_patch_image(tmp_path / "patch.png", size=(600, 400), seed=4)
    res = tile_many([patch.slide_path], tmp_path / "tiles", TilingConfig(min_tissue=0.01), workers=1)
    entry = res[0].entry
    assert entry is not None, res[0].error
    assert entry.n_windows == 1
    assert entry.n_tiles == 1
    assert "padded" in entry.note
    rec = load_manifest(tmp_path / "tiles").records[0]
    img = np.asarray(Image.open(tmp_path / "tiles" / rec.image))
    assert img[-10:, -10:].min() > 240  # padding beyond the 600 x 400 image is white


def test_wsss4luad_palette_masks_are_remapped(tmp_path: Path) -> None:
    patch = make_patch_image(tmp_path / "img.png", size=(600, 400), seed=5)
    labels = np.asarray(Image.open(patch.mask_path))
    masks = tmp_path / "gt"
    masks.mkdir()
    write_wsss4luad_palette_mask(labels, masks / "img.png")
    tile_many([tmp_path / "img.png"], tmp_path / "tiles", TilingConfig(window=400, stride=200, size=200,
              min_tissue=0.01), masks_dir=masks, workers=1)  # fmt: skip
    rec = load_manifest(tmp_path / "tiles").records[0]
    tile = np.asarray(Image.open(tmp_path / "tiles" / rec.mask))
    assert np.array_equal(tile, labels[1:400:2, 1:400:2])  # nearest samples pixel centres


def test_geojson_masks_via_tiling(tmp_path: Path) -> None:
    make_slide(tmp_path / "g.svs", width=2048, height=1536, seed=6)
    (tmp_path / "g_mask.png").unlink()
    masks = tmp_path / "ann"
    masks.mkdir()
    square = [[1000, 500], [1600, 500], [1600, 1100], [1000, 1100], [1000, 500]]
    props = {"objectType": "annotation", "classification": {"name": "Tumor", "color": [0, 64, 128]}}
    feat = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [square]}, "properties": props}
    (masks / "g.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [feat]}))
    tile_many([tmp_path / "g.svs"], tmp_path / "tiles", TilingConfig(min_tissue=0.0), masks_dir=masks, workers=1)
    man = load_manifest(tmp_path / "tiles")
    rec = next(r for r in man.records if (r.x, r.y) == (1000, 500))
    tile = np.asarray(Image.open(tmp_path / "tiles" / rec.mask))
    # square covers level-0 [1000, 1600) of the [1000, 2000) window: 60 % of columns, 60 % of rows
    assert abs((tile == 1).mean() - 0.36) < 0.02


def test_expand_sources_skips_masks_and_finds_dicom(tmp_path: Path) -> None:
    (tmp_path / "x.svs").write_bytes(b"")
    (tmp_path / "x_mask.png").write_bytes(b"")
    dicom = tmp_path / "case"
    dicom.mkdir()
    (dicom / "level0.dcm").write_bytes(b"")
    found = expand_sources([tmp_path])
    assert found == [dicom, tmp_path / "x.svs"]
    assert slide_id_for(Path("test3-TRITC 2 (560).ndpi")) == "test3-TRITC_2_560"


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared slides not present")
def test_real_slides_tile_or_fail_clearly(tmp_path: Path) -> None:
    sources = expand_sources([SHARED])
    names = {s.name for s in sources}
    assert "CMU-1-Small-Region.svs" in names
    assert "cmu-1-small-region" in names  # DICOM folder is one slide
    out = tmp_path / "tiles"
    outcomes = tile_many(sources, out, TilingConfig(min_tissue=0.05), workers=1, use_masks=False)
    by_name = {o.source.name: o for o in outcomes}
    assert "multiframe_camelyon_challenge_image.dcm" in names
    for name in ("CMU-1-Small-Region.svs", "tcga-cr-7395-01a-01-ts1.svs", "OS-1-detail.ome.tif",
                 "cmu-1-small-region", "test3-TRITC 2 (560).ndpi"):  # fmt: skip
        assert by_name[name].status == "tiled", by_name[name].error
    # physical windows need mpp: the TCGA slide has none and says how to fix it
    res = tile_many([SHARED / "aperio_svs" / "tcga-cr-7395-01a-01-ts1.svs"], tmp_path / "t2",
                    TilingConfig(mpp=0.5), workers=1)  # fmt: skip
    assert res[0].status == "failed"
    assert "--slide-mpp" in res[0].error
