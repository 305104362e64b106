"""Plain U-Net baseline (Ronneberger et al., MICCAI 2015): FedDP Table I row "Unet".

The official DHUnet code uses the ZJUGiveLab "UNet-Version" layout, re-implemented here:

- Encoder: five double 3x3 conv blocks (conv with bias, BN, ReLU, twice) with widths 64..1024 and 2x2 max
  pooling between them.
- Decoder: ``ConvTranspose2d(k=4, s=2, p=1)`` halving the channels, concatenation with the skip, then a double
  3x3 conv + ReLU **without** norm (by design, so the decoder is DP-safe as it is).
- Head: one 3x3 conv to the classes. Kaiming-normal (fan-in) init of the 3x3 convs; norm weights ~ N(1, 0.02).

There are no ImageNet weights; ``pretrained`` may name a local file holding a ``UNetEncoder`` state dict
(for example the encoder of an earlier run). Any input size divisible by 16 works.

Reference: O. Ronneberger, P. Fischer, T. Brox, "U-Net: Convolutional Networks for Biomedical Image
Segmentation", MICCAI 2015.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from wsiseg.models._registry import register_model
from wsiseg.models._weights import load_weights_file
from wsiseg.models.layers.convert import check_norm
from wsiseg.models.layers.encoder_weights import load_matching, reject_download
from wsiseg.models.layers.norm import make_norm

__all__ = ["UNet", "UNetEncoder", "unet", "unet_tiny"]


def _double_conv(in_ch: int, out_ch: int, norm: str | None) -> nn.Sequential:
    layers: list[nn.Module] = []
    for cin in (in_ch, out_ch):
        layers.append(nn.Conv2d(cin, out_ch, 3, padding=1))
        if norm is not None:
            layers.append(make_norm(norm, out_ch))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class UNetEncoder(nn.Module):
    """Contracting path: one double conv per width, max pooling in between.

    Args:
        widths: Channels per level, e.g. ``(64, 128, 256, 512, 1024)``.
        norm: ``"batchnorm"`` or ``"groupnorm"``.
        in_chans: Input channels.
    """

    def __init__(self, widths: Sequence[int], norm: str = "batchnorm", in_chans: int = 3) -> None:
        super().__init__()
        ins = (in_chans, *widths[:-1])
        self.blocks = nn.ModuleList(_double_conv(i, o, norm) for i, o in zip(ins, widths, strict=True))
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the feature map of every level, shallowest first."""
        feats = []
        for i, block in enumerate(self.blocks):
            x = block(x if i == 0 else self.pool(x))
            feats.append(x)
        return feats


class _Up(nn.Module):
    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_ch, out_ch, kernel_size=4, stride=2, padding=1)
        self.conv = _double_conv(2 * out_ch, out_ch, None)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([self.up(x), skip], dim=1))


class UNet(nn.Module):
    """U-Net with a BN encoder and a norm-free decoder.

    Args:
        num_classes: Output classes.
        widths: Channels per level (five in the paper).
        norm: Encoder norm, ``"batchnorm"`` (paper) or ``"groupnorm"``.
    """

    def __init__(
        self,
        num_classes: int = 4,
        widths: Sequence[int] = (64, 128, 256, 512, 1024),
        norm: str = "batchnorm",
    ) -> None:
        super().__init__()
        self.encoder = UNetEncoder(widths, norm)
        self.decoder = nn.ModuleList(_Up(widths[i + 1], widths[i]) for i in reversed(range(len(widths) - 1)))
        self.head = nn.Conv2d(widths[0], num_classes, 3, padding=1)
        self._init_weights()

    def _init_weights(self) -> None:
        # As in the reference code: ConvTranspose2d keeps PyTorch's default init.
        for m in self.modules():
            if type(m) is nn.Conv2d:
                nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in")
            elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits ``(B, num_classes, H, W)``; ``H`` and ``W`` must be divisible by 16."""
        feats = self.encoder(x)
        y = feats[-1]
        for up, skip in zip(self.decoder, reversed(feats[:-1]), strict=True):
            y = up(y, skip)
        return self.head(y)


def _create_unet(widths: Sequence[int], name: str, num_classes: int, pretrained: bool | str | Path, norm: str) -> UNet:
    model = UNet(num_classes, widths, check_norm(norm))
    path = reject_download(pretrained, name)
    if path is not None:
        state = load_weights_file(path)
        load_matching(model.encoder, state, source=path, what=f"{name} UNetEncoder")
    return model


@register_model("unet", family="unet", paper_row="- | - | 78.45", params_m=39.40, img_size=224)
def unet(*, num_classes: int = 4, pretrained: bool | str | Path = False, norm: str = "batchnorm") -> UNet:
    """U-Net 64..1024, 39.40 M parameters for 4 classes, trained from scratch in the paper.

    Args:
        num_classes: Output classes.
        pretrained: False or a local ``UNetEncoder`` state dict (True is refused: no ImageNet weights).
        norm: Encoder norm, ``"batchnorm"`` or ``"groupnorm"``; the decoder has none.

    Returns:
        The model.
    """
    return _create_unet((64, 128, 256, 512, 1024), "unet", num_classes, pretrained, norm)


@register_model("unet_tiny", family="unet", tiny=True, img_size=64)
def unet_tiny(*, num_classes: int = 4, pretrained: bool | str | Path = False, norm: str = "batchnorm") -> UNet:
    """Test variant with widths 8..128 (same code path as ``unet``)."""
    return _create_unet((8, 16, 32, 64, 128), "unet_tiny", num_classes, pretrained, norm)
