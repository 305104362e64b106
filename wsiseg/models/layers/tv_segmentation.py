"""Shared plumbing for the torchvision segmentation baselines (FCN, DeepLabV3).

Torchvision's segmentation models return ``{"out": logits}``; ``OutOnly`` unwraps it so every wsiseg model
returns a plain tensor. ``finish_tv_model`` applies the common ``pretrained=path`` and ``norm`` arguments.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import torch
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.resnet import BasicBlock, ResNet

from wsiseg.models._weights import load_weights_file
from wsiseg.models.layers.convert import apply_norm
from wsiseg.models.layers.encoder_weights import load_matching

__all__ = ["OutOnly", "finish_tv_model", "tiny_resnet_backbone"]


class OutOnly(nn.Module):
    """Return the ``"out"`` entry of a torchvision segmentation model as a plain tensor.

    Args:
        model: A torchvision ``FCN``/``DeepLabV3`` (with ``backbone`` and ``classifier``).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    @property
    def backbone(self) -> nn.Module:
        """The ResNet feature extractor (an ``IntermediateLayerGetter``)."""
        return cast(nn.Module, self.model.backbone)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits ``(B, num_classes, H, W)`` at the input resolution."""
        return self.model(x)["out"]


def tiny_resnet_backbone() -> IntermediateLayerGetter:
    """A ResNet-10 (BasicBlock, one block per stage, output stride 32, 512 channels) for tiny variants.

    BasicBlock does not support dilation, so the tiny variants keep stride 32 where the full models use
    output stride 8; the head and the upsampling path are the same code.
    """
    return IntermediateLayerGetter(ResNet(BasicBlock, [1, 1, 1, 1]), return_layers={"layer4": "out"})


def finish_tv_model(model: nn.Module, *, path: Path | None, norm: str, what: str) -> OutOnly:
    """Load a local encoder file into ``model.backbone``, apply ``norm`` and unwrap the dict output.

    Args:
        model: The torchvision segmentation model (BatchNorm everywhere).
        path: A local weights file for the ResNet backbone (a plain torchvision ResNet state dict; its
            ``fc`` entries are ignored), or None.
        norm: ``"batchnorm"`` or ``"groupnorm"`` (every BatchNorm, backbone included, becomes GroupNorm).
        what: Name of the backbone for error messages.

    Returns:
        The wrapped model.

    Raises:
        ModelError: Unreadable or mismatching weights file, or unknown norm.
    """
    if path is not None:
        load_matching(cast(nn.Module, model.backbone), load_weights_file(path), source=path, what=what)
    return OutOnly(apply_norm(model, norm))
