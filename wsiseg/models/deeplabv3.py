"""DeepLabV3 baseline (Chen et al., 2017) in torchvision's ResNet-50 form: FedDP Table I row "DeeplabV3".

Layout as in the official DHUnet code (torchvision's ``deeplabv3_resnet50``): ResNet-50 with dilation in
layers 3-4 (output stride 8), ASPP with rates (12, 24, 36), 256 channels and image pooling, projection with
dropout 0.5, then 3x3 conv 256 + BN + ReLU, 1x1 conv to classes and bilinear upsampling to the input size; no
auxiliary head. The paper starts from the ImageNet ResNet-50 (torchvision ``IMAGENET1K_V1``), which is what
``pretrained=True`` downloads.

With BatchNorm the ASPP image-pooling branch normalises a 1x1 map, so training needs batches of 2 or more;
GroupNorm has no such limit.

Reference: L.-C. Chen, G. Papandreou, F. Schroff, H. Adam, "Rethinking Atrous Convolution for Semantic
Image Segmentation", arXiv:1706.05587, 2017.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn
from torchvision.models import ResNet50_Weights
from torchvision.models.segmentation import deeplabv3_resnet50
from torchvision.models.segmentation.deeplabv3 import DeepLabHead, DeepLabV3

from wsiseg.models._registry import register_model
from wsiseg.models.layers.convert import check_norm
from wsiseg.models.layers.encoder_weights import reject_download, resolve_pretrained
from wsiseg.models.layers.tv_segmentation import finish_tv_model, tiny_resnet_backbone

__all__ = ["deeplabv3", "deeplabv3_tiny"]


@register_model("deeplabv3", family="deeplabv3", paper_row="- | - | 51.52", params_m=39.63, img_size=224)
def deeplabv3(*, num_classes: int = 4, pretrained: bool | str | Path = False, norm: str = "batchnorm") -> nn.Module:
    """DeepLabV3-ResNet50 (output stride 8), 39.63 M parameters for 4 classes; any multiple of 8.

    Args:
        num_classes: Output classes.
        pretrained: False, True (paper: torchvision ImageNet ResNet-50 V1, downloads) or a local torchvision
            ResNet-50 state dict.
        norm: ``"batchnorm"`` or ``"groupnorm"`` (replaces every BatchNorm, backbone included).

    Returns:
        The model; ``forward`` returns logits ``(B, num_classes, H, W)``.
    """
    check_norm(norm)
    download, path = resolve_pretrained(pretrained)
    weights = ResNet50_Weights.IMAGENET1K_V1 if download else None
    model = deeplabv3_resnet50(weights=None, weights_backbone=weights, num_classes=num_classes, aux_loss=False)
    return finish_tv_model(model, path=path, norm=norm, what="torchvision ResNet-50")


@register_model("deeplabv3_tiny", family="deeplabv3", tiny=True, img_size=64)
def deeplabv3_tiny(
    *, num_classes: int = 4, pretrained: bool | str | Path = False, norm: str = "batchnorm"
) -> nn.Module:
    """Test variant: the same DeepLabV3 head on a ResNet-10 (BasicBlock [1,1,1,1], output stride 32).

    Args:
        num_classes: Output classes.
        pretrained: False or a local ``torchvision.models.resnet.ResNet(BasicBlock, [1, 1, 1, 1])``
            state dict.
        norm: ``"batchnorm"`` or ``"groupnorm"``.

    Returns:
        The model.
    """
    check_norm(norm)
    path = reject_download(pretrained, "deeplabv3_tiny")
    model = DeepLabV3(tiny_resnet_backbone(), DeepLabHead(512, num_classes), None)
    return finish_tv_model(model, path=path, norm=norm, what="ResNet-10 (BasicBlock [1,1,1,1])")
