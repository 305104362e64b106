"""FCN baseline (Long et al., CVPR 2015) in torchvision's ResNet-50 form: FedDP Table I row "FCN".

The official DHUnet code builds torchvision's ``fcn_resnet50`` layout: ResNet-50 with dilation in layers
3-4 (output stride 8), ``FCNHead`` (3x3 conv 2048->512 without bias, BN, ReLU, dropout 0.1, 1x1 conv to
classes) and a bilinear upsampling to the input size; no auxiliary head. The paper's FCN is trained from
scratch, so ``pretrained=True`` (torchvision ImageNet ResNet-50 V1 backbone) is an option, not the paper
setting.

Reference: J. Long, E. Shelhamer, T. Darrell, "Fully Convolutional Networks for Semantic Segmentation",
CVPR 2015.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn
from torchvision.models import ResNet50_Weights
from torchvision.models.segmentation import fcn_resnet50
from torchvision.models.segmentation.fcn import FCN, FCNHead

from wsiseg.models._registry import register_model
from wsiseg.models.layers.convert import check_norm
from wsiseg.models.layers.encoder_weights import reject_download, resolve_pretrained
from wsiseg.models.layers.tv_segmentation import finish_tv_model, tiny_resnet_backbone

__all__ = ["fcn", "fcn_tiny"]


@register_model("fcn", family="fcn", paper_row="- | - | 72.15", params_m=32.95, img_size=224)
def fcn(*, num_classes: int = 4, pretrained: bool | str | Path = False, norm: str = "batchnorm") -> nn.Module:
    """FCN-ResNet50 (output stride 8), 32.95 M parameters for 4 classes; accepts any multiple of 8.

    Args:
        num_classes: Output classes.
        pretrained: False (paper: from scratch), True (torchvision ImageNet ResNet-50 V1, downloads) or a
            local torchvision ResNet-50 state dict.
        norm: ``"batchnorm"`` or ``"groupnorm"`` (replaces every BatchNorm, backbone included).

    Returns:
        The model; ``forward`` returns logits ``(B, num_classes, H, W)``.
    """
    check_norm(norm)
    download, path = resolve_pretrained(pretrained)
    weights = ResNet50_Weights.IMAGENET1K_V1 if download else None
    model = fcn_resnet50(weights=None, weights_backbone=weights, num_classes=num_classes, aux_loss=False)
    return finish_tv_model(model, path=path, norm=norm, what="torchvision ResNet-50")


@register_model("fcn_tiny", family="fcn", tiny=True, img_size=64)
def fcn_tiny(*, num_classes: int = 4, pretrained: bool | str | Path = False, norm: str = "batchnorm") -> nn.Module:
    """Test variant: the same FCN on a ResNet-10 (BasicBlock [1,1,1,1], output stride 32).

    Args:
        num_classes: Output classes.
        pretrained: False or a local ``torchvision.models.resnet.ResNet(BasicBlock, [1, 1, 1, 1])``
            state dict.
        norm: ``"batchnorm"`` or ``"groupnorm"``.

    Returns:
        The model.
    """
    check_norm(norm)
    path = reject_download(pretrained, "fcn_tiny")
    model = FCN(tiny_resnet_backbone(), FCNHead(512, num_classes), None)
    return finish_tv_model(model, path=path, norm=norm, what="ResNet-10 (BasicBlock [1,1,1,1])")
