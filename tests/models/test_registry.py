"""Model registry, create_model and the ``wsiseg models`` command (tiny variants only)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import torch
import typer
from torch import nn
from typer.testing import CliRunner

from wsiseg.cli.models import count_gflops, models
from wsiseg.errors import ModelError
from wsiseg.models import create_model, get_entry, list_models, register_model
from wsiseg.models._registry import _MODELS


@pytest.fixture
def scratch_name() -> Iterator[str]:
    name = "zz_test_registry_model"
    yield name
    _MODELS.pop(name, None)


def test_unknown_name_lists_known_models() -> None:
    with pytest.raises(ModelError, match="unknown model 'nope'") as info:
        create_model("nope")
    assert "dhunet" in str(info.value)
    assert "dhunet_tiny" in str(info.value)


def test_list_models_pattern_and_tiny_filter() -> None:
    assert list_models("dhunet*") == ["dhunet", "dhunet_tiny"]
    assert list_models("dhunet*", include_tiny=False) == ["dhunet"]
    assert list_models("no_such_*") == []
    assert all(not get_entry(n).tiny for n in list_models(include_tiny=False))


def test_dhunet_entry_metadata() -> None:
    entry = get_entry("dhunet")
    assert entry.family == "dhunet"
    assert not entry.tiny
    assert entry.paper_row == "93.07/87.04/97.52 | 85.78/76.89/91.29 | 85.23/76.26/91.09"
    assert entry.meta["params_m"] == pytest.approx(55.41)
    assert get_entry("dhunet_tiny").tiny


def test_duplicate_registration_raises(scratch_name: str) -> None:
    register_model(scratch_name, family="test")(lambda **_: nn.Identity())
    with pytest.raises(ValueError, match="already registered"):
        register_model(scratch_name, family="test")(lambda **_: nn.Identity())
    register_model(scratch_name, family="other", force=True)(lambda **_: nn.Identity())
    assert get_entry(scratch_name).family == "other"


def test_create_model_drops_none_and_passes_kwargs() -> None:
    model = create_model("dhunet_tiny", num_classes=3, pretrained=None, norm=None, img_size=64)
    assert model.segment.out_channels == 3
    assert isinstance(model.decoder[0].sc[1], nn.BatchNorm2d)
    gn = create_model("dhunet_tiny", norm="groupnorm", img_size=64)
    assert isinstance(gn.decoder[0].sc[1], nn.GroupNorm)


def test_count_gflops_is_two_per_mac() -> None:
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    assert count_gflops(conv, size=32) == pytest.approx(2 * 32 * 32 * 8 * 3 * 9 / 1e9)


def test_models_cli_json_and_table() -> None:
    app = typer.Typer()
    app.command()(models)
    runner = CliRunner()
    result = runner.invoke(app, ["--json", "--tiny", "--pattern", "dhunet_tiny"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["name"] for r in rows] == ["dhunet_tiny"]
    torch.manual_seed(0)
    tiny = create_model("dhunet_tiny")
    assert rows[0]["params_m"] == round(sum(p.numel() for p in tiny.parameters()) / 1e6, 3)
    assert rows[0]["gflops_224"] == pytest.approx(count_gflops(tiny), abs=0.01)
    table = runner.invoke(app, ["--tiny", "--pattern", "dhunet_tiny", "--no-flops"])
    assert table.exit_code == 0
    assert "dhunet_tiny" in table.output
    assert "2 x multiply" in table.output
    missing = runner.invoke(app, ["--pattern", "dhunet_tiny"])  # tiny variants hidden by default
    assert isinstance(missing.exception, ModelError)


def test_models_cli_lists_every_tiny_variant_with_flops() -> None:
    # Tiny Swin/ViT variants take only their own input size: counting them at 224 used to crash the command.
    app = typer.Typer()
    app.command()(models)
    result = CliRunner().invoke(app, ["--json", "--tiny", "--pattern", "*_tiny"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert set(rows) == set(list_models("*_tiny"))
    for name, row in rows.items():
        assert row["gflops"] > 0, name
        expected = 64 if name in {"swinunet_tiny", "transfuse_tiny"} else 224
        assert row["gflops_size"] == expected, name
        assert (row["gflops_224"] is None) == (expected != 224), name
    swin = create_model("swinunet_tiny")
    assert rows["swinunet_tiny"]["gflops"] == pytest.approx(count_gflops(swin, 64), abs=0.01)
    table = CliRunner().invoke(app, ["--tiny", "--pattern", "swinunet*"])
    assert table.exit_code == 0, table.output
    assert "(at 64)" in table.output


def test_args_for_tiles_fits_or_refuses_clearly() -> None:
    from wsiseg.models import args_for_tiles

    # Models with an input size are built for the tiles; fully convolutional ones need nothing.
    assert args_for_tiles("dhunet_tiny", {}, 64) == {"img_size": 64}
    assert args_for_tiles("swinunet", {"norm": "groupnorm"}, 96) == {"norm": "groupnorm", "img_size": 96}
    assert args_for_tiles("unet_tiny", {}, 224) == {}
    assert args_for_tiles("swinunet_tiny", {}, 64) == {}
    model = create_model("dhunet_tiny", **args_for_tiles("dhunet_tiny", {}, 64))
    model.eval()
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 4, 64, 64)
    with pytest.raises(ModelError, match=r"takes only 64 px input but the tiles are 224 px; tile with --size 64"):
        args_for_tiles("transfuse_tiny", {}, 224)
    with pytest.raises(ModelError, match=r"--img-size 224"):
        args_for_tiles("dhunet_tiny", {"img_size": 64}, 224)
