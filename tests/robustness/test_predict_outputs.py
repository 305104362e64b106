"""``predict`` output naming, clash refusal and rerun repair, on a real (freshly initialised) tiny checkpoint.

The weights are untrained, so the masks mean nothing; what is tested is where outputs go and what a rerun does.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from wsiseg.classes import DEFAULT_CLASSES
from wsiseg.export.sinks import prob_map_paths
from wsiseg.testing.synthetic import make_patch_image


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from wsiseg.models import create_model
    from wsiseg.tiling.geometry import TilingConfig
    from wsiseg.train.card import ModelCard, ModelSpec
    from wsiseg.train.checkpoint import save_checkpoint

    torch.manual_seed(0)
    args: dict[str, Any] = {}
    net = create_model("unet_tiny", **args, pretrained=False)
    card = ModelCard(ModelSpec("unet_tiny", args), DEFAULT_CLASSES.to_list(),
                     TilingConfig(window=128, stride=128, size=32).to_dict())  # fmt: skip
    path = tmp_path_factory.mktemp("ckpt") / "init"
    save_checkpoint(path, net, card)
    return path


def _patch(path: Path, seed: int) -> Path:
    make_patch_image(path, size=(256, 192), seed=seed)
    return path


def _predict(wsiseg: Callable[..., Any], case: str, checkpoint: Path, out: Path, *args: Any) -> Any:
    return wsiseg(case, "predict", *args, "--out", out, "--checkpoint", checkpoint, "--workers", "0",
                  "--device", "cpu")  # fmt: skip


def test_same_name_in_two_folders_gets_two_masks(wsiseg: Callable[..., Any], checkpoint: Path,
                                                 tmp_path: Path) -> None:  # fmt: skip
    """Before: the second ``slide.png`` was reported as "exists" and never predicted."""
    a = _patch(tmp_path / "siteA" / "slide.png", 1)
    b = _patch(tmp_path / "siteB" / "slide.png", 2)
    out = tmp_path / "pred"
    run = _predict(wsiseg, "predict: same file name in two folders", checkpoint, out, a, b)
    assert run.exit_code == 0, run.output
    assert sorted(p.name for p in out.glob("*.tif")) == ["siteA__slide.tif", "siteB__slide.tif"]
    other = _patch(tmp_path / "siteC" / "slide.png", 3)
    later = _predict(wsiseg, "predict: other slide, same output name, later run", checkpoint, out / "x.tif", a)
    assert later.exit_code == 0, later.output
    clash = _predict(wsiseg, "predict: other slide, same output name, later run", checkpoint, out / "x.tif", other)
    assert clash.exit_code == 5, clash.output
    assert str(a) in clash.error
    assert "--overwrite" in clash.error


def test_rerun_completes_missing_probability_maps(wsiseg: Callable[..., Any], checkpoint: Path,
                                                  tmp_path: Path) -> None:  # fmt: skip
    """Before: a mask.tif whose --probs maps were lost (kill -9, full disk) stayed incomplete: "exists"."""
    slide = _patch(tmp_path / "s.png", 4)
    out = tmp_path / "pred"
    assert _predict(wsiseg, "predict --probs", checkpoint, out, slide, "--probs").exit_code == 0
    maps = prob_map_paths(out / "s.tif", DEFAULT_CLASSES)
    assert all(p.is_file() for p in maps)
    maps[2].unlink()
    scratch = out / ".s.tif.abc123"  # what an interrupted writer leaves
    scratch.mkdir()
    (scratch / "level0.raw").write_bytes(b"\0" * 10)
    run = _predict(wsiseg, "predict --probs rerun after a lost map", checkpoint, out, slide, "--probs")
    assert run.exit_code == 0, run.output
    assert "exists" not in run.output
    assert all(p.is_file() for p in maps)
    assert not scratch.exists()
    again = _predict(wsiseg, "predict --probs rerun, all complete", checkpoint, out, slide, "--probs")
    assert "exists" in again.output


def test_full_disk_during_probability_maps(wsiseg: Callable[..., Any], checkpoint: Path, tmp_path: Path,
                                           small_fs: Path, fill: Callable[..., None]) -> None:  # fmt: skip
    """The disk fills up after the mask while the --probs maps are written: exit 9, no partial file under a final
    name, no scratch left, and the rerun with space again completes exactly the missing maps."""
    slide = _patch(tmp_path / "big.png", 5)
    ref = tmp_path / "ref"
    assert _predict(wsiseg, "predict --probs (reference)", checkpoint, ref, slide, "--probs").exit_code == 0
    mask_bytes = (ref / "big.tif").stat().st_size
    probs = [p.stat().st_size for p in prob_map_paths(ref / "big.tif", DEFAULT_CLASSES)]
    out = small_fs / "pred"
    out.mkdir()
    fill(small_fs, keep=mask_bytes + sum(probs) // 3)  # room for the mask and about one map
    run = _predict(wsiseg, "full disk during predict --probs", checkpoint, out, slide, "--probs")
    assert run.exit_code == 9, run.output
    assert "no space left" in run.error
    names = {p.name for p in out.iterdir()}
    assert not [n for n in names if n.startswith(".") or n.endswith((".partial", ".tmp"))], names
    for p in prob_map_paths(out / "big.tif", DEFAULT_CLASSES):  # a map under its final name is a whole map
        if p.is_file():
            assert p.read_bytes() == (ref / p.name).read_bytes()
    (small_fs / "filler").unlink()
    again = _predict(wsiseg, "predict --probs rerun after a full disk", checkpoint, out, slide, "--probs")
    assert again.exit_code == 0, again.output
    for p in [out / "big.tif", *prob_map_paths(out / "big.tif", DEFAULT_CLASSES)]:
        assert p.read_bytes() == (ref / p.name).read_bytes()
