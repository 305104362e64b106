"""Tests for the streaming mask TIFF writer, read back by tifffile, openslide and tiffslide."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile
import tiffslide

from wsiseg.classes import DEFAULT_CLASSES
from wsiseg.errors import DataError
from wsiseg.export.pyramid import reduce_rows
from wsiseg.export.sinks import StitchSink, open_prob_writers, prob_map_paths, write_label_pyramid, write_prob_maps
from wsiseg.export.tiff import MaskTiffWriter, pyramid_sizes, read_mask_level, read_mask_tiff, sidecar_path
from wsiseg.inference.stitching import BandStitcher

MPP = 1.116  # 0.25 um/px slide at s = 0.224


@pytest.fixture
def labels() -> np.ndarray:
    rng = np.random.default_rng(3)
    ii, jj = np.mgrid[0:700, 0:590]
    lab = ((ii // 37 + jj // 23) % 4).astype(np.uint8)
    lab[rng.random(lab.shape) < 0.01] = 3  # some isolated pixels
    return lab


def write(tmp_path: Path, lab: np.ndarray, **kwargs: object) -> Path:
    return write_label_pyramid(
        tmp_path / "mask.tif", lab, mpp=MPP, classes=DEFAULT_CLASSES, min_level_size=256,
        provenance={"slide": "s.svs"}, downsample_to_level0=1000 / 224, **kwargs,  # type: ignore[arg-type]
    )  # fmt: skip


def test_pyramid_sizes() -> None:
    sizes = pyramid_sizes(22400, 17921)
    assert sizes[0] == (22400, 17921)
    assert sizes[1] == (11200, 8961)
    assert len(sizes) == 6
    assert max(sizes[-1]) < 1024 <= max(sizes[-2])
    assert pyramid_sizes(900, 500) == [(900, 500)]


def test_flat_pyramid_structure_with_tifffile(tmp_path: Path, labels: np.ndarray) -> None:
    path = write(tmp_path, labels)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.json", "mask.tif"]
    with tifffile.TiffFile(path) as tif:
        pages = list(tif.pages)
        assert len(pages) == 3
        for k, page in enumerate(pages):
            assert page.is_tiled
            assert (page.tilewidth, page.tilelength) == (256, 256)
            assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
            assert page.dtype == np.uint8
            assert page.subfiletype == (0 if k == 0 else 1)
            assert page.tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER
            xres = page.tags["XResolution"].value
            assert 1e4 / (xres[0] / xres[1]) == pytest.approx(MPP * 2**k, rel=1e-6)
            np.testing.assert_array_equal(page.asarray(), reduce_rows(labels, 2**k, "majority"))
    lab0, meta = read_mask_tiff(path)
    np.testing.assert_array_equal(lab0, labels)
    np.testing.assert_array_equal(read_mask_level(path, 1), reduce_rows(labels, 2, "majority"))
    assert meta["classes"] == DEFAULT_CLASSES.to_list()
    assert meta["mpp"] == MPP
    assert meta["provenance"] == {"slide": "s.svs"}
    assert meta["downsample_to_level0"] == pytest.approx(1000 / 224)
    assert json.loads(sidecar_path(path).read_text()) == meta
    with pytest.raises(DataError):
        read_mask_level(path, 3)


def test_openslide_and_tiffslide_read_flat_pyramid(tmp_path: Path, labels: np.ndarray) -> None:
    path = write(tmp_path, labels)
    expected_dims = ((590, 700), (295, 350), (148, 175))
    with openslide.OpenSlide(str(path)) as osl:
        assert osl.level_count == 3
        assert osl.level_dimensions == expected_dims
        np.testing.assert_allclose(osl.level_downsamples, [1, 2, 4], rtol=0.01)
        assert float(osl.properties["openslide.mpp-x"]) == pytest.approx(MPP, abs=1e-3)
        assert float(osl.properties["openslide.mpp-y"]) == pytest.approx(MPP, abs=1e-3)
        desc = json.loads(osl.properties["tiff.ImageDescription"])
        assert [c["name"] for c in desc["classes"]] == ["background", "tumor", "stroma", "normal"]
        region = np.asarray(osl.read_region((100, 200), 0, (50, 40)))
        np.testing.assert_array_equal(region[..., 0], labels[200:240, 100:150])  # grey -> RGBA
    with tiffslide.TiffSlide(path) as tsl:
        assert tsl.level_count == 3
        assert tsl.level_dimensions == expected_dims
        assert float(tsl.properties["tiffslide.mpp-x"]) == pytest.approx(MPP, abs=1e-3)
        lvl1 = np.asarray(tsl.read_region((0, 0), 1, (295, 350), as_array=True))
        np.testing.assert_array_equal(lvl1.reshape(350, 295, -1)[..., 0], reduce_rows(labels, 2, "majority"))


def test_ome_variant(tmp_path: Path, labels: np.ndarray) -> None:
    path = write(tmp_path, labels, ome=True)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome
        assert len(tif.pages) == 1  # reduced levels live in SubIFDs
        assert len(tif.series[0].levels) == 3
    with tiffslide.TiffSlide(path) as tsl:
        assert tsl.level_count == 3
        assert float(tsl.properties["tiffslide.mpp-x"]) == pytest.approx(MPP, abs=1e-3)
    lab0, meta = read_mask_tiff(path)
    np.testing.assert_array_equal(lab0, labels)
    assert meta["classes"] == DEFAULT_CLASSES.to_list()  # parsed from the OME Description
    np.testing.assert_array_equal(read_mask_level(path, 2), reduce_rows(labels, 4, "majority"))


def test_exception_midway_leaves_nothing(tmp_path: Path, labels: np.ndarray) -> None:
    def crash_midway() -> None:
        with MaskTiffWriter(tmp_path / "mask.tif", 590, 700, mpp=MPP, classes=DEFAULT_CLASSES) as w:
            w.write_rows(0, labels[:300])
            assert len(list(tmp_path.iterdir())) == 1  # the hidden scratch folder exists meanwhile
            raise RuntimeError("model crashed")

    with pytest.raises(RuntimeError, match="model crashed"):
        crash_midway()
    assert list(tmp_path.iterdir()) == []

    def blocks():
        yield labels[:256]
        raise RuntimeError("reader died")

    with pytest.raises(RuntimeError, match="reader died"):
        write_label_pyramid(tmp_path / "mask.tif", blocks(), mpp=MPP, classes=DEFAULT_CLASSES, size=(590, 700))
    assert list(tmp_path.iterdir()) == []


def test_incomplete_or_disordered_rows_fail_and_keep_old_file(tmp_path: Path, labels: np.ndarray) -> None:
    old = write(tmp_path, labels)
    before = old.read_bytes()
    w = MaskTiffWriter(old, 590, 700, mpp=MPP, classes=DEFAULT_CLASSES)
    w.write_rows(0, labels[:100])
    with pytest.raises(DataError):
        w.write_rows(150, labels[150:200])  # gap
    with pytest.raises(DataError):
        w.write_rows(100, labels[100:200].astype(np.int32))
    with pytest.raises(DataError, match="only 100 of 700 rows"):
        w.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.json", "mask.tif"]
    assert old.read_bytes() == before


def test_stitcher_streams_into_label_and_prob_maps(tmp_path: Path) -> None:
    h, w, c, win, stride = 300, 260, 4, 32, 16
    rng = np.random.default_rng(5)
    out = tmp_path / "pred.tif"
    kw = {"mpp": MPP, "classes": DEFAULT_CLASSES, "min_level_size": 128}
    label_writer = MaskTiffWriter(out, w, h, label_offset=1, **kw)  # type: ignore[arg-type]
    sink = StitchSink(label_writer, open_prob_writers(out, w, h, **kw))  # type: ignore[arg-type]
    collected_l = np.zeros((h, w), np.uint8)
    collected_p = np.zeros((h, w, c), np.uint8)

    def tee(row: int, lab: np.ndarray, probs: np.ndarray | None) -> None:
        collected_l[row : row + lab.shape[0]] = lab
        collected_p[row : row + lab.shape[0]] = probs
        sink(row, lab, probs)

    st = BandStitcher(w, h, win, stride, c, tee, label_offset=1, emit_probs=True)
    for y in range(0, h - win + stride, stride):
        for x in range(0, w - win + stride, stride):
            p = rng.random((c, win, win), dtype=np.float32)
            st.add(x, y, p / p.sum(axis=0))
    st.finish()
    paths = [wr.close() for wr in sink.writers()]
    assert paths[1:] == prob_map_paths(out, DEFAULT_CLASSES)
    lab0, meta = read_mask_tiff(out)
    np.testing.assert_array_equal(lab0, collected_l)
    assert meta["label_offset"] == 1
    assert set(np.unique(lab0)) <= {1, 2, 3, 4}
    for k, path in enumerate(paths[1:]):
        pk, pmeta = read_mask_tiff(path)
        np.testing.assert_array_equal(pk, collected_p[..., k])
        assert pmeta["kind"] == "probability"
        assert pmeta["provenance"]["class"] == DEFAULT_CLASSES.names[k]
    # the labels are the argmax of the (quantised) probabilities up to rounding ties
    agree = np.mean(np.argmax(collected_p, axis=2) + 1 == collected_l)
    assert agree > 0.99


def test_write_prob_maps_from_array(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    probs = rng.integers(0, 256, (90, 70, 4), dtype=np.uint8)
    paths = write_prob_maps(tmp_path / "m.tif", probs, mpp=0.5, classes=DEFAULT_CLASSES)
    assert [p.name for p in paths] == [f"m_prob_{n}.tif" for n in DEFAULT_CLASSES.names]
    for k, p in enumerate(paths):
        np.testing.assert_array_equal(read_mask_level(p), probs[..., k])
