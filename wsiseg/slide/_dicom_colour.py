"""DICOM-WSI files that say RGB but hold YCbCr JPEG frames, and the conversion that reads them right.

Bio-Formats' ``bfconvert`` (what many QuPath users convert with) writes whole-slide DICOM whose JPEG frames are
ordinary JFIF files (YCbCr, usually 4:2:0) while ``PhotometricInterpretation`` says ``RGB``. Since OpenSlide 4.0
sets the JPEG decoder's colour space from that attribute (openslide PR #558), such a slide comes back with its
luma and chroma samples as if they were R, G and B: white background reads (243, 128, 128), tissue blue-grey,
and nothing fails. libdicom #80 documents the converter's behaviour. The JFIF APP0 marker is explicit: JFIF
files are YCbCr by definition, so a frame that carries it (and no Adobe APP14 marker saying otherwise) is
YCbCr whatever the attribute says. :func:`ycbcr_frames_labelled_rgb` finds that case from the first frame of
the file; :func:`ycbcr_to_rgb` is the JFIF (full-range BT.601) inverse that libjpeg would have applied.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

__all__ = ["jpeg_colour_markers", "ycbcr_frames_labelled_rgb", "ycbcr_to_rgb"]

#: JPEG baseline and extended transfer syntaxes: the ones whose decoder colour space OpenSlide sets.
_JPEG_SYNTAXES = ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51")
#: Encapsulated Pixel Data, explicit VR little endian: tag (7FE0,0010), VR OB, undefined length.
_PIXEL_DATA = b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff"
_SCAN_LIMIT = 64 * 1024 * 1024
#: Bytes of a frame's start that hold its JPEG header (markers up to the start of scan).
_HEADER_BYTES = 65536


def jpeg_colour_markers(stream: bytes) -> dict[str, Any]:
    """The colour hints in a JPEG header: JFIF APP0, Adobe APP14 transform, SOF component ids.

    Args:
        stream: Bytes from the SOI marker on (the header is enough; parsing stops at SOS).

    Returns:
        ``{"jfif": bool, "adobe_transform": int | None, "component_ids": tuple[int, ...]}``.
    """
    out: dict[str, Any] = {"jfif": False, "adobe_transform": None, "component_ids": ()}
    if stream[:2] != b"\xff\xd8":
        return out
    pos = 2
    while pos + 4 <= len(stream):
        if stream[pos] != 0xFF:
            break
        marker = stream[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        length = int.from_bytes(stream[pos + 2 : pos + 4], "big")
        body = stream[pos + 4 : pos + 2 + length]
        if marker == 0xE0 and body[:5] == b"JFIF\x00":
            out["jfif"] = True
        elif marker == 0xEE and body[:5] == b"Adobe" and len(body) >= 12:
            out["adobe_transform"] = body[11]
        elif marker in (0xC0, 0xC1, 0xC2) and len(body) >= 6:
            n = body[5]
            out["component_ids"] = tuple(body[6 + 3 * i] for i in range(n) if 6 + 3 * i < len(body))
        elif marker == 0xDA:  # start of scan: the header is over
            break
        pos += 2 + length
    return out


def _first_frame_header(path: Path, limit: int = _SCAN_LIMIT, chunk: int = 1 << 20) -> bytes | None:
    """The first JPEG frame's header bytes of an encapsulated DICOM file (None when there is none).

    Reads in ``chunk``-sized pieces and stops once the header is in hand (usually the first chunk), never past
    ``limit`` bytes: the check runs at every open of the slide, in every reader process.
    """
    head = b""
    with path.open("rb") as fh:
        while len(head) < limit:
            piece = fh.read(chunk)
            head += piece
            start = head.find(_PIXEL_DATA)
            soi = head.find(b"\xff\xd8\xff", start + len(_PIXEL_DATA)) if start >= 0 else -1
            if soi >= 0 and (len(head) >= soi + _HEADER_BYTES or not piece):
                return head[soi : soi + _HEADER_BYTES]
            if not piece:
                return None
    return None


def ycbcr_frames_labelled_rgb(properties: Mapping[str, str], source: Path) -> str | None:
    """Why ``source`` needs :func:`ycbcr_to_rgb` after OpenSlide, or None when it does not.

    Args:
        properties: OpenSlide's properties of the slide (``dicom.*`` keys).
        source: The ``.dcm`` file OpenSlide opened.

    Returns:
        A one-line reason when the slide is DICOM, says ``RGB``, is JPEG baseline/extended and its first frame is
        a JFIF (YCbCr) stream without an Adobe marker saying RGB; None otherwise.
    """
    if properties.get("openslide.vendor") != "dicom":
        return None
    if properties.get("dicom.PhotometricInterpretation") != "RGB":
        return None
    if properties.get("dicom.TransferSyntaxUID") not in _JPEG_SYNTAXES:
        return None
    try:
        header = _first_frame_header(source)
    except OSError:
        return None
    if header is None:
        return None
    marks = jpeg_colour_markers(header)
    if not marks["jfif"] or marks["adobe_transform"] == 0 or len(marks["component_ids"]) != 3:
        return None
    return (
        f"{source.name}: PhotometricInterpretation says RGB but its JPEG frames are JFIF (YCbCr), as Bio-Formats' "
        "bfconvert writes them; converting YCbCr to RGB after OpenSlide"
    )


def ycbcr_to_rgb(pixels: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """JFIF YCbCr -> RGB (full-range BT.601, as libjpeg decodes) of the first three channels, in place.

    Args:
        pixels: ``(h, w, 3)`` or ``(h, w, 4)`` uint8 samples (a fourth channel, alpha, is left as it is).

    Returns:
        ``pixels``, converted.
    """
    height, width = pixels.shape[:2]
    ycbcr = Image.frombytes("YCbCr", (width, height), np.ascontiguousarray(pixels[..., :3]).tobytes())
    pixels[..., :3] = np.asarray(ycbcr.convert("RGB"))  # Pillow's libjpeg-style integer conversion
    return pixels
