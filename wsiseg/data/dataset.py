"""A torch Dataset over one or more tile manifests: normalised image tensors and class-id mask tensors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from wsiseg.classes import ClassTable
from wsiseg.data.transforms import PairTransform
from wsiseg.errors import DataError
from wsiseg.tiling.geometry import TilingConfig
from wsiseg.tiling.manifest import TileRecord, load_manifest

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "TileDataset", "TileSource", "load_sources", "load_tile", "to_tensor"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class TileSource:
    """Tiles gathered from one or more datasets that share tiling settings and classes."""

    records: tuple[tuple[Path, TileRecord], ...]
    classes: ClassTable
    config: TilingConfig
    roots: tuple[Path, ...]

    @property
    def slide_ids(self) -> list[str]:
        """Unique slide ids (prefixed with the dataset folder when several are combined), sorted."""
        return sorted({self.key(root, rec) for root, rec in self.records})

    def key(self, root: Path, rec: TileRecord) -> str:
        """Slide key of a record: the slide id, prefixed by its dataset when several are combined."""
        return rec.slide_id if len(self.roots) == 1 else f"{root.name}/{rec.slide_id}"

    def subset(self, slide_keys: Sequence[str]) -> TileSource:
        """Keep only tiles of the given slides."""
        wanted = set(slide_keys)
        kept = tuple((r, t) for r, t in self.records if self.key(r, t) in wanted)
        return TileSource(kept, self.classes, self.config, self.roots)

    def sites(self) -> dict[str, str]:
        """Slide key -> site name (empty when unknown)."""
        return {self.key(r, t): t.site for r, t in self.records}


def load_sources(paths: Sequence[str | Path]) -> TileSource:
    """Load tile datasets and check they agree on classes and tiling settings.

    Raises:
        DataError: Missing manifest, disagreeing settings or classes, or no tiles.
    """
    if not paths:
        msg = "no tile dataset given; run `wsiseg tile SLIDES` (writes ./tiles) or pass --data DIR"
        raise DataError(msg)
    manifests = [load_manifest(p) for p in paths]
    first = manifests[0]
    for other in manifests[1:]:
        if other.classes != first.classes:
            msg = f"{other.root}: class table differs from {first.root}; datasets must share classes"
            raise DataError(msg)
        if other.config.size != first.config.size or other.config.resize != first.config.resize:
            msg = f"{other.root}: tile size or resize kernel differ from {first.root}; re-tile alike"
            raise DataError(msg)
    records = tuple((m.root, r) for m in manifests for r in m.records)
    if not records:
        msg = f"{', '.join(str(m.root) for m in manifests)}: the dataset has no tiles"
        raise DataError(msg)
    return TileSource(records, first.classes, first.config, tuple(m.root for m in manifests))


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float tensor ``(3, H, W)`` with ImageNet normalisation."""
    arr = np.asarray(image, dtype=np.float32) / 255.0
    mean = np.array(IMAGENET_MEAN, dtype=np.float32)
    std = np.array(IMAGENET_STD, dtype=np.float32)
    arr = (arr - mean) / std
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


class TileDataset(Dataset[dict[str, object]]):
    """Image tiles with their mask tiles.

    Items are dicts with ``image`` (float ``(3, H, W)``, ImageNet-normalised), ``mask`` (int64 ``(H, W)``
    class ids, absent when ``require_masks`` is False and the tile has none), ``slide`` and ``index``.

    Args:
        source: Tiles to serve.
        transform: Paired augmentations (training only) or None.
        seed: Base seed of the per-sample augmentation generators.
        require_masks: Raise if a tile has no mask (training and evaluation need them).
    """

    def __init__(
        self,
        source: TileSource,
        *,
        transform: PairTransform | None = None,
        seed: int = 0,
        require_masks: bool = True,
    ) -> None:
        if not source.records:
            msg = "the tile dataset is empty (no slides selected); check the split or the --data folders"
            raise DataError(msg)
        if require_masks:
            missing = [r.slide_id for _, r in source.records if not r.mask]
            if missing:
                msg = (
                    f"slide {missing[0]} has tiles without masks; tile it with --masks "
                    "(label images, GeoJSON or XML) to train or evaluate"
                )
                raise DataError(msg)
        self.source = source
        self.transform = transform
        self.seed = seed
        self.epoch = 0
        self.num_classes = len(source.classes)

    def __len__(self) -> int:
        return len(self.source.records)

    def set_epoch(self, epoch: int) -> None:
        """Change the augmentation stream (call once per epoch for fresh, reproducible draws)."""
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict[str, object]:
        root, rec = self.source.records[index]
        image, mask = load_tile(root, rec)
        if self.transform is not None:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            image, mask = self.transform(image, mask, rng)
        item: dict[str, object] = {
            "image": to_tensor(image),
            "slide": self.source.key(root, rec),
            "index": index,
        }
        if mask is not None:
            arr = np.asarray(mask, dtype=np.uint8)
            if arr.max(initial=0) >= self.num_classes:
                bad = sorted(set(np.unique(arr).tolist()) - set(range(self.num_classes)))
                msg = (
                    f"{root / rec.mask}: class ids {bad} are not in the class table "
                    f"(0..{self.num_classes - 1}); fix the labels or the --palette"
                )
                raise DataError(msg)
            item["mask"] = torch.from_numpy(arr.astype(np.int64))
        return item


def load_tile(root: Path, rec: TileRecord) -> tuple[Image.Image, Image.Image | None]:
    """Read one tile's RGB image and its class-id mask (None when the tile has no mask).

    Raises:
        DataError: A missing or corrupt file, or a mask whose size differs from its image.
    """
    image = _open(root / rec.image, "RGB")
    mask = _open(root / rec.mask, "L") if rec.mask else None
    if mask is not None and mask.size != image.size:
        msg = f"{root / rec.mask}: mask is {mask.size} but its image is {image.size}; re-tile the slide"
        raise DataError(msg)
    return image, mask


def _open(path: Path, mode: str) -> Image.Image:
    try:
        with Image.open(path) as img:
            return img.convert(mode)
    except FileNotFoundError as err:
        msg = f"{path}: tile missing; re-run `wsiseg tile --overwrite` for its slide"
        raise DataError(msg) from err
    except (UnidentifiedImageError, OSError) as err:
        msg = f"{path}: corrupt tile ({err}); re-run `wsiseg tile --overwrite` for its slide"
        raise DataError(msg) from err
