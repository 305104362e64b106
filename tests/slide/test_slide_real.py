"""Real slides from ../shared/data/slides (skipped when absent): facts from that folder's README."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from wsiseg.slide import SlideError, open_slide

# relative path, backend picked by "auto", (w, h), level count, mpp (None = missing), vendor
CASES = [
    ("aperio_svs/CMU-1-Small-Region.svs", "openslide", (2220, 2967), 1, 0.499, "aperio"),
    ("aperio_svs/tcga-cr-7395-01a-01-ts1.svs", "openslide", (4443, 3567), 2, None, "aperio"),
    ("dicom_wsi/cmu-1-small-region", "openslide", (2220, 2967), 12, 0.499, "dicom"),
    ("dicom_wsi/multiframe_camelyon_challenge_image.dcm", "openslide", (1152, 700), 1, 29.0, "dicom"),
    ("hamamatsu_ndpi/test3-TRITC 2 (560).ndpi", "openslide", (3968, 4864), 7, 0.228, "hamamatsu"),
    ("ome_tiff/OS-1-detail.ome.tif", "tiffslide", (1101, 1101), 1, 0.227, None),
]


@pytest.mark.parametrize(("rel", "backend", "dims", "levels", "mpp", "vendor"), CASES)
def test_real_slide_facts(
    slides_root: Path,
    rel: str,
    backend: str,
    dims: tuple[int, int],
    levels: int,
    mpp: float | None,
    vendor: str | None,
) -> None:
    path = slides_root / rel
    if not path.exists():
        pytest.skip(f"{path} not present")
    with open_slide(path) as slide:
        assert slide.backend == backend
        assert slide.dimensions == dims
        assert slide.level_count == levels
        assert slide.vendor == vendor
        if mpp is None:
            assert slide.mpp is None
        else:
            assert slide.mpp == pytest.approx((mpp, mpp), rel=0.01)
        w, h = slide.level_dimensions[-1]
        region = slide.read_region((dims[0] // 2, dims[1] // 2), 0, (256, 192))
        low = slide.read_region((0, 0), slide.level_count - 1, (min(w, 64), min(h, 64)))
        thumb = slide.get_thumbnail(128)
    assert region.shape == (192, 256, 3)
    assert region.dtype == np.uint8
    assert region.std() > 1.0  # real content, not a blank fill
    assert low.shape == (min(h, 64), min(w, 64), 3)
    assert max(thumb.shape[:2]) == 128


def test_cmu_svs_backends_agree(slides_root: Path) -> None:
    path = slides_root / "aperio_svs/CMU-1-Small-Region.svs"
    with open_slide(path, "openslide") as a, open_slide(path, "tiffslide") as b:
        assert a.objective_power == b.objective_power == 20.0
        assert set(a.associated_image_names) == set(b.associated_image_names)
        ra = a.read_region((800, 1200), 0, (300, 200))
        rb = b.read_region((800, 1200), 0, (300, 200))
        label = a.read_associated("label")
    assert np.abs(ra.astype(int) - rb.astype(int)).max() <= 2
    assert label.ndim == 3
    assert label.shape[2] == 3


def test_ndpi_level_counts_differ_between_readers(slides_root: Path) -> None:
    path = slides_root / "hamamatsu_ndpi/test3-TRITC 2 (560).ndpi"
    with open_slide(path, "openslide") as a, open_slide(path, "tiffslide") as b:
        assert (a.level_count, b.level_count) == (7, 4)
        assert a.mpp == pytest.approx(b.mpp)
        assert a.objective_power == b.objective_power == 40.0


def test_dicom_folder_via_any_file_and_not_tiffslide(slides_root: Path, tmp_path: Path) -> None:
    folder = slides_root / "dicom_wsi/cmu-1-small-region"
    with open_slide(folder / "level-5-frames-0-1.dcm") as slide:
        assert slide.level_count == 12
        assert slide.dimensions == (2220, 2967)
    with pytest.raises(SlideError, match="tiffslide: not a TIFF file"):
        open_slide(folder, backend="tiffslide")
    # a folder holding only part of the DICOM series still opens; an empty copy does not
    partial = tmp_path / "partial dicom"
    partial.mkdir()
    shutil.copy(folder / "level-11-frames-0-1.dcm", partial)
    with open_slide(partial) as slide:
        assert slide.level_count == 1


def test_ome_tiff_not_openslide(slides_root: Path) -> None:
    path = slides_root / "ome_tiff/OS-1-detail.ome.tif"
    with pytest.raises(SlideError, match=r"openslide: format not recognised.*--backend auto"):
        open_slide(path, backend="openslide")
