"""Cross-scale Expand layer of DHUnet (Wang et al., 2023), the decoder's learned upsampling.

A norm, then several parallel transposed convolutions with the same stride and growing kernels, whose outputs
are concatenated along channels. Every branch uses padding ``(k - s) / 2``, so each one upsamples exactly by
the stride while looking at a different context size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from wsiseg.errors import ModelError
from wsiseg.models.layers.norm import make_norm

__all__ = ["CrossScaleExpand", "expand_x2", "expand_x4"]


class CrossScaleExpand(nn.Module):
    """Norm, then parallel ``ConvTranspose2d`` branches concatenated along channels.

    Args:
        dim: Input channels.
        out_chs: Output channels of each branch.
        kernels: Kernel size of each branch; ``k - stride`` must be even and non-negative.
        stride: Upsampling factor shared by all branches.
        norm: Name of the leading norm (see ``make_norm``).

    Raises:
        ModelError: If the branch settings are inconsistent.
    """

    def __init__(
        self,
        dim: int,
        out_chs: Sequence[int],
        kernels: Sequence[int],
        stride: int,
        norm: str = "batchnorm",
    ) -> None:
        super().__init__()
        if len(out_chs) != len(kernels) or any((k - stride) % 2 or k < stride for k in kernels):
            msg = f"bad Cross-scale Expand branches: out_chs={out_chs}, kernels={kernels}, stride={stride}"
            raise ModelError(msg)
        self.dim = dim
        self.stride = stride
        self.out_channels = int(sum(out_chs))
        self.norm = make_norm(norm, dim)
        self.reductions = nn.ModuleList(
            nn.ConvTranspose2d(dim, c, kernel_size=k, stride=stride, padding=(k - stride) // 2)
            for c, k in zip(out_chs, kernels, strict=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Upsample ``(B, dim, H, W)`` to ``(B, out_channels, stride*H, stride*W)``."""
        x = self.norm(x)
        return torch.cat([branch(x) for branch in self.reductions], dim=1)


def expand_x2(dim: int, norm: str = "batchnorm") -> CrossScaleExpand:
    """The x2 layer of decoder stages 0-2: kernels (2, 4), ``dim/4`` channels each (``dim/2`` in total)."""
    return CrossScaleExpand(dim, (dim // 4, dim // 4), (2, 4), stride=2, norm=norm)


def expand_x4(dim: int, norm: str = "batchnorm") -> CrossScaleExpand:
    """The final x4 layer: kernels (4, 8, 16, 32) with ``dim/2, dim/4, dim/8, dim/8`` channels (``dim``)."""
    return CrossScaleExpand(dim, (dim // 2, dim // 4, dim // 8, dim // 8), (4, 8, 16, 32), stride=4, norm=norm)
