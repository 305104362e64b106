import numpy as np
import pytest
from PIL import Image

from wsiseg.data.partition import kfold_slides, partition_clients, split_slides
from wsiseg.data.transforms import PairTransform
from wsiseg.errors import ConfigError

SLIDES = [f"s{i:02d}" for i in range(10)]


def test_split_is_by_slide_and_seeded():
    train, test = split_slides(SLIDES, test_fraction=0.3, seed=1)
    assert len(test) == 3
    assert len(train) == 7
    assert not set(train) & set(test)
    assert set(train) | set(test) == set(SLIDES)
    assert split_slides(SLIDES, seed=1) == (train, test)
    assert split_slides(SLIDES, seed=2) != (train, test)


def test_split_needs_two_slides():
    with pytest.raises(ConfigError, match="at least 2"):
        split_slides(["only"])


def test_kfold_each_slide_tested_once():
    folds = kfold_slides(SLIDES, folds=5, seed=0)
    tested = [s for _, test in folds for s in test]
    assert sorted(tested) == SLIDES
    for train, test in folds:
        assert not set(train) & set(test)


@pytest.mark.parametrize("mode", ["iid", "dirichlet"])
def test_partition_disjoint_and_nonempty(mode):
    parts = partition_clients(SLIDES, 3, mode=mode, seed=0, alpha=0.1)
    assert len(parts) == 3
    assert all(parts)
    flat = [s for p in parts for s in p]
    assert sorted(flat) == SLIDES


def test_partition_by_site():
    sites = {s: ("A" if i < 4 else "B") for i, s in enumerate(SLIDES)}
    parts = partition_clients(SLIDES, 2, mode="by-site", sites=sites)
    assert parts == [SLIDES[:4], SLIDES[4:]]
    with pytest.raises(ConfigError, match="does not match"):
        partition_clients(SLIDES, 3, mode="by-site", sites=sites)


def test_partition_too_many_clients():
    with pytest.raises(ConfigError, match="at least 11 slides"):
        partition_clients(SLIDES, 11)


def test_augmentation_keeps_image_and_mask_aligned():
    # An image whose colour encodes the class: any misalignment shows up as a colour/label mismatch.
    labels = np.zeros((64, 64), dtype=np.uint8)
    labels[8:40, 10:30] = 1
    labels[40:60, 30:60] = 2
    colours = np.array([[255, 255, 255], [200, 0, 0], [0, 0, 200]], dtype=np.uint8)
    image = Image.fromarray(colours[labels])
    mask = Image.fromarray(labels, mode="L")
    t = PairTransform(hflip=0.5, vflip=0.5, rotate=1.0, hsv=0.0)
    for seed in range(8):
        img2, mask2 = t(image, mask, np.random.default_rng(seed))
        arr, lab = np.asarray(img2).astype(int), np.asarray(mask2)
        for cls in (1, 2):
            inside = lab == cls
            # interior pixels (away from interpolated borders) carry the class colour
            eroded = (
                inside & np.roll(inside, 1, 0) & np.roll(inside, -1, 0) & np.roll(inside, 1, 1) & np.roll(inside, -1, 1)
            )
            if eroded.any():
                diff = np.abs(arr[eroded] - colours[cls]).max(axis=1)
                assert np.median(diff) < 10
        assert set(np.unique(lab)) <= {0, 1, 2}


def test_augmentation_is_seeded():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    mask = Image.fromarray(np.zeros((32, 32), dtype=np.uint8), mode="L")
    t = PairTransform()
    a = t(image, mask, np.random.default_rng(5))[0]
    b = t(image, mask, np.random.default_rng(5))[0]
    assert np.array_equal(np.asarray(a), np.asarray(b))
