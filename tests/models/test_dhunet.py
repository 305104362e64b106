"""DHUnet: architecture facts from the authors' code, shapes, modes, norms, determinism."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from wsiseg.errors import ModelError
from wsiseg.models import create_model
from wsiseg.models.dhunet import DEEP_SUPERVISION_WEIGHTS, DHUnet
from wsiseg.models.layers.expand import CrossScaleExpand, expand_x2, expand_x4

NUM_CLASSES = 4


@pytest.fixture(scope="module")
def full() -> DHUnet:
    torch.manual_seed(0)
    return create_model("dhunet", num_classes=NUM_CLASSES)


def _tiny(**kwargs: object) -> DHUnet:
    torch.manual_seed(0)
    return create_model("dhunet_tiny", num_classes=NUM_CLASSES, **kwargs)


def _decoder_outputs(model: DHUnet, x: torch.Tensor) -> tuple[object, list[torch.Tensor]]:
    outs: list[torch.Tensor] = []
    hooks = [b.register_forward_hook(lambda _m, _i, o: outs.append(o)) for b in model.decoder]
    try:
        y = model(x)
    finally:
        for h in hooks:
            h.remove()
    return y, outs


def test_full_parameter_count_matches_official(full: DHUnet) -> None:
    n = sum(p.numel() for p in full.parameters())
    assert abs(n - 55.412e6) / 55.412e6 < 0.002
    assert n == 55_412_026
    parts = {k: sum(p.numel() for p in getattr(full, k).parameters()) for k in ("global_encoder", "local_encoder")}
    assert parts == {"global_encoder": 20_411_850, "local_encoder": 20_607_072}
    stages = [round(sum(p.numel() for p in b.parameters()) / 1e6, 3) for b in full.decoder]
    assert stages == [8.261, 3.393, 0.849, 1.862]
    assert full.segment.bias is None
    assert full.segment.kernel_size == (1, 1)
    assert sum(p.numel() for p in full.deep_supervision.parameters()) == 27_664


def test_full_encoder_config(full: DHUnet) -> None:
    swin, convnext = full.global_encoder, full.local_encoder
    assert [len(s.blocks) for s in swin.layers] == [2, 2, 2, 2]
    assert [s.blocks[0].attn.num_heads for s in swin.layers] == [3, 6, 12, 24]
    assert isinstance(swin.norm, nn.Identity)
    assert swin.layers[3].blocks[1].drop_path1.drop_prob == pytest.approx(0.2)
    assert [len(s.blocks) for s in convnext.stages] == [3, 3, 3, 3]
    assert convnext.stages[3].blocks[2].drop_path.drop_prob == pytest.approx(0.1)
    assert torch.allclose(convnext.stages[0].blocks[0].gamma, torch.full((96,), 1e-6))
    # shift alternates within a stage, and is disabled where the window covers the 7x7 map
    assert [b.shift_size for b in swin.layers[0].blocks] == [(0, 0), (3, 3)]
    assert swin.layers[3].blocks[1].shift_size == (0, 0)


def test_full_forward_shapes_and_decoder_pyramid(full: DHUnet) -> None:
    full.eval()
    with torch.no_grad():
        y, outs = _decoder_outputs(full, torch.randn(1, 3, 224, 224))
    assert isinstance(y, torch.Tensor)
    assert y.shape == (1, NUM_CLASSES, 224, 224)
    assert [tuple(o.shape[1:]) for o in outs] == [(384, 14, 14), (192, 28, 28), (96, 56, 56), (96, 224, 224)]


def test_expand_layers_match_official_branches() -> None:
    x2, x4 = expand_x2(384), expand_x4(96)
    assert [(c.out_channels, c.kernel_size[0], c.padding[0]) for c in x2.reductions] == [
        (96, 2, 0),
        (96, 4, 1),
    ]
    assert [(c.out_channels, c.kernel_size[0], c.padding[0]) for c in x4.reductions] == [
        (48, 4, 0),
        (24, 8, 2),
        (12, 16, 6),
        (12, 32, 14),
    ]
    assert all(c.bias is not None for c in [*x2.reductions, *x4.reductions])
    assert isinstance(x4.norm, nn.BatchNorm2d)
    assert x4(torch.randn(2, 96, 5, 5)).shape == (2, 96, 20, 20)
    with pytest.raises(ModelError):
        CrossScaleExpand(8, (4, 4), (2, 3), stride=2)


def test_train_mode_returns_deep_supervision_list_in_official_order() -> None:
    model = _tiny(img_size=64).train()
    x = torch.randn(2, 3, 64, 64)
    y, outs = _decoder_outputs(model, x)
    assert isinstance(y, list)
    assert len(y) == 5
    assert all(t.shape == (2, NUM_CLASSES, 64, 64) for t in y)
    # [final, aux(out3), aux(out2), aux(out1), aux(out0)]
    assert torch.equal(y[0], model.segment(outs[3]))
    for idx, stage in zip((1, 2, 3, 4), (3, 2, 1, 0), strict=True):
        assert torch.equal(y[idx], model.deep_supervision[stage](outs[stage]))
    assert model.deep_supervision_weights == DEEP_SUPERVISION_WEIGHTS == {0: 0.5, 2: 0.3, 4: 0.2}
    model.eval()
    with torch.no_grad():
        assert isinstance(model(x), torch.Tensor)


def test_backward_reaches_both_encoders_and_weighted_heads() -> None:
    model = _tiny(img_size=64).train()
    y = model(torch.randn(2, 3, 64, 64))
    loss = sum(w * y[i].square().mean() for i, w in model.deep_supervision_weights.items())
    loss.backward()
    assert model.global_encoder.patch_embed.proj.weight.grad.abs().sum() > 0
    assert model.local_encoder.stem[0].weight.grad.abs().sum() > 0
    assert model.deep_supervision[0][0].weight.grad.abs().sum() > 0  # aux(out0), index 4
    assert model.deep_supervision[2][0].weight.grad.abs().sum() > 0  # aux(out2), index 2
    assert model.deep_supervision[3][0].weight.grad is None  # aux(out3) has no weight


@pytest.mark.parametrize("size", [64, 224])
def test_tiny_sizes(size: int) -> None:
    model = _tiny(img_size=size).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, size, size)).shape == (1, NUM_CLASSES, size, size)


def test_tiny_448_and_dynamic_size() -> None:
    with torch.no_grad():
        narrow = _tiny(img_size=448, embed_dim=8).eval()  # 448 costs 4x 224; keep the test cheap
        assert narrow(torch.randn(1, 3, 448, 448)).shape == (1, 4, 448, 448)
        dyn = _tiny(dynamic_img_size=True).eval()
        assert dyn(torch.randn(1, 3, 96, 160)).shape == (1, 4, 96, 160)
        with pytest.raises(ModelError, match="multiples of 32"):
            dyn(torch.randn(1, 3, 112, 112))


@pytest.mark.slow
def test_full_448() -> None:
    model = create_model("dhunet", img_size=448).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 448, 448)).shape == (1, 4, 448, 448)


def test_bad_sizes_and_arguments_raise_model_error() -> None:
    with pytest.raises(ModelError, match="multiple of 32"):
        _tiny(img_size=112)
    model = _tiny(img_size=64).eval()
    with pytest.raises(ModelError, match="64"):
        model(torch.randn(1, 3, 96, 96))
    with pytest.raises(ModelError, match="unknown DHUnet argument"):
        _tiny(depth=3)
    with pytest.raises(ModelError, match="embed_dim=96"):
        _tiny(pretrained=True)


def test_grayscale_and_global_input() -> None:
    model = _tiny(img_size=64).eval()
    gray = torch.randn(1, 1, 64, 64)
    rgb = gray.repeat(1, 3, 1, 1)
    other = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(gray), model(rgb))
        assert torch.equal(model(rgb, rgb), model(rgb))
        assert not torch.allclose(model(rgb, other), model(rgb))


def test_groupnorm_variant_has_no_batchnorm() -> None:
    model = _tiny(img_size=64, norm="groupnorm")
    decoder_norms = [m for m in model.decoder.modules() if isinstance(m, nn.BatchNorm2d | nn.GroupNorm)]
    assert decoder_norms
    assert all(isinstance(m, nn.GroupNorm) for m in decoder_norms)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert not [n for n, _ in model.named_buffers() if "running" in n]
    # without batch statistics, a sample's output does not depend on the rest of the batch in train mode
    x = torch.randn(3, 3, 64, 64)
    model.train()
    model.global_encoder.drop_path_rate = 0.0
    for m in model.modules():
        if hasattr(m, "drop_prob"):
            m.drop_prob = 0.0
    assert torch.allclose(model(x)[0][:1], model(x[:1])[0], atol=1e-5)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in _tiny(img_size=64).decoder.modules()) == 8


def test_same_seed_same_weights_and_outputs() -> None:
    a, b = _tiny(img_size=64).eval(), _tiny(img_size=64).eval()
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
    torch.manual_seed(1)
    c = create_model("dhunet_tiny", img_size=64)
    assert not torch.equal(c.segment.weight, a.segment.weight)


def test_channels_last_input_gives_same_logits() -> None:
    model = _tiny(img_size=64).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        out = model(x.contiguous(memory_format=torch.channels_last))
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out, ref, atol=1e-5)
