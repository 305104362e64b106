"""Swin-Unet baseline (Cao et al., ECCV-W 2022): FedDP Table I row "SwinUnet".

Built like the official DHUnet code's Swin-Unet (same yacs config as DHUnet, so Swin-T with depths
(2, 2, 2, 2), C = 96, window 7, stochastic depth 0.2), from timm Swin stages plus a local patch-expanding
decoder:

- Encoder: timm ``SwinTransformer``; the skip of level ``k`` is the token map *entering* the blocks of stage
  ``k`` (patch embedding for level 0, the patch-merging output for the others), as in the reference code; the
  deepest stage output goes through the final LayerNorm.
- Decoder, deepest first: ``PatchExpand`` x2 (Linear dim -> 2 dim without bias, rearranged to twice the
  resolution with dim/2 channels, LayerNorm), then per level: concatenation with the skip, Linear
  2 dim -> dim, a Swin stage mirroring the encoder's (same depth, heads and drop-path rates) and a
  ``PatchExpand`` x2 except at the shallowest level; then LayerNorm, ``PatchExpand`` x4 (Linear
  dim -> 16 dim, LayerNorm) and a bias-free 1x1 conv to the classes.
- No BatchNorm anywhere, so ``norm`` only accepts the usual names and changes nothing.

``pretrained=True`` downloads timm ``swin_tiny_patch4_window7_224.ms_in1k`` and, like the reference
``load_from``, copies it into the encoder (blocks by name, so blocks 0-1 of each stage) and mirrors each
encoder stage's blocks into the decoder stage of the same level. A local file (timm or Microsoft layout) is
used the same way. The input size is fixed at construction (``img_size``, 224 by default).

Reference: H. Cao et al., "Swin-Unet: Unet-like Pure Transformer for Medical Image Segmentation",
ECCV Workshops 2022.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import cast

import timm
import torch
from timm.models.swin_transformer import SwinTransformer, SwinTransformerStage
from torch import nn

from wsiseg.models._registry import register_model
from wsiseg.models._weights import load_weights_file
from wsiseg.models.layers.convert import check_norm
from wsiseg.models.layers.encoder_weights import load_matching, reject_download, resolve_pretrained

__all__ = ["PatchExpand", "SwinUnet", "swinunet", "swinunet_tiny"]


class PatchExpand(nn.Module):
    """Upsample an NHWC token map by ``scale`` with a Linear layer and a pixel-shuffle style rearrange.

    Args:
        dim: Input channels.
        scale: Upsampling factor (2 or 4 in Swin-Unet).
        out_dim: Output channels (``dim // 2`` for x2, ``dim`` for the final x4).
    """

    def __init__(self, dim: int, scale: int, out_dim: int) -> None:
        super().__init__()
        self.scale = scale
        self.expand = nn.Linear(dim, scale * scale * out_dim, bias=False)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, H, W, dim)`` to ``(B, s*H, s*W, out_dim)``."""
        b, h, w, _ = x.shape
        s = self.scale
        x = self.expand(x).view(b, h, w, s, s, -1)
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, h * s, w * s, -1)
        return self.norm(x)


class SwinUnet(nn.Module):
    """Swin-Unet: Swin encoder, mirrored Swin decoder with patch expanding, skip connections.

    Args:
        num_classes: Output classes.
        img_size: Input size (square), fixed at construction.
        patch_size: Patch embedding stride (also the final expansion factor).
        embed_dim: Channels of level 0; level ``k`` has ``embed_dim * 2**k``.
        depths: Swin blocks per stage (the decoder mirrors them).
        num_heads: Attention heads per stage.
        window_size: Attention window.
        drop_path_rate: Stochastic depth rate (linear over the encoder blocks, mirrored in the decoder).
    """

    def __init__(
        self,
        num_classes: int = 4,
        img_size: int = 224,
        patch_size: int = 4,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        drop_path_rate: float = 0.2,
    ) -> None:
        super().__init__()
        n = len(depths)
        dims = [embed_dim * 2**k for k in range(n)]
        self.encoder = SwinTransformer(
            img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, depths=tuple(depths),
            num_heads=tuple(num_heads), window_size=window_size, drop_path_rate=drop_path_rate, num_classes=0,
        )  # fmt: skip
        self.encoder.head = nn.Identity()  # type: ignore[assignment]  # timm types head as ClassifierHead
        total = sum(depths)
        dpr = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]  # as torch.linspace
        grid = img_size // patch_size
        levels = range(n - 2, -1, -1)  # decoder levels, deepest first
        self.bottleneck_expand = PatchExpand(dims[-1], 2, dims[-1] // 2)
        self.concat_back = nn.ModuleList(nn.Linear(2 * dims[k], dims[k]) for k in levels)
        self.stages = nn.ModuleList(
            SwinTransformerStage(
                dims[k],
                dims[k],
                (grid // 2**k, grid // 2**k),
                depths[k],
                downsample=False,
                num_heads=num_heads[k],
                window_size=window_size,
                drop_path=dpr[sum(depths[:k]) : sum(depths[: k + 1])],
            )
            for k in levels
        )
        self.expands = nn.ModuleList(PatchExpand(dims[k], 2, dims[k] // 2) if k > 0 else nn.Identity() for k in levels)
        self.norm_up = nn.LayerNorm(dims[0])
        self.final_expand = PatchExpand(dims[0], patch_size, dims[0])
        self.head = nn.Conv2d(dims[0], num_classes, 1, bias=False)
        self._init_decoder()

    def _init_decoder(self) -> None:
        # The reference initialises every Linear with a truncated normal (std 0.02) and zero bias; the
        # timm encoder already does, the decoder's new layers get the same here.
        decoder = (self.bottleneck_expand, self.concat_back, self.stages, self.expands, self.final_expand)
        for part in decoder:
            for m in part.modules():
                if isinstance(m, nn.Linear):
                    nn.init.trunc_normal_(m.weight, std=0.02)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.encoder.patch_embed(x)
        skips = []
        for stage in cast(Iterable[SwinTransformerStage], self.encoder.layers):
            x = stage.downsample(x)
            skips.append(x)
            x = stage.blocks(x)
        return self.encoder.norm(x), skips

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits ``(B, num_classes, img_size, img_size)``."""
        y, skips = self._encode(x)
        y = self.bottleneck_expand(y)
        for i, (proj, stage, expand) in enumerate(zip(self.concat_back, self.stages, self.expands, strict=True)):
            y = proj(torch.cat([y, skips[len(skips) - 2 - i]], dim=-1))
            y = expand(stage(y))
        y = self.final_expand(self.norm_up(y))
        return self.head(y.permute(0, 3, 1, 2))

    def mirror_encoder_into_decoder(self) -> None:
        """Copy each encoder stage's blocks into the decoder stage of the same level (reference init)."""
        n = len(self.encoder.layers)
        for i, stage in enumerate(cast(Iterable[SwinTransformerStage], self.stages)):
            source = cast(SwinTransformerStage, self.encoder.layers[n - 2 - i])
            stage.blocks.load_state_dict(source.blocks.state_dict())


def _from_microsoft(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # Microsoft checkpoints merge patches at the end of a stage; timm at the start of the next one.
    out = {}
    for k, v in state.items():
        if "relative_position_index" in k or "attn_mask" in k:
            continue
        k = re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) + 1}.downsample", k)
        out[k] = v
    return out


def _load_encoder(model: SwinUnet, download: bool, path: Path | None) -> None:
    if download:
        state = timm.create_model("swin_tiny_patch4_window7_224.ms_in1k", pretrained=True).state_dict()
        source: str | Path = "timm swin_tiny_patch4_window7_224.ms_in1k"
    elif path is not None:
        state, source = load_weights_file(path), path
        if "layers.0.downsample.reduction.weight" in state:
            state = _from_microsoft(state)
    else:
        return
    load_matching(model.encoder, state, source=source, what="timm SwinTransformer")
    model.mirror_encoder_into_decoder()


@register_model("swinunet", family="swinunet", paper_row="- | - | 83.98", params_m=27.17, img_size=224, fixed_size=True)
def swinunet(
    *,
    num_classes: int = 4,
    pretrained: bool | str | Path = False,
    norm: str = "batchnorm",
    img_size: int = 224,
) -> SwinUnet:
    """Swin-Unet on Swin-T depths (2,2,2,2), 27.17 M parameters for 4 classes.

    Args:
        num_classes: Output classes.
        pretrained: False, True (timm ``swin_tiny_patch4_window7_224.ms_in1k``, downloads; the paper's
            setting) or a local Swin-T state dict (timm or Microsoft layout).
        norm: Accepted for a uniform interface; the model has LayerNorm only.
        img_size: Input size, a multiple of 224 / 7 * 7 = 32 * 7 (window 7 at every stage).

    Returns:
        The model.
    """
    check_norm(norm)
    model = SwinUnet(num_classes, img_size=img_size)
    _load_encoder(model, *resolve_pretrained(pretrained))
    return model


@register_model("swinunet_tiny", family="swinunet", tiny=True, img_size=64, fixed_size=True)
def swinunet_tiny(*, num_classes: int = 4, pretrained: bool | str | Path = False, norm: str = "batchnorm") -> SwinUnet:
    """Test variant: 64x64 input, C = 16, heads (1,2,4,8), window 4, depths (2,2,2,2).

    ``pretrained`` may be a local state dict of the matching ``timm`` ``SwinTransformer``; True is refused.
    """
    check_norm(norm)
    model = SwinUnet(num_classes, img_size=64, embed_dim=16, num_heads=(1, 2, 4, 8), window_size=4, drop_path_rate=0.1)
    _load_encoder(model, False, reject_download(pretrained, "swinunet_tiny"))
    return model
