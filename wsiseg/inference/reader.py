"""Read prediction windows from a slide in raster order, one slide handle per DataLoader worker."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from wsiseg.data.dataset import to_tensor
from wsiseg.slide import Slide
from wsiseg.tiling.window import read_window

__all__ = ["WindowDataset"]


class WindowDataset(Dataset[tuple[torch.Tensor, int]]):
    """Windows of one slide as normalised tensors, read exactly as ``wsiseg tile`` reads them.

    The slide object holds only its path and opens its handle lazily in whichever process reads, so
    DataLoader workers (fork or spawn) each get their own handle.

    Args:
        slide: The slide.
        origins: Level-0 window origins in raster order.
        level: Pyramid level to read.
        read_size: Window side at that level.
        size: Model input side.
        resize: Resize kernel name (the one the model was trained with).
    """

    def __init__(
        self,
        slide: Slide,
        origins: Sequence[tuple[int, int]],
        level: int,
        read_size: int,
        size: int,
        resize: str,
    ) -> None:
        self.slide = slide
        self.origins = list(origins)
        self.level, self.read_size, self.size = level, read_size, size
        self.resize = resize

    def __len__(self) -> int:
        return len(self.origins)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = read_window(self.slide, self.origins[index], self.level, self.read_size, self.size, self.resize)
        return to_tensor(img), index
