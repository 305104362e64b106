"""Tests for the six FedDP Table-I baselines: FCN, U-Net, DeepLabV3, UPerNet, Swin-Unet, TransFuse."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.models.convnext import ConvNeXt
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

import wsiseg.models.deeplabv3
import wsiseg.models.fcn
import wsiseg.models.swinunet
import wsiseg.models.transfuse
import wsiseg.models.unet
import wsiseg.models.upernet  # noqa: F401
from wsiseg.errors import ModelError
from wsiseg.models._registry import get_entry, list_models
from wsiseg.models.layers.convert import batchnorm_names, batchnorm_to_groupnorm
from wsiseg.models.unet import UNetEncoder

FAMILIES = ["fcn", "unet", "deeplabv3", "convnext", "swinunet", "transfuse"]
PAPER_M = {
    "fcn": 32.95,
    "unet": 39.40,
    "deeplabv3": 39.63,
    "convnext": 46.52,
    "swinunet": 27.17,
    "transfuse": 26.26,
}
FEDDP_DICE = {
    "fcn": 72.15,
    "unet": 78.45,
    "deeplabv3": 51.52,
    "convnext": 82.54,
    "swinunet": 83.98,
    "transfuse": 84.64,
}
FLEXIBLE = ["fcn", "unet", "deeplabv3", "convnext"]  # accept any multiple of 32
HAS_BN = ["fcn", "unet", "deeplabv3", "transfuse"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # On a busy shared CPU, two intra-op threads make these small convolutions ~100x slower.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _tiny(name: str, **kwargs: object) -> nn.Module:
    return get_entry(f"{name}_tiny").fn(**kwargs)


def _images(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _size(name: str) -> int:
    return get_entry(f"{name}_tiny").meta["img_size"]


def test_registry_lists_all_variants() -> None:
    names = set(list_models())
    for fam in FAMILIES:
        assert {fam, f"{fam}_tiny"} <= names
        assert get_entry(f"{fam}_tiny").tiny
        assert not get_entry(fam).tiny
        assert get_entry(fam).paper_row.split(" | ")[-1] == f"{FEDDP_DICE[fam]:.2f}"
        assert get_entry(fam).meta["params_m"] == PAPER_M[fam]
    assert get_entry("convnext").family == "upernet"


@pytest.mark.parametrize("name", FAMILIES)
def test_full_parameter_count_matches_paper(name: str) -> None:
    with torch.device("meta"):  # structure only: no weight initialisation cost
        model = get_entry(name).fn(num_classes=4)
    count = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(count - PAPER_M[name]) / PAPER_M[name] < 0.01, count


@pytest.mark.parametrize("name", FAMILIES)
def test_tiny_forward_backward_reaches_every_trainable_parameter(name: str) -> None:
    torch.manual_seed(0)
    model = _tiny(name, num_classes=4).train()
    size = _size(name)
    out = model(_images(2, size))
    assert isinstance(out, torch.Tensor)
    assert out.shape == (2, 4, size, size)
    target = torch.randint(0, 4, (2, size, size), generator=torch.Generator().manual_seed(1))
    F.cross_entropy(out, target).backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    missing = [n for n, p in trainable if p.grad is None]
    assert not missing
    assert all(torch.isfinite(p.grad).all() for _, p in trainable)
    assert sum(int(p.grad.abs().sum() > 0) for _, p in trainable) > 0.9 * len(trainable)
    model.eval()
    with torch.no_grad():
        assert model(_images(2, size)).shape == out.shape


@pytest.mark.parametrize("name", FLEXIBLE)
def test_tiny_accepts_other_multiples_of_32(name: str) -> None:
    model = _tiny(name).eval()
    with torch.no_grad():
        assert model(_images(1, 96)).shape == (1, 4, 96, 96)
        assert model(_images(1, 32)).shape == (1, 4, 32, 32)


def test_transfuse_unused_heads_are_counted_but_frozen() -> None:
    model = _tiny("transfuse")
    frozen = {n.split(".")[0] for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"head_joint16", "head_transformer"}


@pytest.mark.parametrize("name", FAMILIES)
def test_groupnorm_variant_has_no_batchnorm(name: str) -> None:
    model = _tiny(name, norm="groupnorm")
    assert batchnorm_names(model) == []
    if name in HAS_BN:
        assert batchnorm_names(_tiny(name, norm="batchnorm"))
    if name != "swinunet":  # Swin-Unet has LayerNorm only
        assert any(isinstance(m, nn.GroupNorm) for m in model.modules())
    # Per-sample statistics only: a batch of one trains (BatchNorm's ASPP pooling branch would fail).
    out = model.train()(_images(1, _size(name)))
    assert out.shape[:2] == (1, 4)


def test_convnext_head_is_norm_free_by_default() -> None:
    model = _tiny("convnext")
    head_convs = [m for m in model.decode_head.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.bias is not None for c in head_convs)
    assert not any(isinstance(m, nn.GroupNorm | nn.BatchNorm2d) for m in model.decode_head.modules())


def test_batchnorm_to_groupnorm_keeps_structure_and_affine() -> None:
    bn = nn.BatchNorm2d(48)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
    seq = nn.Sequential(nn.Conv2d(3, 48, 3), bn, nn.Sequential(nn.BatchNorm2d(6)))
    keys = [k for k in seq.state_dict() if "running" not in k and "num_batches" not in k]
    out = batchnorm_to_groupnorm(seq)
    assert isinstance(seq[1], nn.BatchNorm2d)  # the input is left alone
    assert isinstance(out[1], nn.GroupNorm)
    assert out[1].num_groups == 24
    assert out[2][0].num_groups == 6
    assert torch.equal(out[1].weight, bn.weight)
    assert list(out.state_dict()) == keys


def _save(state: dict[str, torch.Tensor], path: Path) -> Path:
    state = {k: v.contiguous() for k, v in state.items()}
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


def _resnet10() -> dict[str, torch.Tensor]:
    return ResNet(BasicBlock, [1, 1, 1, 1]).state_dict()


@pytest.mark.parametrize(("name", "suffix"), [("fcn", ".pth"), ("deeplabv3", ".safetensors")])
def test_pretrained_file_loads_resnet_backbone(name: str, suffix: str, tmp_path: Path) -> None:
    state = _resnet10()
    model = _tiny(name, pretrained=_save(state, tmp_path / f"r10{suffix}"))
    assert torch.equal(model.backbone.layer2[0].conv1.weight, state["layer2.0.conv1.weight"])
    assert torch.equal(model.backbone.bn1.running_var, state["bn1.running_var"])


def test_pretrained_file_loads_unet_encoder(tmp_path: Path) -> None:
    state = UNetEncoder((8, 16, 32, 64, 128)).state_dict()
    model = _tiny("unet", pretrained=_save(state, tmp_path / "enc.safetensors"))
    assert torch.equal(model.encoder.blocks[2][3].weight, state["blocks.2.3.weight"])


def test_pretrained_file_loads_convnext_encoder(tmp_path: Path) -> None:
    state = ConvNeXt(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128)).state_dict()
    model = _tiny("convnext", pretrained=_save(state, tmp_path / "cnx.pth"))
    assert torch.equal(model.encoder.stages[2].blocks[0].conv_dw.weight, state["stages.2.blocks.0.conv_dw.weight"])
    fb = {  # the same weights in the FB release layout
        re.sub(r"stages\.(\d)\.blocks\.", r"stages.\1.", k.replace("stem.", "downsample_layers.0."))
        .replace("conv_dw", "dwconv")
        .replace("mlp.fc", "pwconv"): v
        for k, v in state.items()
        if not k.startswith("head.")
    }
    fb = {re.sub(r"stages\.(\d)\.downsample\.", r"downsample_layers.\1.", k): v for k, v in fb.items()}
    model = _tiny("convnext", pretrained=_save(fb, tmp_path / "fb.pth"))
    assert torch.equal(model.encoder.stages[3].blocks[0].mlp.fc1.weight, state["stages.3.blocks.0.mlp.fc1.weight"])


def _tiny_swin(**kwargs: object) -> SwinTransformer:
    return SwinTransformer(
        img_size=64, embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=4, **kwargs
    )


def test_pretrained_file_loads_swin_encoder_and_mirrors_decoder(tmp_path: Path) -> None:
    state = _tiny_swin().state_dict()
    model = _tiny("swinunet", pretrained=_save(state, tmp_path / "swin.safetensors"))
    key = "layers.1.blocks.1.attn.qkv.weight"
    assert torch.equal(model.encoder.layers[1].blocks[1].attn.qkv.weight, state[key])
    assert torch.equal(model.stages[1].blocks[1].attn.qkv.weight, state[key])  # decoder level 1
    # Microsoft layout: patch merging stored at the end of the previous stage, head without ".fc".
    ms = {
        re.sub(r"layers\.(\d)\.downsample", lambda m: f"layers.{int(m[1]) - 1}.downsample", k): v
        for k, v in state.items()
    }
    model = _tiny("swinunet", pretrained=_save(ms, tmp_path / "ms.pth"))
    assert torch.equal(
        model.encoder.layers[2].downsample.reduction.weight, state["layers.2.downsample.reduction.weight"]
    )


def test_pretrained_file_loads_transfuse_encoders(tmp_path: Path) -> None:
    vit = VisionTransformer(img_size=64, patch_size=16, embed_dim=64, depth=4, num_heads=2).state_dict()
    model = _tiny("transfuse", pretrained=_save(vit, tmp_path / "vit.pth"))
    assert torch.equal(model.transformer.pos_embed, vit["pos_embed"][:, 1:])  # class-token position dropped
    assert torch.equal(model.transformer.blocks[1].mlp.fc2.weight, vit["blocks.1.mlp.fc2.weight"])
    cnn = _resnet10()
    model = _tiny("transfuse", pretrained=_save(cnn, tmp_path / "cnn.safetensors"), norm="groupnorm")
    assert torch.equal(model.cnn.layer3[0].conv2.weight, cnn["layer3.0.conv2.weight"])
    assert torch.equal(model.cnn.layer3[0].bn2.weight, cnn["layer3.0.bn2.weight"])  # affine kept by GroupNorm


def test_pretrained_errors_are_model_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="missing"):
        _tiny("convnext", pretrained=_save(_resnet10(), tmp_path / "r10.pth"))
    with pytest.raises(ModelError, match="neither"):
        _tiny("transfuse", pretrained=_save({"x": torch.zeros(1)}, tmp_path / "x.pth"))
    with pytest.raises(ModelError, match="no ImageNet weights"):
        _tiny("unet", pretrained=True)
    with pytest.raises(ModelError, match="not found"):
        _tiny("fcn", pretrained=tmp_path / "absent.pth")
    with pytest.raises(ModelError, match="unknown norm"):
        _tiny("swinunet", norm="layernorm")


@pytest.mark.parametrize("name", FAMILIES)
def test_seeded_construction_is_deterministic(name: str) -> None:
    outs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = _tiny(name).eval()
        with torch.no_grad():
            outs.append(model(_images(1, _size(name))))
    assert torch.equal(outs[0], outs[1])
    assert outs[0].std() > 0


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
def test_full_forward_at_224(name: str) -> None:
    model = get_entry(name).fn().eval()
    with torch.no_grad():
        assert model(_images(1, 224)).shape == (1, 4, 224, 224)


@pytest.mark.slow
def test_full_pretrained_files_load(tmp_path: Path) -> None:
    import timm
    from torchvision.models import resnet34, resnet50

    r50 = resnet50().state_dict()
    model = get_entry("deeplabv3").fn(pretrained=_save(r50, tmp_path / "r50.pth"))
    assert torch.equal(model.backbone.layer4[2].conv3.weight, r50["layer4.2.conv3.weight"])
    cnx = timm.create_model("convnext_tiny").state_dict()
    model = get_entry("convnext").fn(pretrained=_save(cnx, tmp_path / "cnx.safetensors"))
    assert torch.equal(model.encoder.stages[2].blocks[8].gamma, cnx["stages.2.blocks.8.gamma"])
    swin = timm.create_model("swin_tiny_patch4_window7_224").state_dict()
    model = get_entry("swinunet").fn(pretrained=_save(swin, tmp_path / "swin.pth"))
    assert torch.equal(model.stages[0].blocks[1].mlp.fc1.weight, swin["layers.2.blocks.1.mlp.fc1.weight"])
    deit = timm.create_model("deit_small_patch16_224").state_dict()
    model = get_entry("transfuse").fn(pretrained=_save(deit, tmp_path / "deit.pth"))
    assert torch.equal(model.transformer.blocks[7].attn.proj.weight, deit["blocks.7.attn.proj.weight"])
    r34 = resnet34().state_dict()
    model = get_entry("transfuse").fn(pretrained=_save(r34, tmp_path / "r34.safetensors"))
    assert torch.equal(model.cnn.layer3[5].conv2.weight, r34["layer3.5.conv2.weight"])
