"""Batch JPEG decoding of stored TIFF tiles with ``torchvision.io.decode_jpeg`` (nvJPEG on CUDA).

A :class:`~wsiseg.slide.strips.StripReader` built with ``decoder="cuda"`` (or ``"torch-cpu"``, the same code
path on the CPU, which is how the tests exercise it) decodes every not-yet-decoded tile of a strip in one
``decode_jpeg`` call instead of one imagecodecs call per tile. The compressed bytes come straight from the
TIFF (``dataoffsets`` / ``databytecounts``); abbreviated streams (Aperio: quantisation and Huffman tables in
the page's ``JPEGTables`` tag) get the tables spliced in after their SOI marker, which is what libjpeg does
when imagecodecs hands it the tables first.

:func:`gpu_decode_problem` says why a level cannot take this path (not baseline JPEG, RGB-encoded JPEG on
CUDA, a chroma subsampling nvJPEG does not decode); :func:`choose_decoder` turns the wish into a decoder
name and the one line the caller prints.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from wsiseg.slide.protocol import RGBArray

if TYPE_CHECKING:
    from wsiseg.slide.tile_layout import TileLayout

__all__ = ["DECODERS", "choose_decoder", "decode_batch", "gpu_decode_problem", "jpeg_stream"]

#: StripReader decoders: imagecodecs per tile (the default), decode_jpeg batches on the CPU or on CUDA.
DECODERS = ("cpu", "torch-cpu", "cuda")
#: TIFF compression 7: JPEG with one full (or table-abbreviated) stream per tile (6, old-style JPEG, is not).
_JPEG = 7
#: Photometric values decode_jpeg turns into the same RGB as tifffile: MINISBLACK, RGB (see below), YCbCr.
_PHOTOMETRIC = frozenset({1, 2, 6})
#: (horizontal, vertical) chroma subsampling nvJPEG decodes: 4:4:4, 4:2:2, 4:2:0, 4:4:0.
_NVJPEG_SUBSAMPLING = frozenset({(1, 1), (2, 1), (2, 2), (1, 2)})
#: An Adobe APP14 marker with transform 0: libjpeg then takes 3-component data as RGB, not YCbCr.
_ADOBE_RGB = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"


def gpu_decode_problem(layout: TileLayout, device: str = "cuda") -> str | None:
    """Why ``layout``'s tiles cannot be batch-decoded by ``decode_jpeg`` on ``device``, or None.

    Pure: it reads only the layout's tags (``compression``, ``photometric``, ``subsampling``).

    - Not TIFF compression 7 (JPEG 2000, LZW, old-style JPEG...): decode_jpeg decodes baseline JPEG only.
    - Photometric RGB (Aperio's JPEG: no YCbCr transform, components stored as R, G, B): libjpeg decodes it
      as RGB only when told so; on the CPU the stream gets an Adobe APP14 transform-0 marker that says it,
      nvJPEG's handling of that marker is not verified, so CUDA falls back.
    - YCbCr subsampling other than 4:4:4, 4:2:2, 4:2:0, 4:4:0 (nvJPEG's hardware paths) on CUDA.

    Args:
        layout: The level's tiles (from :func:`~wsiseg.slide.tile_layout.tile_layout`).
        device: ``"cuda"`` (nvJPEG) or ``"cpu"`` (torchvision's libjpeg-turbo).

    Returns:
        A short reason to keep the imagecodecs path, or None when the batch decoder applies.
    """
    if layout.compression != _JPEG:
        return f"{layout.codec} tiles are not baseline JPEG (decode_jpeg decodes JPEG only)"
    if layout.photometric not in _PHOTOMETRIC:
        return f"photometric {layout.photometric} JPEG is not decoded to RGB by decode_jpeg"
    on_cuda = str(device).startswith("cuda")
    if on_cuda and layout.photometric == 2:
        return "RGB-encoded JPEG (no YCbCr transform, Adobe APP14 transform 0) is not verified on nvJPEG"
    sub = layout.subsampling
    if on_cuda and layout.photometric == 6 and sub is not None and tuple(sub) not in _NVJPEG_SUBSAMPLING:
        return f"YCbCr subsampling {sub[0]}x{sub[1]} is not decoded by nvJPEG"
    return None


def choose_decoder(layout: TileLayout | str, want: str) -> tuple[str, str]:
    """The StripReader decoder to use for ``want`` and the one line to print about the choice.

    Args:
        layout: The level's layout, or :func:`~wsiseg.slide.tile_layout.tile_layout`'s reason it has none.
        want: ``"cuda"``, ``"torch-cpu"`` or ``"cpu"``.

    Returns:
        ``(decoder, message)``: ``decoder`` is one of :data:`DECODERS`; ``"cpu"`` whenever ``want`` cannot
        be served (no CUDA device, no tile layout, a codec / colour space / subsampling decode_jpeg lacks).

    Raises:
        ValueError: If ``want`` is not one of :data:`DECODERS`.
    """
    if want not in DECODERS:
        msg = f"decoder must be one of {', '.join(DECODERS)}, got {want!r}"
        raise ValueError(msg)
    if want == "cpu":
        return "cpu", "JPEG decoding: CPU (imagecodecs, one call per stored tile)"
    device = "cuda" if want == "cuda" else "cpu"
    if isinstance(layout, str):
        return "cpu", f"JPEG decoding: CPU path, the level is not strip-read ({layout})"
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            return "cpu", "JPEG decoding: no CUDA device here, falling back to the CPU path (imagecodecs)"
    problem = gpu_decode_problem(layout, device)
    if problem:
        return "cpu", f"JPEG decoding: CPU path (imagecodecs), {problem}"
    return want, f"JPEG decoding: torchvision decode_jpeg on {device}, one batch per strip of {layout.describe()}"


def jpeg_stream(data: bytes, tables: bytes | None, *, rgb: bool = False) -> bytes:
    """A self-contained JPEG stream for one stored tile.

    Args:
        data: The tile's bytes as stored (starts with SOI).
        tables: The page's ``JPEGTables`` (SOI, DQT/DHT segments, EOI), or None for full streams.
        rgb: Insert an Adobe APP14 transform-0 marker, so libjpeg keeps the components as RGB.

    Returns:
        SOI, [APP14], the tables' segments, then the tile's segments after its SOI.
    """
    head = b"\xff\xd8" + (_ADOBE_RGB if rgb else b"")
    body = data[2:] if data[:2] == b"\xff\xd8" else data
    if tables:
        inner = tables[2:] if tables[:2] == b"\xff\xd8" else tables
        if inner[-2:] == b"\xff\xd9":
            inner = inner[:-2]
        return head + inner + body
    return head + body


def decode_batch(streams: Sequence[bytes], device: str) -> list[RGBArray]:
    """Decode JPEG streams in one ``decode_jpeg`` call to ``(h, w, 3)`` uint8 RGB arrays on the host.

    Args:
        streams: Self-contained JPEG streams (see :func:`jpeg_stream`).
        device: ``"cpu"`` or a CUDA device (``"cuda"``, ``"cuda:1"``).

    Returns:
        One host array per stream, in order.
    """
    if not streams:
        return []
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    tensors = [torch.frombuffer(bytearray(s), dtype=torch.uint8) for s in streams]
    images: Any = decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device)
    return [np.ascontiguousarray(img.permute(1, 2, 0).cpu().numpy()) for img in images]
