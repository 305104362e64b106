"""Paired augmentations: geometry applied identically to image and mask, colour to the image only.

Every random choice comes from an explicit ``np.random.Generator``; the dataset derives one per sample from
``(seed, epoch, index)``, so results do not depend on the number of DataLoader workers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

__all__ = ["PairTransform", "hsv_jitter"]


def hsv_jitter(image: Image.Image, hue: float, saturation: float, value: float) -> Image.Image:
    """Shift hue by ``hue`` (fraction of a turn); scale saturation and value by ``1 + s`` and ``1 + v``."""
    hsv = np.asarray(image.convert("HSV")).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + hue * 255.0) % 256.0
    hsv[..., 1] = np.clip(hsv[..., 1] * (1.0 + saturation), 0, 255)
    hsv[..., 2] = np.clip(hsv[..., 2] * (1.0 + value), 0, 255)
    return Image.fromarray(hsv.astype(np.uint8), mode="HSV").convert("RGB")


@dataclass(frozen=True)
class PairTransform:
    """The training augmentations of DHUnet's code, plus the HSV jitter the paper describes.

    Attributes:
        hflip: Probability of a horizontal flip.
        vflip: Probability of a vertical flip.
        rotate: Probability of a rotation by an angle drawn from [-max_angle, max_angle].
        max_angle: Largest rotation in degrees (paper: 90).
        hsv: Probability of HSV jitter (image only).
        hue: Largest hue shift (fraction of the hue circle).
        saturation: Largest relative saturation change.
        value: Largest relative brightness change.
        background: Class id that fills the mask corners uncovered by a rotation.
    """

    hflip: float = 0.5
    vflip: float = 0.5
    rotate: float = 0.5
    max_angle: float = 90.0
    hsv: float = 0.5
    hue: float = 0.04
    saturation: float = 0.2
    value: float = 0.1
    background: int = 0

    def __call__(
        self, image: Image.Image, mask: Image.Image | None, rng: np.random.Generator
    ) -> tuple[Image.Image, Image.Image | None]:
        """Apply the augmentations to an RGB image and its ``L`` mask."""
        if rng.random() < self.hflip:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            mask = mask.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if mask is not None else None
        if rng.random() < self.vflip:
            image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
            mask = mask.transpose(Image.Transpose.FLIP_TOP_BOTTOM) if mask is not None else None
        if rng.random() < self.rotate:
            angle = float(rng.uniform(-self.max_angle, self.max_angle))
            image = image.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=(255, 255, 255))
            if mask is not None:
                mask = mask.rotate(angle, resample=Image.Resampling.NEAREST, fillcolor=self.background)
        if rng.random() < self.hsv:
            image = hsv_jitter(
                image,
                float(rng.uniform(-self.hue, self.hue)),
                float(rng.uniform(-self.saturation, self.saturation)),
                float(rng.uniform(-self.value, self.value)),
            )
        return image, mask
