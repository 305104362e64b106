"""open_slide on bad input: one-line SlideError naming the path, and no handle left open."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import tifffile
from PIL import Image

from wsiseg.errors import ConfigError, WsisegError
from wsiseg.slide import SlideError, open_slide

if TYPE_CHECKING:
    from conftest import SyntheticSlide


def _open_fds_to(path: Path) -> int:
    target = str(path.resolve())
    count = 0
    for fd in Path("/proc/self/fd").iterdir():
        try:
            count += str(fd.readlink()) == target
        except OSError:
            continue
    return count


def _expect_error(path: Path, pattern: str, backend: str = "auto") -> str:
    before = _open_fds_to(path) if path.is_file() else 0
    with pytest.raises(SlideError, match=pattern) as info:
        open_slide(path, backend=backend)
    message = str(info.value)
    assert str(path) in message
    assert "\n" not in message
    if path.is_file():
        assert _open_fds_to(path) == before == 0
    return message


def test_slide_error_is_the_shared_class() -> None:
    assert issubclass(SlideError, WsisegError)
    assert SlideError.exit_code == 3


def test_missing_file(tmp_path: Path) -> None:
    _expect_error(tmp_path / "nope (2).svs", r"slide not found: .*check the path")


def test_directory_without_dicom(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    _expect_error(tmp_path, r"directory without DICOM \(\.dcm\) files; pass a slide file")


def test_text_file_renamed_svs(tmp_path: Path) -> None:
    fake = tmp_path / "fake.svs"
    fake.write_text("this is not a slide\n" * 20)
    msg = _expect_error(fake, r"not a slide or image wsiseg can read")
    assert "openslide: format not recognised" in msg
    assert "tiffslide: not a TIFF file" in msg


def test_truncated_tiff(aperio_slide: SyntheticSlide, tmp_path: Path) -> None:
    data = aperio_slide.path.read_bytes()
    for frac in (0.5, 0.97):
        cut = tmp_path / f"cut {frac}.svs"
        cut.write_bytes(data[: int(len(data) * frac)])
        msg = _expect_error(cut, r"truncated or corrupt: re-copy or re-export")
        assert "image data ends at byte" in msg
        # forcing tiffslide gives the same diagnosis; openslide does not recognise it at all
        _expect_error(cut, r"truncated", backend="tiffslide")
        _expect_error(cut, r"openslide: format not recognised", backend="openslide")


def test_truncated_png(tmp_path: Path) -> None:
    png = tmp_path / "cut.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (300, 300, 3), dtype=np.uint8)).save(png)
    png.write_bytes(png.read_bytes()[:5000])
    _expect_error(png, r"failed .*truncated or corrupt")


def test_unsupported_image_format(tmp_path: Path) -> None:
    gif = tmp_path / "scan.gif"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(gif)
    _expect_error(gif, r"GIF images are not supported .*convert it to a format wsiseg reads")


def test_unsupported_pixel_type(tmp_path: Path) -> None:
    # stripped 16-bit: openslide's generic-tiff needs tiles, tiffslide and Pillow want 8-bit
    tif = tmp_path / "fluo16.tif"
    tifffile.imwrite(tif, np.zeros((64, 64), np.uint16))
    msg = _expect_error(tif, r"unsupported pixel type uint16.*convert it")
    assert "pillow: unsupported pixel mode I;16" in msg


def test_unknown_backend_is_config_error(aperio_slide: SyntheticSlide) -> None:
    with pytest.raises(ConfigError, match="unknown slide backend 'vips'"):
        open_slide(aperio_slide.path, backend="vips")


def test_forced_backend_that_cannot_read(tmp_path: Path) -> None:
    png = tmp_path / "plain.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(png)
    _expect_error(png, r"openslide: format not recognised.*try --backend auto", "openslide")
    _expect_error(png, r"tiffslide: not a TIFF file", "tiffslide")


def test_successful_open_then_close_releases_file(aperio_slide: SyntheticSlide) -> None:
    # tiffslide keeps the file open while the slide is open (openslide pools its own handles),
    # which is what makes the "no fd left after a failed open" checks above meaningful.
    slide = open_slide(aperio_slide.path, backend="tiffslide")
    slide.read_region((0, 0), 0, (300, 300))
    assert _open_fds_to(aperio_slide.path) == 1
    slide.close()
    assert _open_fds_to(aperio_slide.path) == 0
