"""DHUnet: dual-branch hierarchical global-local fusion U-Net (Wang et al., 2023).

A Swin Transformer (global branch) and a ConvNeXt (local branch) encode the same patch. Their four stage
outputs (strides 4-32) are added stage by stage in the GLFusion decoder, which runs deepest first:

1. ``s = local_i + global_i`` (the authors' "DAF" fusion), concatenated with the previous stage's output;
2. a skip conv "SC" (3x3 conv without bias, norm, ReLU) back to ``dim_i`` channels;
3. a Cross-scale Expand layer (x2 for stages 0-2, x4 for the last one), see ``layers/expand.py``.

A bias-free 1x1 conv gives the logits at full resolution. Four deep-supervision heads (3x3 conv with
bias, then nearest upsampling) sit on the decoder outputs, as in the authors' code (``pengsl-lab/DHUnet``,
``network/DHUnet.py``); the training loss weights them with ``DEEP_SUPERVISION_WEIGHTS``.

Both encoders are timm modules (``SwinTransformer`` depths (2,2,2,2), ``ConvNeXt`` depths (3,3,3,3)) whose
features come from ``forward_intermediates`` (NCHW, without the final norm), so no backbone code is vendored.
The full model has 55.412 M parameters for 4 classes.

Reference:
    L. Wang, L. Pan, H. Wang, M. Liu, Z. Feng, P. Rong, Z. Chen, S. Peng. "DHUnet: Dual-branch hierarchical
    global-local fusion network for whole slide image segmentation." Biomedical Signal Processing and
    Control 85 (2023) 104976.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import torch
from timm.models.convnext import ConvNeXt
from timm.models.swin_transformer import SwinTransformer
from torch import nn

from wsiseg.errors import ModelError
from wsiseg.models._registry import register_model
from wsiseg.models.layers.expand import expand_x2, expand_x4
from wsiseg.models.layers.norm import make_norm

__all__ = ["DEEP_SUPERVISION_WEIGHTS", "DHUnet", "DHUnetConfig", "GLFusionBlock", "dhunet", "dhunet_tiny"]

#: Loss weight per index of the training-mode output list ``[final, aux3, aux2, aux1, aux0]``
#: (``trainer.py``: 0.5 final + 0.3 aux(out2) + 0.2 aux(out0); aux(out3) and aux(out1) get no weight).
DEEP_SUPERVISION_WEIGHTS: dict[int, float] = {0: 0.5, 2: 0.3, 4: 0.2}

#: The encoder pyramid's total stride: inputs must be a multiple of it.
INPUT_MULTIPLE = 32
#: Stage-1 width of Swin-T / ConvNeXt-T, the only width the ImageNet weights fit.
IMAGENET_EMBED_DIM = 96


@dataclass(frozen=True)
class DHUnetConfig:
    """Architecture settings of DHUnet; the defaults are the authors' ``DHUnet_224.yaml``.

    Attributes:
        num_classes: Output classes (background included).
        img_size: Input side in pixels (a multiple of 32); fixed unless ``dynamic_img_size``.
        embed_dim: Channels of stage 1 in both branches (stages double it).
        swin_depths: Swin blocks per stage (global branch).
        num_heads: Swin attention heads per stage.
        window_size: Swin window size.
        convnext_depths: ConvNeXt blocks per stage (local branch).
        drop_path_global: Stochastic-depth rate of the Swin branch.
        drop_path_local: Stochastic-depth rate of the ConvNeXt branch.
        norm: Decoder norm, ``"batchnorm"`` (paper) or ``"groupnorm"`` (DP training).
        dynamic_img_size: Accept any multiple of 32 (Swin masks are rebuilt per forward).
    """

    num_classes: int = 4
    img_size: int = 224
    embed_dim: int = 96
    swin_depths: tuple[int, ...] = (2, 2, 2, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    convnext_depths: tuple[int, ...] = (3, 3, 3, 3)
    drop_path_global: float = 0.2
    drop_path_local: float = 0.1
    norm: str = "batchnorm"
    dynamic_img_size: bool = False

    def __post_init__(self) -> None:
        if self.img_size <= 0 or self.img_size % INPUT_MULTIPLE:
            msg = f"DHUnet img_size={self.img_size} is not a positive multiple of {INPUT_MULTIPLE}; "
            msg += "use e.g. 224"
            raise ModelError(msg)
        if not len(self.swin_depths) == len(self.num_heads) == len(self.convnext_depths) == 4:
            msg = "DHUnet needs 4 stages: swin_depths, num_heads and convnext_depths must have 4 entries"
            raise ModelError(msg)
        if self.embed_dim % 8 or self.num_classes < 1:
            msg = f"DHUnet needs embed_dim divisible by 8 and num_classes >= 1 (got {self.embed_dim}, "
            msg += f"{self.num_classes})"
            raise ModelError(msg)


class GLFusionBlock(nn.Module):
    """One GLFusion decoder stage: add the branches, concat the previous output, SC conv, Cross-scale Expand.

    Args:
        dim: Channels of this stage's encoder features.
        concat: Whether the previous decoder output (``dim`` channels) is concatenated (not in stage 0).
        final: Use the x4 expand (last stage) instead of x2.
        norm: Norm name for the SC conv and the expand layer.
    """

    def __init__(self, dim: int, *, concat: bool, final: bool, norm: str = "batchnorm") -> None:
        super().__init__()
        in_ch = 2 * dim if concat else dim
        self.sc = nn.Sequential(nn.Conv2d(in_ch, dim, 3, padding=1, bias=False), make_norm(norm, dim), nn.ReLU())
        self.expand = expand_x4(dim, norm) if final else expand_x2(dim, norm)
        self.out_channels = self.expand.out_channels

    def forward(self, local: torch.Tensor, glob: torch.Tensor, prev: torch.Tensor | None = None) -> torch.Tensor:
        """Fuse one stage; ``prev`` is the previous stage's output at the same resolution."""
        x = local + glob
        if prev is not None:
            x = torch.cat([x, prev], dim=1)
        return self.expand(self.sc(x))


class DHUnet(nn.Module):
    """DHUnet segmentation model.

    ``forward`` returns the logits ``(B, num_classes, H, W)`` in eval mode, and the list
    ``[final, aux(out3), aux(out2), aux(out1), aux(out0)]`` in training mode (deep supervision), to be
    weighted with ``self.deep_supervision_weights``.

    Args:
        cfg: Architecture settings.
    """

    def __init__(self, cfg: DHUnetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        self.deep_supervision_weights = dict(DEEP_SUPERVISION_WEIGHTS)
        dims = tuple(cfg.embed_dim * 2**i for i in range(4))
        self.global_encoder = SwinTransformer(
            img_size=cfg.img_size,
            patch_size=4,
            embed_dim=cfg.embed_dim,
            depths=cfg.swin_depths,
            num_heads=cfg.num_heads,
            window_size=cfg.window_size,
            drop_path_rate=cfg.drop_path_global,
            num_classes=0,
            strict_img_size=not cfg.dynamic_img_size,
        )
        self.global_encoder.norm = nn.Identity()
        self.local_encoder = ConvNeXt(
            depths=cfg.convnext_depths,
            dims=dims,
            drop_path_rate=cfg.drop_path_local,
            ls_init_value=1e-6,
            num_classes=0,
        )
        self.local_encoder.head = nn.Identity()  # type: ignore[assignment]  # timm types head as ClassifierHead
        enc_dims = [f["num_chs"] for f in self.global_encoder.feature_info]
        if enc_dims != [f["num_chs"] for f in self.local_encoder.feature_info]:
            msg = f"DHUnet branches disagree on stage widths: {enc_dims}"
            raise ModelError(msg)
        blocks = [GLFusionBlock(d, concat=i > 0, final=i == 3, norm=cfg.norm) for i, d in enumerate(reversed(enc_dims))]
        self.decoder = nn.ModuleList(blocks)
        self.segment = nn.Conv2d(blocks[-1].out_channels, cfg.num_classes, 1, bias=False)
        self.deep_supervision = nn.ModuleList(
            _aux_head(block.out_channels, cfg.num_classes, scale)
            for block, scale in zip(blocks, (16, 8, 4, 1), strict=True)
        )

    def forward(self, x: torch.Tensor, x_global: torch.Tensor | None = None) -> torch.Tensor | list[torch.Tensor]:
        """Segment a batch.

        Args:
            x: Images ``(B, 3 or 1, H, W)``, H and W multiples of 32 (equal to ``img_size`` unless dynamic).
            x_global: Input of the global branch; defaults to ``x`` (the authors always pass the same tensor).

        Returns:
            Logits in eval mode; ``[final, aux3, aux2, aux1, aux0]`` (all full size) in training mode.

        Raises:
            ModelError: If the input size does not fit the model.
        """
        x = self._check_input(x)
        xg = x if x_global is None else self._check_input(x_global)
        # timm's ConvNeXt returns channels-last strides. On CPU that made the 32x32 transposed conv of the x4
        # expand ~90x slower for narrow decoders (tiny, 448 px), so features follow the input's format.
        fmt = _memory_format(x)
        # intermediates_only=True makes timm return just the list (its annotation also allows a tuple)
        local = cast(list[torch.Tensor], self.local_encoder.forward_intermediates(x, intermediates_only=True))
        glob = cast(list[torch.Tensor], self.global_encoder.forward_intermediates(xg, intermediates_only=True))
        local = [f.contiguous(memory_format=fmt) for f in reversed(local)]
        glob = [f.contiguous(memory_format=fmt) for f in reversed(glob)]
        outs: list[torch.Tensor] = []
        out: torch.Tensor | None = None
        for block, feat_l, feat_g in zip(self.decoder, local, glob, strict=True):
            out = block(feat_l, feat_g, out)
            outs.append(out)
        final = self.segment(outs[-1])
        if not self.training:
            return final
        aux = [head(o) for head, o in zip(self.deep_supervision, outs, strict=True)]
        return [final, *aux[::-1]]

    def _check_input(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            msg = f"DHUnet expects (B, 3, H, W) or (B, 1, H, W) images, got shape {tuple(x.shape)}"
            raise ModelError(msg)
        h, w = x.shape[-2:]
        if self.cfg.dynamic_img_size:
            ok = h % INPUT_MULTIPLE == 0 and w % INPUT_MULTIPLE == 0
        else:
            ok = h == w == self.cfg.img_size
        if not ok:
            want = f"multiples of {INPUT_MULTIPLE}" if self.cfg.dynamic_img_size else str(self.cfg.img_size)
            msg = f"DHUnet input is {h}x{w} but the model takes {want}; set img_size= or dynamic_img_size=True"
            raise ModelError(msg)
        return x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if channels_last else torch.contiguous_format


def _aux_head(in_ch: int, num_classes: int, scale: int) -> nn.Sequential:
    conv = nn.Conv2d(in_ch, num_classes, 3, padding=1)
    return nn.Sequential(conv, nn.Upsample(scale_factor=scale)) if scale > 1 else nn.Sequential(conv)


def _create_dhunet(base: DHUnetConfig, *, pretrained: bool | str | Path = False, **overrides: Any) -> DHUnet:
    fields = {f.name for f in dataclasses.fields(DHUnetConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        msg = f"unknown DHUnet argument(s) {unknown}; valid: {', '.join(sorted(fields | {'pretrained'}))}"
        raise ModelError(msg)
    for key in ("swin_depths", "num_heads", "convnext_depths"):
        if key in overrides:
            overrides[key] = tuple(overrides[key])
    model = DHUnet(dataclasses.replace(base, **overrides))
    if pretrained:
        _load_pretrained(model, pretrained)
    return model


def _load_pretrained(model: DHUnet, pretrained: Literal[True] | str | Path) -> None:
    from wsiseg.models.pretrained import (
        load_dhunet_pretrained,
        resolve_pretrained_dir,
    )

    if model.cfg.embed_dim != IMAGENET_EMBED_DIM:
        msg = f"ImageNet weights fit only embed_dim=96 (Swin-T/ConvNeXt-T), not {model.cfg.embed_dim}; "
        msg += "use the 'dhunet' model or pretrained=False"
        raise ModelError(msg)
    sources = (True, True) if pretrained is True else resolve_pretrained_dir(pretrained)
    load_dhunet_pretrained(model, *sources)


@register_model(
    "dhunet",
    family="dhunet",
    paper_row="93.07/87.04/97.52 | 85.78/76.89/91.29 | 85.23/76.26/91.09",
    params_m=55.41,
)
def dhunet(**kwargs: Any) -> DHUnet:
    """DHUnet as in the paper: Swin-T (2,2,2,2) + ConvNeXt-T (3,3,3,3), C=96, 55.41 M parameters."""
    return _create_dhunet(DHUnetConfig(), **kwargs)


@register_model("dhunet_tiny", family="dhunet", tiny=True, params_m=2.71)
def dhunet_tiny(**kwargs: Any) -> DHUnet:
    """Tiny DHUnet for CPU tests: C=24, Swin depths (2,2,2,2) heads (1,2,4,8), ConvNeXt depths (1,1,1,1)."""
    base = DHUnetConfig(embed_dim=24, swin_depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), convnext_depths=(1, 1, 1, 1))
    return _create_dhunet(base, **kwargs)
