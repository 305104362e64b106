"""UPerNet on ConvNeXt-T (Xiao et al., ECCV 2018; Liu et al., CVPR 2022): FedDP Table I row "ConvNeXt".

As in the official DHUnet code (mmseg 0.27 ``UPerHead`` over the FB ConvNeXt-T):

- Encoder: timm ConvNeXt-T, depths (3, 3, 9, 3), dims (96, 192, 384, 768), stochastic depth 0.4,
  layer-scale init 1.0, classifier removed; a channels-first LayerNorm (eps 1e-6) on each of the 4 outputs.
- Head (written here): 1x1 lateral convs, a pyramid pooling module (scales 1, 2, 3, 6) on the deepest map,
  top-down FPN with 3x3 convs, concatenation of the four levels, 3x3 fusion conv, Dropout2d 0.1 and a 1x1
  classifier; 384 channels, every conv followed by ReLU. The paper's head has ``norm_cfg=None``: convs with
  bias and **no** norm. ``norm="groupnorm"`` adds a GroupNorm after every head conv (bias dropped), which
  stays DP-safe; ``norm="batchnorm"`` keeps the paper's norm-free head (no BatchNorm anywhere).
- Bilinear upsampling of the 1/4-scale logits to the input size.

``pretrained=True`` downloads timm ``convnext_tiny.fb_in1k`` (the paper's ``convnext_tiny_1k_224.pth``).
Input sizes: any multiple of 32.

References: T. Xiao et al., "Unified Perceptual Parsing for Scene Understanding", ECCV 2018; Z. Liu et al.,
"A ConvNet for the 2020s", CVPR 2022.

Note: in this registry ``convnext_tiny`` is the small *test* variant of the ``convnext`` baseline, not timm's
ConvNeXt-T.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from timm.models.convnext import ConvNeXt, checkpoint_filter_fn
from torch import nn

from wsiseg.errors import ModelError
from wsiseg.models._registry import register_model
from wsiseg.models._weights import load_weights_file
from wsiseg.models.layers.convert import check_norm
from wsiseg.models.layers.encoder_weights import load_matching, reject_download, resolve_pretrained
from wsiseg.models.layers.norm import make_norm

__all__ = ["UPerHead", "UPerNetConvNeXt", "convnext", "convnext_tiny"]


def _conv_act(in_ch: int, out_ch: int, k: int, norm: str | None) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, k, padding=k // 2, bias=norm is None)]
    if norm is not None:
        layers.append(make_norm(norm, out_ch))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class UPerHead(nn.Module):
    """UPerNet decode head: PPM on the deepest level plus an FPN over all levels.

    Args:
        in_channels: Channels of the encoder levels, shallowest first.
        num_classes: Output classes.
        channels: Width of every head conv.
        pool_scales: PPM output sizes.
        dropout: Dropout2d rate before the classifier.
        norm: None (paper: convs with bias, no norm) or a ``make_norm`` name.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        channels: int = 384,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
        norm: str | None = None,
    ) -> None:
        super().__init__()
        deepest = in_channels[-1]
        self.pool_scales = tuple(pool_scales)
        self.ppm = nn.ModuleList(_conv_act(deepest, channels, 1, norm) for _ in self.pool_scales)
        self.bottleneck = _conv_act(deepest + len(self.pool_scales) * channels, channels, 3, norm)
        self.lateral = nn.ModuleList(_conv_act(c, channels, 1, norm) for c in in_channels[:-1])
        self.fpn = nn.ModuleList(_conv_act(channels, channels, 3, norm) for _ in in_channels[:-1])
        self.fuse = _conv_act(len(in_channels) * channels, channels, 3, norm)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def _psp(self, x: torch.Tensor) -> torch.Tensor:
        pooled = [
            _resize(conv(F.adaptive_avg_pool2d(x, s)), x.shape[-2:])
            for s, conv in zip(self.pool_scales, self.ppm, strict=True)
        ]
        return self.bottleneck(torch.cat([x, *pooled], dim=1))

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """Return logits at the resolution of ``feats[0]``."""
        lat = [conv(f) for conv, f in zip(self.lateral, feats[:-1], strict=True)]
        lat.append(self._psp(feats[-1]))
        for i in range(len(lat) - 1, 0, -1):
            lat[i - 1] = lat[i - 1] + _resize(lat[i], lat[i - 1].shape[-2:])
        outs = [conv(x) for conv, x in zip(self.fpn, lat[:-1], strict=True)] + [lat[-1]]
        size = outs[0].shape[-2:]
        fused = self.fuse(torch.cat([outs[0], *(_resize(o, size) for o in outs[1:])], dim=1))
        return self.classifier(self.dropout(fused))


class UPerNetConvNeXt(nn.Module):
    """ConvNeXt encoder with per-level LayerNorm and a ``UPerHead``.

    Args:
        num_classes: Output classes.
        depths: ConvNeXt blocks per stage.
        dims: ConvNeXt channels per stage.
        drop_path_rate: Stochastic depth rate (linear over blocks).
        head_channels: UPerHead width.
        norm: Head norm: None (paper) or ``"groupnorm"``/``"batchnorm"``.
    """

    def __init__(
        self,
        num_classes: int = 4,
        depths: Sequence[int] = (3, 3, 9, 3),
        dims: Sequence[int] = (96, 192, 384, 768),
        drop_path_rate: float = 0.4,
        head_channels: int = 384,
        norm: str | None = None,
    ) -> None:
        super().__init__()
        self.encoder = ConvNeXt(
            depths=tuple(depths),
            dims=tuple(dims),
            drop_path_rate=drop_path_rate,
            ls_init_value=1.0,
            num_classes=0,
        )
        self.encoder.head = nn.Identity()  # type: ignore[assignment]  # timm types head as ClassifierHead
        self.out_norms = nn.ModuleList(LayerNorm2d(d, eps=1e-6) for d in dims)
        self.decode_head = UPerHead(dims, num_classes, head_channels, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits ``(B, num_classes, H, W)``; ``H`` and ``W`` must be multiples of 32."""
        feats = self.encoder.forward_intermediates(x, intermediates_only=True)
        feats = [n(f) for n, f in zip(self.out_norms, feats, strict=True)]
        return _resize(self.decode_head(feats), x.shape[-2:])


def _load_encoder(model: UPerNetConvNeXt, pretrained: bool | str | Path | None) -> None:
    download, path = resolve_pretrained(pretrained)
    if download:
        state = timm.create_model("convnext_tiny.fb_in1k", pretrained=True).state_dict()
        load_matching(model.encoder, state, source="timm convnext_tiny.fb_in1k", what="ConvNeXt")
    elif path is not None:
        state = load_weights_file(path)
        if any(k.startswith("downsample_layers.") for k in state):  # the FB release layout
            try:
                state = checkpoint_filter_fn(state, model.encoder)
            except (KeyError, RuntimeError) as err:
                msg = f"{path}: FB ConvNeXt weights do not fit this encoder ({err}); use ConvNeXt-T weights"
                raise ModelError(msg) from err
        load_matching(model.encoder, state, source=path, what="timm ConvNeXt")


def _create(pretrained: bool | str | Path | None, norm: str, **kwargs: Any) -> UPerNetConvNeXt:
    head_norm = "groupnorm" if check_norm(norm) == "groupnorm" else None
    model = UPerNetConvNeXt(norm=head_norm, **kwargs)
    _load_encoder(model, pretrained)
    return model


@register_model("convnext", family="upernet", paper_row="- | - | 82.54", params_m=46.52, img_size=224)
def convnext(
    *, num_classes: int = 4, pretrained: bool | str | Path = False, norm: str = "batchnorm"
) -> UPerNetConvNeXt:
    """UPerNet on ConvNeXt-T, 46.52 M parameters for 4 classes.

    Args:
        num_classes: Output classes.
        pretrained: False, True (timm ``convnext_tiny.fb_in1k``, downloads; the paper's setting) or a local
            ConvNeXt-T state dict (timm or FB layout).
        norm: ``"batchnorm"`` = the paper's norm-free head; ``"groupnorm"`` adds GroupNorm in the head.

    Returns:
        The model.
    """
    return _create(pretrained, norm, num_classes=num_classes)


@register_model("convnext_tiny", family="upernet", tiny=True, img_size=64)
def convnext_tiny(
    *, num_classes: int = 4, pretrained: bool | str | Path = False, norm: str = "batchnorm"
) -> UPerNetConvNeXt:
    """Test variant: ConvNeXt depths (1,1,1,1), dims (16,32,64,128), head width 64 (not timm's ConvNeXt-T).

    ``pretrained`` may be a local state dict of ``timm.models.convnext.ConvNeXt(depths=(1, 1, 1, 1),
    dims=(16, 32, 64, 128))``; True is refused.
    """
    return _create(
        reject_download(pretrained, "convnext_tiny"),
        norm,
        num_classes=num_classes,
        depths=(1, 1, 1, 1),
        dims=(16, 32, 64, 128),
        drop_path_rate=0.1,
        head_channels=64,
    )
