"""The prediction reader: strip reading under DataLoader workers gives the per-window tensors, in order."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from wsiseg.inference.reader import WindowDataset
from wsiseg.slide import open_slide
from wsiseg.testing.synthetic import make_slide
from wsiseg.tiling.geometry import window_grid
from wsiseg.tiling.window import plan_reads


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("window_reader") / "s.svs"
    make_slide(path, width=2048, height=1536, seed=8)
    return path


def _collect(ds: WindowDataset, workers: int) -> tuple[torch.Tensor, list[int]]:
    loader = DataLoader(ds, batch_size=5, shuffle=False, num_workers=workers)
    images, indices = [], []
    for batch, idx in loader:
        images.append(batch)
        indices.extend(idx.tolist())
    return torch.cat(images), indices


@pytest.mark.parametrize("workers", [0, 2])
def test_dataloader_workers_get_per_window_pixels(slide_path: Path, workers: int) -> None:
    with open_slide(slide_path) as slide:
        origins = window_grid(slide.dimensions, 256, 128)[:60]
        strips = WindowDataset(slide, origins, 0, 256, 64, "bilinear", plan_reads(slide, 0))
        plain = WindowDataset(slide, origins, 0, 256, 64, "bilinear", plan_reads(slide, 0, strips=False))
        assert strips.reader.mode == "strips"
        assert plain.reader.mode == "per-window"
        got, order = _collect(strips, workers)
        ref, _ = _collect(plain, 0)
    assert order == list(range(len(origins)))
    assert torch.equal(got, ref)
    if workers == 0:
        assert strips.reader.decodes is not None
        assert strips.reader.decodes / len(origins) <= 1.2


def test_out_of_order_index_is_still_right(slide_path: Path) -> None:
    with open_slide(slide_path) as slide:
        origins = window_grid(slide.dimensions, 256, 128)[:40]
        ds = WindowDataset(slide, origins, 0, 256, 64, "bilinear")
        plain = WindowDataset(slide, origins, 0, 256, 64, "bilinear", plan_reads(slide, 0, strips=False))
        for i in (30, 2, 39, 0, 30):
            assert torch.equal(ds[i][0], plain[i][0])
