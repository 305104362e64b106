"""Read prediction windows from a slide in raster order, one slide handle per DataLoader worker."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from wsiseg.data.dataset import to_tensor
from wsiseg.slide import Slide
from wsiseg.tiling.window import ReadPlan, WindowReader

__all__ = ["WindowDataset"]


class WindowDataset(Dataset[tuple[torch.Tensor, int]]):
    """Windows of one slide as normalised tensors, read exactly as ``wsiseg tile`` reads them.

    The slide object holds only its path and opens its handle lazily in whichever process reads, so
    DataLoader workers (fork or spawn) each get their own handle. Tiled TIFF/SVS levels are read in strips
    (:class:`wsiseg.tiling.window.WindowReader`): each process decodes a stored tile once while its windows
    move down the slide. Any index order is served correctly; increasing indices (``shuffle=False``, which
    each worker of a DataLoader also sees) keep memory at about one strip per process.

    Args:
        slide: The slide.
        origins: Level-0 window origins in raster order.
        level: Pyramid level to read.
        read_size: Window side at that level.
        size: Model input side.
        resize: Resize kernel name (the one the model was trained with).
        plan: Strip or per-window reading (None: chosen from the slide, see ``plan_reads``).
    """

    def __init__(
        self,
        slide: Slide,
        origins: Sequence[tuple[int, int]],
        level: int,
        read_size: int,
        size: int,
        resize: str,
        plan: ReadPlan | None = None,
    ) -> None:
        self.slide = slide
        self.origins = list(origins)
        self.level, self.read_size, self.size = level, read_size, size
        self.resize = resize
        self.reader = WindowReader(slide, self.origins, level, read_size, size, resize, plan)

    def __len__(self) -> int:
        return len(self.origins)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return to_tensor(self.reader.read(index)), index
