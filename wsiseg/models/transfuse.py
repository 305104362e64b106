"""TransFuse-S (Zhang et al., MICCAI 2021): FedDP Table I row "TransFuse".

A CNN branch and a transformer branch run in parallel and are merged by BiFusion blocks; re-implemented from
the paper and the DHUnet repository's configuration:

- CNN branch: torchvision ResNet-34 up to ``layer3`` (64 @ 1/4, 128 @ 1/8, 256 @ 1/16); ``layer4`` and the
  classifier are removed.
- Transformer branch: timm DeiT-S truncated to 8 blocks, without the class token; its 14x14 patch tokens
  (for 224 input) are reshaped to a 384-channel map at 1/16 and upsampled twice (1/8, 1/4) by ``Up`` blocks
  (bilinear x2 + residual double conv).
- BiFusion at each scale: an SE channel attention on the transformer map, a CBAM-like spatial attention
  (max/mean pooling over channels, 7x7 conv, BN) on the CNN map, a Hadamard bilinear term
  ``conv3x3(BN(1x1 g) * BN(1x1 t))``, all concatenated and merged by a pre-activation bottleneck residual.
- Decoder: attention-gated ``Up`` blocks take the 1/16 fusion to 1/8 and 1/4; the 1/4 head (3x3 conv + BN +
  ReLU, 3x3 conv) is upsampled bilinearly to the input size. Dropout2d ``drop_rate`` (0.2) on the branch
  features and ``drop_rate / 2`` after each fusion.

As in the DHUnet repository, only the 1/4 head (``map_2``) is used. The 1/16 joint head and the transformer
head of the original deep supervision are built, so the parameter count matches the reference (26.26 M for
4 classes), but they are **frozen** (``requires_grad=False``): the forward never reaches them, and trainable
parameters without gradients would break per-sample-gradient DP.

``pretrained=True`` downloads torchvision ``ResNet34_Weights.IMAGENET1K_V1`` and timm
``deit_small_patch16_224.fb_in1k``. A local file may hold either encoder (a torchvision ResNet or a timm
ViT/DeiT state dict, class-token position dropped, grid resized); whichever the file fully covers is loaded.
The input size is fixed at construction (``img_size``, 224 by default; a multiple of 16).

Reference: Y. Zhang, H. Liu, Q. Hu, "TransFuse: Fusing Transformers and CNNs for Medical Image
Segmentation", MICCAI 2021.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet, ResNet34_Weights, resnet34

from wsiseg.errors import ModelError
from wsiseg.models._registry import register_model
from wsiseg.models._weights import load_weights_file
from wsiseg.models.layers.convert import apply_norm
from wsiseg.models.layers.encoder_weights import covers, load_matching, reject_download, resolve_pretrained

__all__ = ["BiFusion", "TransFuse", "transfuse", "transfuse_tiny"]


def _conv(cin: int, cout: int, k: int, *, bn: bool = False, relu: bool = True, bias: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, padding=(k - 1) // 2, bias=bias)]
    if bn:
        layers.append(nn.BatchNorm2d(cout))
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class _Residual(nn.Module):
    """Pre-activation bottleneck residual; the 1x1 skip conv exists even when the widths match."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        mid = cout // 2
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin), nn.ReLU(inplace=True), _conv(cin, mid, 1, relu=False),
            nn.BatchNorm2d(mid), nn.ReLU(inplace=True), _conv(mid, mid, 3, relu=False),
            nn.BatchNorm2d(mid), nn.ReLU(inplace=True), _conv(mid, cout, 1, relu=False),
        )  # fmt: skip
        self.skip = _conv(cin, cout, 1, relu=False)
        self.use_skip = cin != cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + (self.skip(x) if self.use_skip else x)


class BiFusion(nn.Module):
    """Fuse a CNN map ``g`` and a transformer map ``t`` of the same size.

    Args:
        ch_cnn: Channels of ``g``.
        ch_tr: Channels of ``t``.
        reduction: SE reduction ratio on ``t``.
        ch_int: Width of the bilinear (Hadamard) term.
        ch_out: Output channels.
        drop_rate: Dropout2d rate on the output.
    """

    def __init__(self, ch_cnn: int, ch_tr: int, reduction: int, ch_int: int, ch_out: int, drop_rate: float) -> None:
        super().__init__()
        self.se = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(ch_tr, ch_tr // reduction, 1), nn.ReLU(inplace=True),
            nn.Conv2d(ch_tr // reduction, ch_tr, 1), nn.Sigmoid(),
        )  # fmt: skip
        self.spatial = _conv(2, 1, 7, bn=True, relu=False, bias=False)
        self.w_cnn = _conv(ch_cnn, ch_int, 1, bn=True, relu=False)
        self.w_tr = _conv(ch_tr, ch_int, 1, bn=True, relu=False)
        self.w_bil = _conv(ch_int, ch_int, 3, bn=True, relu=True)
        self.residual = _Residual(ch_cnn + ch_tr + ch_int, ch_out)
        self.dropout = nn.Dropout2d(drop_rate)

    def forward(self, g: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Return the fused map ``(B, ch_out, H, W)``."""
        bil = self.w_bil(self.w_cnn(g) * self.w_tr(t))
        pooled = torch.cat([g.amax(dim=1, keepdim=True), g.mean(dim=1, keepdim=True)], dim=1)
        g = torch.sigmoid(self.spatial(pooled)) * g
        t = self.se(t) * t
        return self.dropout(self.residual(torch.cat([g, t, bil], dim=1)))


class _AttentionGate(nn.Module):
    def __init__(self, ch_gate: int, ch_skip: int, ch_int: int) -> None:
        super().__init__()
        self.w_gate = nn.Sequential(nn.Conv2d(ch_gate, ch_int, 1), nn.BatchNorm2d(ch_int))
        self.w_skip = nn.Sequential(nn.Conv2d(ch_skip, ch_int, 1), nn.BatchNorm2d(ch_int))
        self.psi = nn.Sequential(nn.Conv2d(ch_int, 1, 1), nn.BatchNorm2d(1), nn.Sigmoid())

    def forward(self, gate: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return skip * self.psi(F.relu(self.w_gate(gate) + self.w_skip(skip)))


class _DoubleConv(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout),
        )  # fmt: skip
        self.identity = nn.Sequential(nn.Conv2d(cin, cout, 1), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.identity(x))


class _Up(nn.Module):
    """Bilinear x2 (align_corners) then a residual double conv; with a skip, optionally attention-gated."""

    def __init__(self, cin: int, cout: int, ch_skip: int = 0, *, attn: bool = False) -> None:
        super().__init__()
        self.conv = _DoubleConv(cin + ch_skip, cout)
        self.gate = _AttentionGate(cin, ch_skip, cout) if attn else None

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        if skip is not None:
            dy, dx = skip.shape[-2] - x.shape[-2], skip.shape[-1] - x.shape[-1]
            x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
            if self.gate is not None:
                skip = self.gate(x, skip)
            x = torch.cat([skip, x], dim=1)
        return self.conv(x)


def _head(cin: int, num_classes: int, *, squeeze: bool = False) -> nn.Sequential:
    first = [_conv(cin, 64, 1, bn=True)] if squeeze else []
    return nn.Sequential(*first, _conv(64, 64, 3, bn=True), _conv(64, num_classes, 3, relu=False))


class TransFuse(nn.Module):
    """TransFuse: parallel ResNet and ViT branches, BiFusion at 1/16, 1/8, 1/4, gated decoder.

    Args:
        cnn: A torchvision ``ResNet`` with 64/128/256-channel ``layer1``-``layer3`` (``layer4``/``fc``
            are replaced by identities).
        transformer: A timm ``VisionTransformer`` with patch size 16, no class token and no classifier.
        num_classes: Output classes.
        drop_rate: Dropout2d rate on the branch features (half of it after each fusion).
    """

    def __init__(
        self, cnn: ResNet, transformer: VisionTransformer, num_classes: int = 4, drop_rate: float = 0.2
    ) -> None:
        super().__init__()
        cnn.layer4, cnn.fc = nn.Identity(), nn.Identity()
        self.cnn, self.transformer = cnn, transformer
        dim = transformer.embed_dim
        self.grid = transformer.patch_embed.grid_size
        self.drop = nn.Dropout2d(drop_rate)
        self.up_t1, self.up_t2 = _Up(dim, 128), _Up(128, 64)
        self.fuse16 = BiFusion(256, dim, 4, 256, 256, drop_rate / 2)
        self.fuse8 = BiFusion(128, 128, 2, 128, 128, drop_rate / 2)
        self.fuse4 = BiFusion(64, 64, 1, 64, 64, drop_rate / 2)
        self.up8 = _Up(256, 128, 128, attn=True)
        self.up4 = _Up(128, 64, 64, attn=True)
        self.head = _head(64, num_classes)
        # Deep-supervision heads of the original (joint 1/16 and transformer 1/4): built, never used.
        self.head_joint16 = _head(256, num_classes, squeeze=True).requires_grad_(False)
        self.head_transformer = _head(64, num_classes).requires_grad_(False)
        self._init_decoder()

    def _init_decoder(self) -> None:
        for name, m in self.named_modules():
            if name.startswith(("cnn", "transformer")):
                continue
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits ``(B, num_classes, H, W)``; the input must match the transformer's ``img_size``."""
        tokens = self.transformer.forward_features(x)
        t16 = self.drop(tokens.transpose(1, 2).reshape(x.shape[0], -1, *self.grid))
        t8 = self.drop(self.up_t1(t16))
        t4 = self.drop(self.up_t2(t8))
        c = self.cnn
        c4 = self.drop(c.layer1(c.maxpool(c.relu(c.bn1(c.conv1(x))))))
        c8 = self.drop(c.layer2(c4))
        c16 = self.drop(c.layer3(c8))
        j16 = self.fuse16(c16, t16)
        j8 = self.up8(j16, self.fuse8(c8, t8))
        j4 = self.up4(j8, self.fuse4(c4, t4))
        return F.interpolate(self.head(j4), size=x.shape[-2:], mode="bilinear", align_corners=False)


def _vit_state_for(state: dict[str, torch.Tensor], vit: VisionTransformer) -> dict[str, torch.Tensor]:
    """Drop the class token (and its position) and resize the position grid to ``vit``'s, as the reference."""
    state = {k: v for k, v in state.items() if k != "cls_token"}
    pos = state.get("pos_embed")
    if pos is None:
        return state
    assert vit.pos_embed is not None  # TransFuse ViTs have a learned position embedding
    if pos.shape[1] == vit.pos_embed.shape[1]:
        return state
    n = pos.shape[1]
    if round((n - 1) ** 0.5) ** 2 == n - 1:  # a class-token position in front of a square grid
        pos = pos[:, 1:]
    side = round(pos.shape[1] ** 0.5)
    if side * side != pos.shape[1]:
        return state  # not a square grid: load_matching reports the shape mismatch
    if (side, side) != tuple(vit.patch_embed.grid_size):
        grid = pos.transpose(1, 2).reshape(1, -1, side, side)
        grid = F.interpolate(grid, size=vit.patch_embed.grid_size, mode="bilinear", align_corners=True)
        pos = grid.flatten(2).transpose(1, 2)
    state["pos_embed"] = pos
    return state


def _load_encoders(model: TransFuse, download: bool, path: Path | None) -> None:
    if download:
        cnn_state = ResNet34_Weights.IMAGENET1K_V1.get_state_dict(progress=True)
        load_matching(model.cnn, cnn_state, source="torchvision ResNet34 IMAGENET1K_V1", what="ResNet-34")
        vit = timm.create_model("deit_small_patch16_224.fb_in1k", pretrained=True).state_dict()
        vit = _vit_state_for(vit, model.transformer)
        load_matching(model.transformer, vit, source="timm deit_small_patch16_224.fb_in1k", what="DeiT-S")
        return
    if path is None:
        return
    state = load_weights_file(path)
    loaded = False
    if covers(model.cnn, state):
        load_matching(model.cnn, state, source=path, what="torchvision ResNet")
        loaded = True
    if covers(model.transformer, state):
        load_matching(model.transformer, _vit_state_for(state, model.transformer), source=path, what="timm ViT")
        loaded = True
    if not loaded:
        msg = (
            f"{path}: holds neither a full ResNet (layer1-3) nor a full ViT encoder for this TransFuse; "
            "pass a torchvision resnet34 or timm deit_small_patch16_224 state dict"
        )
        raise ModelError(msg)


def _vit(img_size: int, dim: int, depth: int, heads: int) -> VisionTransformer:
    return VisionTransformer(
        img_size=img_size, patch_size=16, embed_dim=dim, depth=depth, num_heads=heads,
        class_token=False, global_pool="", num_classes=0,
    )  # fmt: skip


@register_model(
    "transfuse", family="transfuse", paper_row="- | - | 84.64", params_m=26.26, img_size=224, fixed_size=True
)
def transfuse(
    *,
    num_classes: int = 4,
    pretrained: bool | str | Path = False,
    norm: str = "batchnorm",
    img_size: int = 224,
    drop_rate: float = 0.2,
) -> TransFuse:
    """TransFuse-S (ResNet-34 + 8-block DeiT-S), 26.26 M parameters for 4 classes.

    Args:
        num_classes: Output classes.
        pretrained: False, True (torchvision ResNet-34 and timm DeiT-S ImageNet weights, download; the paper's
            setting) or a local ResNet or DeiT state dict.
        norm: ``"batchnorm"`` or ``"groupnorm"`` (every BatchNorm, ResNet included, becomes GroupNorm).
        img_size: Input size (multiple of 16), fixed at construction.
        drop_rate: Dropout2d rate.

    Returns:
        The model.
    """
    model = TransFuse(resnet34(), _vit(img_size, 384, 8, 6), num_classes, drop_rate)
    _load_encoders(model, *resolve_pretrained(pretrained))
    return cast(TransFuse, apply_norm(model, norm))  # the model itself or a converted copy of it


@register_model("transfuse_tiny", family="transfuse", tiny=True, img_size=64, fixed_size=True)
def transfuse_tiny(
    *, num_classes: int = 4, pretrained: bool | str | Path = False, norm: str = "batchnorm"
) -> TransFuse:
    """Test variant: ResNet-10 (BasicBlock [1,1,1,1]) and a 2-block ViT (dim 64, 2 heads) at 64x64.

    ``pretrained`` may be a local ``ResNet(BasicBlock, [1, 1, 1, 1])`` or matching timm ViT state dict.
    """
    cnn = ResNet(BasicBlock, [1, 1, 1, 1])
    model = TransFuse(cnn, _vit(64, 64, 2, 2), num_classes)
    _load_encoders(model, False, reject_download(pretrained, "transfuse_tiny"))
    return cast(TransFuse, apply_norm(model, norm))  # the model itself or a converted copy of it
