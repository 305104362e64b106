"""DICOM that says RGB but holds JFIF (YCbCr) JPEG frames (bfconvert's output) is read in its true colours."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
from PIL import Image

from wsiseg.slide import open_slide
from wsiseg.slide._dicom_colour import jpeg_colour_markers, ycbcr_frames_labelled_rgb, ycbcr_to_rgb
from wsiseg.slide._openslide import _REPORTED

DICOM_RGB = {"openslide.vendor": "dicom", "dicom.PhotometricInterpretation": "RGB",
             "dicom.TransferSyntaxUID": "1.2.840.10008.1.2.4.50"}  # fmt: skip
PIXEL_DATA = b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff"


def _tile() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)


def _jfif() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_tile()).save(buf, format="JPEG", quality=95)  # Pillow writes JFIF, YCbCr
    return buf.getvalue()


def _fake_dicom(tmp_path: Path, frame: bytes) -> Path:
    # preamble, a header element, then encapsulated Pixel Data: empty offset table item, one frame item
    body = b"\x00" * 128 + b"DICM" + b"\x08\x00\x16\x00UI\x04\x00abcd" + PIXEL_DATA
    body += b"\xfe\xff\x00\xe0\x00\x00\x00\x00" + b"\xfe\xff\x00\xe0" + len(frame).to_bytes(4, "little") + frame
    path = tmp_path / "level-0.dcm"
    path.write_bytes(body)
    return path


def test_markers_of_jfif_and_adobe_rgb_streams() -> None:
    jfif = jpeg_colour_markers(_jfif())
    assert jfif == {"jfif": True, "adobe_transform": None, "component_ids": (1, 2, 3)}
    rgb = imagecodecs.jpeg8_encode(_tile(), level=95, colorspace="RGB", outcolorspace="RGB")
    adobe = jpeg_colour_markers(bytes(rgb))
    assert adobe["adobe_transform"] == 0  # RGB-encoded: libjpeg writes the Adobe marker, no JFIF
    assert not adobe["jfif"]
    assert jpeg_colour_markers(b"not a jpeg") == {"jfif": False, "adobe_transform": None, "component_ids": ()}


def test_detection_needs_dicom_rgb_jpeg_and_a_jfif_frame(tmp_path: Path) -> None:
    jfif_file = _fake_dicom(tmp_path, _jfif())
    assert "JFIF (YCbCr)" in (ycbcr_frames_labelled_rgb(DICOM_RGB, jfif_file) or "")
    for key, value in (("dicom.PhotometricInterpretation", "YBR_FULL_422"), ("openslide.vendor", "aperio"),
                       ("dicom.TransferSyntaxUID", "1.2.840.10008.1.2.4.90")):  # fmt: skip
        assert ycbcr_frames_labelled_rgb({**DICOM_RGB, key: value}, jfif_file) is None
    rgb = bytes(imagecodecs.jpeg8_encode(_tile(), level=95, colorspace="RGB", outcolorspace="RGB"))
    (tmp_path / "rgb").mkdir()
    assert ycbcr_frames_labelled_rgb(DICOM_RGB, _fake_dicom(tmp_path / "rgb", rgb)) is None


def test_conversion_is_what_libjpeg_does_for_jfif() -> None:
    stream = _jfif()
    truth = np.asarray(Image.open(io.BytesIO(stream)).convert("RGB"))  # libjpeg's own YCbCr -> RGB
    raw = Image.open(io.BytesIO(stream))
    raw.draft("YCbCr", raw.size)  # the samples OpenSlide returns for such a frame: no colour conversion
    samples = np.array(raw.convert("YCbCr") if raw.mode != "YCbCr" else raw)
    got = ycbcr_to_rgb(np.dstack([samples, np.full(samples.shape[:2], 255, np.uint8)]))
    assert np.abs(got[..., :3].astype(int) - truth.astype(int)).max() <= 2
    assert (got[..., 3] == 255).all()


def test_bfconvert_dicom_reads_like_its_svs(slides_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    dicom, svs = slides_root / "dicom_wsi/cmu-1-small-region", slides_root / "aperio_svs/CMU-1-Small-Region.svs"
    if not dicom.exists() or not svs.exists():
        pytest.skip("shared CMU-1-Small-Region (DICOM and SVS) not present")
    _REPORTED.clear()  # another test of this process may have opened it already
    with caplog.at_level(logging.WARNING, logger="wsiseg.slide"), open_slide(dicom) as d, open_slide(svs) as s:
        assert d.properties["wsiseg.colour-fix"] == "ycbcr-to-rgb"
        a = d.read_region((0, 0), 0, d.dimensions).astype(int)
        b = s.read_region((0, 0), 0, s.dimensions).astype(int)
        low = d.read_region((0, 0), 2, d.level_dimensions[2])
    # read as stored, the DICOM was 66 grey levels off on average (white read as 243, 128, 128)
    assert np.abs(a - b).mean() < 6
    assert np.median(a.reshape(-1, 3), axis=0).min() > 230  # the white background is white
    assert np.median(low.reshape(-1, 3), axis=0).min() > 230  # every level file is converted
    assert sum("bfconvert" in r.getMessage() for r in caplog.records) == 1  # said once, not per read or level


def test_correctly_labelled_dicom_is_left_alone(slides_root: Path) -> None:
    path = slides_root / "dicom_wsi/multiframe_camelyon_challenge_image.dcm"
    if not path.exists():
        pytest.skip(f"{path} not present")
    with open_slide(path) as slide:  # YBR_FULL_422: OpenSlide converts it itself
        assert "wsiseg.colour-fix" not in slide.properties
        region = slide.read_region((0, 0), 0, slide.dimensions)
    assert np.median(region.reshape(-1, 3), axis=0).min() > 200
