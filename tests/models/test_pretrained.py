"""DHUnet ImageNet initialisation: files in timm and original naming, the authors' block renumbering."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from wsiseg.errors import ModelError
from wsiseg.models import create_model
from wsiseg.models.dhunet import DHUnet
from wsiseg.models.pretrained import load_dhunet_pretrained, resolve_pretrained_dir


def _to_microsoft_swin(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm Swin keys -> Microsoft release keys (downsample at the end of the previous stage)."""
    out = {}
    for k, v in sd.items():
        k = re.sub(r"^layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", k)
        out[k.replace("head.fc.", "head.")] = v
    out["layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(49, 49, dtype=torch.long)
    return out


def _to_fb_convnext(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm ConvNeXt keys -> FB release keys."""
    out = {}
    for k, v in sd.items():
        k = k.replace("stem.", "downsample_layers.0.")
        k = re.sub(r"^stages\.(\d+)\.downsample\.", r"downsample_layers.\1.", k)
        k = re.sub(r"^stages\.(\d+)\.blocks\.", r"stages.\1.", k)
        k = k.replace("conv_dw", "dwconv").replace("mlp.fc", "pwconv")
        k = k.replace("head.norm.", "norm.").replace("head.fc.", "head.")
        out[k] = v
    return out


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Full-depth Swin-T (2,2,6,2) and ConvNeXt-T (3,3,9,3) with random weights, saved in several formats."""
    torch.manual_seed(3)
    swin = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False).state_dict()
    convnext = timm.create_model("convnext_tiny", pretrained=False).state_dict()
    d = tmp_path_factory.mktemp("weights")
    torch.save({"model": _to_microsoft_swin(swin)}, d / "swin_tiny_patch4_window7_224.pth")
    save_file(convnext, str(d / "convnext_tiny.safetensors"))
    fb = d / "fb"
    fb.mkdir()
    torch.save({"model": _to_fb_convnext(convnext)}, fb / "convnext_tiny_1k_224.pth")
    save_file(swin, str(fb / "swin_tiny.safetensors"))
    return {"swin": swin, "convnext": convnext, "dir": d, "fb_dir": fb}


@pytest.fixture
def model() -> DHUnet:
    torch.manual_seed(0)
    return create_model("dhunet")


def _check_mapping(model: DHUnet, swin: dict[str, torch.Tensor], convnext: dict[str, torch.Tensor]) -> None:
    g, loc = model.global_encoder.state_dict(), model.local_encoder.state_dict()
    for dst, src in ((0, 2), (1, 5)):
        for name in ("attn.qkv.weight", "attn.relative_position_bias_table", "mlp.fc2.bias", "norm1.weight"):
            assert torch.equal(g[f"layers.2.blocks.{dst}.{name}"], swin[f"layers.2.blocks.{src}.{name}"])
    for dst, src in ((0, 2), (1, 5), (2, 8)):
        for name in ("conv_dw.weight", "mlp.fc1.weight", "gamma"):
            got, want = f"stages.2.blocks.{dst}.{name}", f"stages.2.blocks.{src}.{name}"
            assert torch.equal(loc[got], convnext[want])
    # everything else by name, including timm-placed downsample layers
    by_name = [
        "layers.1.blocks.1.attn.qkv.weight",
        "layers.1.downsample.reduction.weight",
        "patch_embed.proj.weight",
    ]
    for key in by_name:
        assert torch.equal(g[key], swin[key])
    for key in ("stages.1.blocks.2.mlp.fc2.weight", "stages.3.downsample.1.weight", "stem.1.bias"):
        assert torch.equal(loc[key], convnext[key])


def test_wrapped_microsoft_swin_and_timm_safetensors_convnext(model: DHUnet, sources: dict) -> None:
    d: Path = sources["dir"]
    decoder_before = {k: v.clone() for k, v in model.decoder.state_dict().items()}
    ds_before = model.deep_supervision[0][0].weight.clone()
    reports = load_dhunet_pretrained(model, d / "swin_tiny_patch4_window7_224.pth", d / "convnext_tiny.safetensors")
    _check_mapping(model, sources["swin"], sources["convnext"])
    after = model.decoder.state_dict()
    assert all(torch.equal(after[k], v) for k, v in decoder_before.items())
    assert torch.equal(model.deep_supervision[0][0].weight, ds_before)
    g, loc = reports["global"], reports["local"]
    assert g.missing == g.mismatched == loc.missing == loc.mismatched == []
    assert g.loaded == len(model.global_encoder.state_dict())
    assert loc.loaded == len(model.local_encoder.state_dict())
    assert set(g.unexpected) == {"norm.weight", "norm.bias", "head.fc.weight", "head.fc.bias"}
    assert set(loc.unexpected) == {"head.norm.weight", "head.norm.bias", "head.fc.weight", "head.fc.bias"}
    assert {k.split(".")[3] for k in g.dropped} == {"0", "1", "3", "4"}
    assert {k.split(".")[3] for k in loc.dropped} == {"0", "1", "3", "4", "6", "7"}


def test_fb_convnext_via_directory_convention(sources: dict) -> None:
    torch.manual_seed(0)
    model = create_model("dhunet", pretrained=str(sources["fb_dir"]))
    _check_mapping(model, sources["swin"], sources["convnext"])


def test_directory_convention_errors(sources: dict, tmp_path: Path) -> None:
    d: Path = sources["dir"]
    expected = (d / "swin_tiny_patch4_window7_224.pth", d / "convnext_tiny.safetensors")
    assert resolve_pretrained_dir(d) == expected
    with pytest.raises(ModelError, match="must be a directory"):
        resolve_pretrained_dir(d / "convnext_tiny.safetensors")
    (tmp_path / "swin_a.pth").write_bytes(b"")
    (tmp_path / "swin_b.pth").write_bytes(b"")
    with pytest.raises(ModelError, match=r"found 2 weights files named \*swin\*"):
        resolve_pretrained_dir(tmp_path)


def test_missing_or_misshaped_tensors(model: DHUnet, sources: dict, tmp_path: Path) -> None:
    broken = dict(sources["convnext"])
    del broken["stages.1.blocks.0.gamma"]
    save_file(broken, str(tmp_path / "convnext.safetensors"))
    with pytest.raises(ModelError, match="1 missing"):
        load_dhunet_pretrained(model, False, tmp_path / "convnext.safetensors")
    report = load_dhunet_pretrained(model, False, tmp_path / "convnext.safetensors", strict=False)["local"]
    assert report.missing == ["stages.1.blocks.0.gamma"]
    tiny = create_model("dhunet_tiny")
    with pytest.raises(ModelError, match=r"mis-shaped|do not fit"):
        load_dhunet_pretrained(tiny, False, sources["dir"] / "convnext_tiny.safetensors")
    with pytest.raises(ModelError, match="not found"):
        load_dhunet_pretrained(model, tmp_path / "nope.pth", False)


def test_download_offline_is_a_model_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    cached = Path(huggingface_hub.constants.HF_HUB_CACHE) / "models--timm--convnext_tiny.fb_in1k"
    if cached.exists():
        pytest.skip("convnext_tiny.fb_in1k is in the local Hugging Face cache; nothing to check offline")
    # the download fails before the (tiny) model's shapes are looked at
    with pytest.raises(ModelError, match=r"cannot download convnext_tiny\.fb_in1k.*pretrained=False"):
        load_dhunet_pretrained(create_model("dhunet_tiny"), False, True)
