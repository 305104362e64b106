"""OS faults, special files, hostile metadata and malformed annotations: a clear error and code, never exit 70.

Read-only and full-disk cases run on a real small tmpfs (skipped cleanly where it cannot be mounted: not root,
no mount permission in a container).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from wsiseg.errors import CheckpointError, DataError, StorageError
from wsiseg.testing.synthetic import make_patch_image
from wsiseg.tiling.annotation_io import rasterize_asap_xml, rasterize_geojson
from wsiseg.tiling.batch import expand_sources, tile_many
from wsiseg.tiling.geometry import TilingConfig
from wsiseg.tiling.manifest import load_manifest
from wsiseg.train.card import ModelCard

GRID = ["--window", "200", "--stride", "200", "--size", "32", "--workers", "1"]
CONFIG = TilingConfig(window=200, stride=200, size=32)


def _patch(path: Path, seed: int = 1) -> Path:
    make_patch_image(path, size=(400, 300), seed=seed)
    return path


def png_declaring(path: Path, width: int, height: int) -> Path:
    """A few hundred bytes of valid PNG whose header declares ``width`` x ``height`` 1-bit pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.parent.mkdir(parents=True, exist_ok=True)
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def _remount_ro(mnt: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)


def _no_scratch(folder: Path) -> None:
    left = [p.name for p in folder.rglob("*") if p.name.endswith((".partial", ".tmp")) or p.name.startswith(".")]
    assert not left, left


def test_out_under_a_regular_file(wsiseg: Callable[..., Any], tmp_path: Path) -> None:
    """Before: NotADirectoryError, exit 70, for tile, export, synth and fed-certs."""
    slide = _patch(tmp_path / "p.png")
    (tmp_path / "file").write_text("x")
    runs = [
        wsiseg("--out under a regular file", "tile", slide, "--out", tmp_path / "file" / "t", *GRID),
        wsiseg("--out under a regular file", "export", slide.with_name("p_mask.png"), "--out", tmp_path / "file" / "e"),
        wsiseg(
            "--out under a regular file",
            "synth",
            tmp_path / "file" / "s",
            "--n",
            "1",
            "--width",
            "256",
            "--height",
            "256",
        ),
        wsiseg("--out under a regular file", "fed-certs", "--site", "a", "--out", tmp_path / "file" / "c"),
    ]
    for run in runs:
        assert run.exit_code == StorageError.exit_code, run.output
        assert "not a folder" in run.error, run.error


def test_read_only_file_system(wsiseg: Callable[..., Any], tmp_path: Path, small_fs: Path) -> None:
    """Before: OSError [Errno 30], exit 70, for every command writing to --out."""
    slide = _patch(tmp_path / "p.png")
    _remount_ro(small_fs)
    runs = [
        wsiseg("--out on a read-only file system", "tile", slide, "--out", small_fs / "t", *GRID),
        wsiseg("--out on a read-only file system", "export", slide.with_name("p_mask.png"), "--out", small_fs / "e"),
        wsiseg(
            "--out on a read-only file system", "synth", small_fs / "s", "--n", "1", "--width", "256", "--height", "256"
        ),
        wsiseg("--out on a read-only file system", "fed-certs", "--site", "a", "--out", small_fs / "c"),
    ]
    for run in runs:
        assert run.exit_code == StorageError.exit_code, run.output
        assert "read-only" in run.error, run.error


def test_full_disk_stops_the_batch_and_keeps_what_is_done(
    tmp_path: Path, small_fs: Path, fill: Callable[..., None]
) -> None:
    """Before: ENOSPC failed (or crashed) slide after slide; now the batch stops, slide 1 kept and listed."""
    sources = [_patch(tmp_path / "in" / f"s{i}.png", seed=i) for i in range(3)]

    def fill_before_second(source: Path, index: int) -> None:
        if index == 1:
            fill(small_fs)

    out = small_fs / "tiles"
    with pytest.raises(StorageError, match=r"no space left.*batch stopped: 1 of the slides"):
        tile_many(expand_sources([tmp_path / "in"]), out, CONFIG, on_start=fill_before_second)
    (small_fs / "filler").unlink()
    assert [Path(s.source) for s in load_manifest(out).slides] == [sources[0]]
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "s0", "tiles.csv"]
    _no_scratch(out)
    again = tile_many(expand_sources([tmp_path / "in"]), out, CONFIG)  # the rerun continues
    assert [o.status for o in again] == ["skipped", "tiled", "tiled"]


def test_full_disk_during_export_leaves_no_partial_file(wsiseg: Callable[..., Any], tmp_path: Path,
                                                        small_fs: Path, fill: Callable[..., None]) -> None:  # fmt: skip
    slide = _patch(tmp_path / "p.png")
    out = small_fs / "export"
    out.mkdir()
    fill(small_fs)
    run = wsiseg("full disk during export", "export", slide.with_name("p_mask.png"), "--slide", slide, "--out", out)
    assert run.exit_code == StorageError.exit_code, run.output
    assert "no space left" in run.error
    assert list(out.iterdir()) == []


@pytest.mark.timeout(60)
def test_fifo_and_device_links_do_not_hang(wsiseg: Callable[..., Any], tmp_path: Path) -> None:
    """Before: ``info`` on a FIFO named .svs hung; a link to /dev/zero ended in NotADirectoryError."""
    os.mkfifo(tmp_path / "pipe.svs")
    (tmp_path / "zero.svs").symlink_to("/dev/zero")
    (tmp_path / "random.tif").symlink_to("/dev/urandom")
    for name in ("pipe.svs", "zero.svs", "random.tif"):
        run = wsiseg(f"{name}: FIFO or link to a device", "info", tmp_path / name)
        assert run.exit_code == 3, run.output
        assert "not a regular file" in run.error
    run = wsiseg("folder holding a FIFO and device links", "tile", tmp_path, "--out", tmp_path / "t", *GRID)
    assert run.exit_code == 3, run.output


def test_decompression_bomb_slide_and_mask(wsiseg: Callable[..., Any], tmp_path: Path) -> None:
    """Before: a 668-byte PNG declaring 100000x100000 was decoded in full (about 30 GB)."""
    bomb = png_declaring(tmp_path / "in" / "bomb.png", 100_000, 100_000)
    assert bomb.stat().st_size < 1000
    good = _patch(tmp_path / "in" / "good.png", 2)
    _patch(tmp_path / "in" / "masked.png", 3)
    png_declaring(tmp_path / "in" / "masked_mask.png", 100_000, 100_000)  # a slide whose mask declares that
    run = wsiseg("PNG slide and label mask declaring 100000x100000", "tile", tmp_path / "in", "--out",
                 tmp_path / "t", *GRID)  # fmt: skip
    assert run.exit_code == 1, run.output  # one good slide tiled, two refused
    text = " ".join(run.output.split())
    assert "100000x100000" in text
    assert "budget" in text
    assert [Path(s.source) for s in load_manifest(tmp_path / "t").slides] == [good]


@pytest.mark.parametrize("name", ["[red]bad.svs", "a[/b].svs", "[bold]x[/bold].png"])
def test_markup_in_file_names_is_printed_as_text(wsiseg: Callable[..., Any], tmp_path: Path, name: str) -> None:
    """Before: a name like ``[red]bad.svs`` crashed the console after the real error (exit 70)."""
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("not a slide")
    run = wsiseg("file name with Rich markup", "tile", path, "--out", tmp_path / "t", *GRID)
    assert run.exit_code == 3, run.output
    assert Path(name).name in run.output.replace("\n", "")


def test_bad_class_names_and_colours_never_reach_a_path() -> None:
    """Before: a card class ``../x`` made ``predict --probs`` fail in ValueError; colour 300 crashed export."""
    base: dict[str, Any] = {"format": "wsiseg-checkpoint", "version": 1, "model": {"name": "unet_tiny"}, "tiling": {}}
    bad = [
        [{"id": 0, "name": "../../etc/x", "color": [0, 0, 0]}],
        [{"id": 0, "name": "a/b", "color": [0, 0, 0]}],
        [{"id": 0, "name": "bg", "color": [300, 0, 0]}],
        [{"id": 0, "name": "bg", "color": [-1, 0, 0]}],
        [{"id": 0, "name": "bg", "color": [1.5, 0, 0]}],
        [{"id": 0, "name": "bg"}],
        ["bg"],
    ]
    for classes in bad:
        with pytest.raises(CheckpointError, match="bad class table"):
            ModelCard.from_dict({**base, "classes": classes}, source="card.json")


def test_mask_metadata_with_bad_colours_exports(wsiseg: Callable[..., Any], tmp_path: Path) -> None:
    labels = np.zeros((64, 64), np.uint8)
    labels[16:48, 16:48] = 1
    meta = {"classes": [{"id": 0, "name": "background", "color": [255, 255, 255]},
                        {"id": 1, "name": "tumor", "color": [300, 0, 0]}]}  # fmt: skip
    tifffile.imwrite(tmp_path / "m.tif", labels, description=json.dumps(meta))
    run = wsiseg("mask metadata with a colour of 300", "export", tmp_path / "m.tif", "--out", tmp_path / "e")
    assert run.exit_code in {0, 5}, run.output  # the bad table is ignored (default colours) or refused


GEOJSON_CASES: list[tuple[str, Any, str]] = [
    ("feature without coordinates", [{"type": "Feature", "geometry": {"type": "Polygon"}}], "feature 0.*coordinates"),
    ("feature that is not an object", {"type": "FeatureCollection", "features": [7]}, "feature 0.*must be an object"),
    ("geometry of the wrong type", [{"type": "Feature", "geometry": [1, 2]}], "feature 0.*geometry must be an object"),
    ("coordinates not lists", [{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": 5}}], "feature 0"),
    ("features not a list", {"type": "FeatureCollection", "features": {"a": 1}}, "'features' must be a list"),
    ("properties not an object", [{"type": "Feature", "properties": 3, "geometry": None}], "'properties'"),
]


@pytest.mark.parametrize(("case", "data", "match"), GEOJSON_CASES, ids=[c[0] for c in GEOJSON_CASES])
def test_malformed_geojson(tmp_path: Path, case: str, data: Any, match: str) -> None:
    """Before: KeyError, AttributeError or TypeError (exit 70)."""
    path = tmp_path / "a.geojson"
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=match) as err:
        rasterize_geojson(path, level0_size=(100, 100), downsample=1.0)
    assert str(path) in str(err.value), case


def _asap(coords: str) -> str:
    return (f'<ASAP_Annotations><Annotations><Annotation Name="A" Type="Polygon" PartOfGroup="tumor">'
            f"<Coordinates>{coords}</Coordinates></Annotation></Annotations></ASAP_Annotations>")  # fmt: skip


@pytest.mark.parametrize(
    ("coords", "match"),
    [
        ('<Coordinate Order="0" X="abc" Y="1"/>', "X='abc' is not a number"),
        ('<Coordinate Order="x" X="1" Y="1"/>', "Order='x' is not an integer"),
        ('<Coordinate Order="0" X="1"/>', "Y=None is not a number"),
    ],
)
def test_malformed_asap_xml(tmp_path: Path, coords: str, match: str) -> None:
    path = tmp_path / "a.xml"
    path.write_text(_asap(coords))
    with pytest.raises(DataError, match=match) as err:
        rasterize_asap_xml(path, level0_size=(100, 100), downsample=1.0)
    assert "<Annotation> 0" in str(err.value)
    assert "<Coordinate> 0" in str(err.value)


def test_bad_annotation_fails_its_slide_only(wsiseg: Callable[..., Any], tmp_path: Path) -> None:
    """Before: an ASAP ``X="abc"`` raised ValueError and aborted the whole batch of 5 slides."""
    for i in range(5):
        _patch(tmp_path / "in" / f"s{i}.png", seed=i)
    masks = tmp_path / "masks"
    masks.mkdir()
    for i in range(5):
        shutil.copy(tmp_path / "in" / f"s{i}_mask.png", masks / f"s{i}_mask.png")
    (masks / "s2_mask.png").unlink()
    (masks / "s2.xml").write_text(_asap('<Coordinate Order="0" X="abc" Y="1"/>'))
    run = wsiseg("ASAP X=\"abc\" for one slide of 5", "tile", tmp_path / "in", "--out", tmp_path / "t", "--masks",
                 masks, *GRID)  # fmt: skip
    assert run.exit_code == 1, run.output
    assert "s2.xml" in run.error
    assert "not a number" in run.error
    assert sorted(s.id for s in load_manifest(tmp_path / "t").slides) == ["s0", "s1", "s3", "s4"]


def test_sigterm_runs_the_ctrl_c_cleanup(tmp_path: Path) -> None:
    """Before: SIGTERM killed fed-server/fed-client at once, orphaning Flower processes in their own sessions."""
    import signal
    import sys
    import time

    script = tmp_path / "cmd.py"
    script.write_text(
        "import subprocess\n"
        "from wsiseg.cli import _install_signal_handlers\n"
        "_install_signal_handlers()\n"
        "child = subprocess.Popen(['sleep', '60'], start_new_session=True)\n"  # like a SuperNode
        "print(child.pid, flush=True)\n"
        "try:\n    child.wait()\nexcept KeyboardInterrupt:\n"
        "    child.terminate(); child.wait(); print('stopped', flush=True)\n"
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    child = int(proc.stdout.readline())
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert "stopped" in out
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)


def test_markup_in_run_paths_is_printed_as_text(wsiseg: Callable[..., Any], tiles64: Path, tmp_path: Path) -> None:
    """Before: `fed-train --runs '[red]runs'` printed the run folder through Rich markup (the tag vanished)."""
    runs = tmp_path / "[red]runs"
    run = wsiseg("run folder name with Rich markup", "fed-train", "--data", tiles64, "--clients", "2", "--partition",
                 "by-site", "--rounds", "1", "--local-steps", "1", "--batch-size", "4", "--model", "dhunet_tiny",
                 "--img-size", "64", "--dp", "none", "--device", "cpu", "--runs", runs)  # fmt: skip
    assert run.exit_code == 0, run.output
    text = run.output.replace("\n", "")
    assert "[red]runs" in text
    assert "done:" in text
