"""Batch JPEG decoding (torchvision decode_jpeg) of strips: same windows as imagecodecs, fallbacks named.

The ``torch-cpu`` decoder is the code path ``cuda`` takes (stream assembly, one decode_jpeg call per strip,
host arrays), on torchvision's CPU libjpeg-turbo; the ``gpu`` test compares nvJPEG with it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import tifffile
import torch

from wsiseg.classes import DEFAULT_CLASSES
from wsiseg.export.slide_mask import predict_to_tiff
from wsiseg.inference.predictor import PredictSettings
from wsiseg.models import create_model
from wsiseg.slide import open_slide
from wsiseg.slide.jpeg_batch import choose_decoder, decode_batch, gpu_decode_problem, jpeg_stream
from wsiseg.slide.strips import StripReader, TileLayout, tile_layout
from wsiseg.testing.large import make_large_slide
from wsiseg.tiling.geometry import TilingConfig, window_grid
from wsiseg.tiling.window import ReadPlan, WindowReader

if TYPE_CHECKING:
    from conftest import SyntheticSlide

#: Largest |difference| allowed between decode_jpeg and imagecodecs windows. Both are libjpeg-turbo with
#: the default (islow DCT, fancy upsampling) settings; every comparison below measured 0.
TOLERANCE = 0


@pytest.fixture(scope="module")
def ycbcr_svs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Aperio-style YCbCr 4:2:0 JPEG pyramid, 2048 x 1280, 256 px tiles, some tiles not stored."""
    return make_large_slide(tmp_path_factory.mktemp("jpeg") / "ycbcr.svs", width=2048, height=1280, seed=3)


def _layout(path: Path, level: int = 0) -> TileLayout:
    with open_slide(path) as slide:
        found = tile_layout(slide, level)
    assert isinstance(found, TileLayout), found
    return found


def _compare(layout: TileLayout, window: int, read: int, decoder: str) -> tuple[StripReader, StripReader, int]:
    """Read the stride-window/2 grid with imagecodecs and with ``decoder``; the max abs difference."""
    origins = window_grid((layout.width, layout.height), window, window // 2)
    base = StripReader(layout, origins, read)
    other = StripReader(layout, origins, read, decoder=decoder)
    diff = 0
    for i in range(len(origins)):
        a, b = base.read(i), other.read(i)
        assert a.shape == b.shape == (read, read, 3)
        diff = max(diff, int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max()))
    return base, other, diff


@pytest.mark.parametrize("level", [0, 1])
def test_torch_cpu_windows_equal_imagecodecs_on_ycbcr_jpeg(ycbcr_svs: Path, level: int) -> None:
    layout = _layout(ycbcr_svs, level)
    assert (layout.compression, layout.photometric) == (7, 6)
    assert gpu_decode_problem(layout) is None
    base, batch, diff = _compare(layout, 512 if level == 0 else 1024, 256, "torch-cpu")
    assert diff <= TOLERANCE
    assert batch.decodes == base.decodes  # each stored tile once, as on the imagecodecs path
    assert 0 < batch.batches <= batch.decodes
    if level == 0:
        assert batch.batches <= layout.tiles_down < batch.decodes  # a strip per call, not a tile per call
    assert batch.peak_tiles <= batch.max_tiles


def _jpeg_tiff(path: Path, pixels: np.ndarray, subsampling: tuple[int, int], colorspace: str) -> Path:
    """A tiled JPEG TIFF (256 px tiles) stored as ``colorspace`` (``"ycbcr"`` or ``"rgb"``)."""
    tifffile.imwrite(
        path, pixels, tile=(256, 256), photometric="rgb", compression="jpeg", subsampling=subsampling,
        compressionargs={"level": 90, "outcolorspace": colorspace}, metadata=None,
    )  # fmt: skip
    return path


@pytest.mark.parametrize("subsampling", [(1, 1), (2, 1), (2, 2), (4, 1)])
def test_torch_cpu_equals_imagecodecs_for_each_subsampling(
    tmp_path: Path, aperio_slide: SyntheticSlide, subsampling: tuple[int, int]
) -> None:
    path = _jpeg_tiff(tmp_path / "sub.tif", aperio_slide.levels[0][:768, :1024], subsampling, "ycbcr")
    layout = _layout(path)
    assert (layout.photometric, layout.subsampling) == (6, subsampling)
    assert gpu_decode_problem(layout, "cpu") is None
    cuda_problem = gpu_decode_problem(layout, "cuda")
    if subsampling == (4, 1):
        assert "subsampling 4x1" in (cuda_problem or "")
    else:
        assert cuda_problem is None
    base, batch, diff = _compare(layout, 512, 512, "torch-cpu")
    assert diff <= TOLERANCE
    assert batch.decodes == base.decodes == 12


def test_rgb_jpeg_decodes_on_cpu_and_falls_back_on_cuda(tmp_path: Path, aperio_slide: SyntheticSlide) -> None:
    path = _jpeg_tiff(tmp_path / "rgb.tif", aperio_slide.levels[0][:768, :1024], (1, 1), "rgb")
    layout = _layout(path)
    assert layout.photometric == 2  # JPEG without the YCbCr transform, as Aperio writes it
    assert "RGB-encoded JPEG" in (gpu_decode_problem(layout, "cuda") or "")
    assert gpu_decode_problem(layout, "cpu") is None  # an Adobe APP14 transform-0 marker tells libjpeg
    base, batch, diff = _compare(layout, 512, 512, "torch-cpu")
    assert diff <= TOLERANCE
    assert batch.decodes == base.decodes == 12
    with pytest.raises(ValueError, match="RGB-encoded"):
        StripReader(layout, [(0, 0)], 256, decoder="cuda")


def test_non_jpeg_falls_back(tmp_path: Path) -> None:
    path = tmp_path / "lzw.tif"
    tifffile.imwrite(path, np.zeros((512, 512, 3), np.uint8), tile=(256, 256), compression="lzw", photometric="rgb")
    lzw = _layout(path)
    assert "not baseline JPEG" in (gpu_decode_problem(lzw, "cpu") or "")
    decoder, message = choose_decoder(lzw, "torch-cpu")
    assert decoder == "cpu"
    assert "not baseline JPEG" in message
    assert choose_decoder("not a TIFF file", "cuda")[0] == "cpu"
    with pytest.raises(ValueError, match="decoder must be"):
        choose_decoder(lzw, "nvjpeg")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_cuda_without_a_device_says_it_falls_back(ycbcr_svs: Path) -> None:
    decoder, message = choose_decoder(_layout(ycbcr_svs), "cuda")
    assert decoder == "cpu"
    assert "no CUDA device" in message


def test_window_reader_takes_the_plan_decoder(ycbcr_svs: Path) -> None:
    layout = _layout(ycbcr_svs)
    origins = window_grid((layout.width, layout.height), 512, 256)
    with open_slide(ycbcr_svs) as slide:
        plain = WindowReader(slide, origins, 0, 512, 64, "bilinear", ReadPlan(layout))
        batch = WindowReader(slide, origins, 0, 512, 64, "bilinear", ReadPlan(layout, decoder="torch-cpu"))
        for i in range(len(origins)):
            np.testing.assert_array_equal(np.asarray(plain.read(i)), np.asarray(batch.read(i)))
    assert batch.strips is not None
    assert batch.strips.batches > 0
    assert batch.decodes == plain.decodes


def _predict(slide: Path, out: Path, device: str, *, gpu_decode: bool) -> np.ndarray:
    torch.manual_seed(0)
    net = create_model("unet_tiny", pretrained=False).to(device)
    settings = PredictSettings(workers=0, device=device, threads=1, gpu_decode=gpu_decode)
    predict_to_tiff(slide, net, out, tiling=TilingConfig(window=512, stride=256, size=32), classes=DEFAULT_CLASSES,
                    settings=settings)  # fmt: skip
    return np.asarray(tifffile.imread(out))


def test_predict_gpu_decode_without_cuda_says_once_it_falls_back(
    ycbcr_svs: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="wsiseg.inference.predictor"):
        asked = _predict(ycbcr_svs, tmp_path / "gpu.tif", "cpu", gpu_decode=True)
    lines = [r.getMessage() for r in caplog.records if r.name == "wsiseg.inference.predictor"]
    assert lines == ["JPEG decoding: the device is cpu, not CUDA; falling back to the CPU path"]
    np.testing.assert_array_equal(asked, _predict(ycbcr_svs, tmp_path / "cpu.tif", "cpu", gpu_decode=False))


def test_jpeg_tables_are_spliced_after_soi() -> None:
    tables = b"\xff\xd8\xff\xdb\x00\x03Q\xff\xd9"
    tile = b"\xff\xd8\xff\xc0\x00\x03S\xff\xd9"
    assert jpeg_stream(tile, tables) == b"\xff\xd8\xff\xdb\x00\x03Q\xff\xc0\x00\x03S\xff\xd9"
    assert jpeg_stream(tile, None) == tile
    assert jpeg_stream(tile, None, rgb=True)[2:4] == b"\xff\xee"


def test_real_aperio_jpeg_with_jpeg_tables(slides_root: Path) -> None:
    """CMU-1-Small-Region: abbreviated RGB JPEG streams with the tables in JPEGTables, 240 px tiles."""
    path = slides_root / "aperio_svs" / "CMU-1-Small-Region.svs"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    layout = _layout(path)
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].jpegtables is not None
    assert "RGB-encoded JPEG" in (gpu_decode_problem(layout, "cuda") or "")
    base, batch, diff = _compare(layout, 480, 480, "torch-cpu")
    assert diff <= TOLERANCE
    assert batch.decodes == base.decodes


def test_real_aperio_j2k_falls_back(slides_root: Path) -> None:
    path = slides_root / "aperio_svs" / "tcga-cr-7395-01a-01-ts1.svs"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    layout = _layout(path)
    for device in ("cpu", "cuda"):
        assert "APERIO_JP2000" in (gpu_decode_problem(layout, device) or "")
    with pytest.raises(ValueError, match="not baseline JPEG"):
        StripReader(layout, [(0, 0)], 256, decoder="torch-cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("level", [0, 1])
def test_cuda_decoder_matches_cpu(ycbcr_svs: Path, level: int) -> None:
    """nvJPEG against libjpeg-turbo: IDCT and upsampling may differ, so print the difference and bound it."""
    layout = _layout(ycbcr_svs, level)
    assert choose_decoder(layout, "cuda")[0] == "cuda"
    base, batch, diff = _compare(layout, 512 if level == 0 else 1024, 256, "cuda")
    print(f"cuda decode_jpeg vs imagecodecs, level {level}: max abs difference {diff}")
    assert diff <= 8
    assert batch.decodes == base.decodes


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_on_rgb_jpeg_with_adobe_marker(tmp_path: Path, aperio_slide: SyntheticSlide) -> None:
    """Evidence for lifting the RGB-JPEG fallback: nvJPEG on Adobe transform-0 streams against imagecodecs."""
    path = _jpeg_tiff(tmp_path / "rgb.tif", aperio_slide.levels[0][:768, :1024], (1, 1), "rgb")
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        streams, expected = [], []
        for i, (offset, count) in enumerate(zip(page.dataoffsets, page.databytecounts, strict=True)):
            tif.filehandle.seek(offset)
            data = tif.filehandle.read(count)
            expected.append(np.asarray(page.decode(data, i, jpegtables=page.jpegtables)[0]).reshape(256, 256, 3))
            streams.append(jpeg_stream(data, page.jpegtables, rgb=True))
    got = decode_batch(streams, "cuda")
    diff = max(int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max()) for a, b in zip(got, expected, strict=True))
    print(f"cuda decode_jpeg on RGB JPEG with an Adobe APP14 marker vs imagecodecs: max abs difference {diff}")
    assert diff <= 8


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_predict_gpu_decode_on_cuda(ycbcr_svs: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="wsiseg.inference.predictor"):
        asked = _predict(ycbcr_svs, tmp_path / "gpu.tif", "cuda", gpu_decode=True)
    assert "decode_jpeg on cuda" in caplog.text
    cpu = _predict(ycbcr_svs, tmp_path / "cpu.tif", "cuda", gpu_decode=False)
    assert float(np.mean(asked == cpu)) > 0.99
