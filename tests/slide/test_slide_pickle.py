"""Slides are picklable and reopen per process, so torch DataLoader workers read correctly."""

from __future__ import annotations

import functools
import operator
import pickle
from typing import TYPE_CHECKING

import numpy as np
import pytest
from torch.utils.data import DataLoader

from wsiseg.slide import Slide, open_slide

if TYPE_CHECKING:
    from conftest import SyntheticSlide

LOCATIONS = [(x, y) for y in (0, 700, 1400) for x in (0, 900, 1980)]  # last column: 60 px outside


def _region_jobs(slide: Slide) -> list[functools.partial[np.ndarray]]:
    """One picklable read per item; ``collate_fn=operator.call`` runs it inside the worker.

    (A Dataset class defined in this file could not be unpickled by spawn workers under
    ``--import-mode=importlib``; partials of a bound method of ``Slide`` can.)
    """
    return [functools.partial(slide.read_region, loc, 0, (128, 128)) for loc in LOCATIONS]


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_pickle_round_trip(aperio_slide: SyntheticSlide, backend: str) -> None:
    slide = open_slide(aperio_slide.path, backend=backend)
    direct = slide.read_region((500, 300), 1, (64, 48))
    blob = pickle.dumps(slide)
    assert len(blob) < 1000  # path and names only: no handle, no pixels
    clone = pickle.loads(blob)
    assert clone._handle is None  # lazily reopened
    assert clone.path == aperio_slide.path
    assert clone.backend == backend  # the resolved backend survives
    np.testing.assert_array_equal(clone.read_region((500, 300), 1, (64, 48)), direct)
    assert slide._handle is not None  # pickling did not close the original
    clone.close()
    slide.close()


def test_auto_resolution_survives_pickle(aperio_slide: SyntheticSlide) -> None:
    slide = open_slide(aperio_slide.path)
    clone = pickle.loads(pickle.dumps(slide))
    assert clone._resolved == "openslide"
    assert clone.mpp == pytest.approx((0.5, 0.5))
    slide.close()
    clone.close()


def test_handle_from_another_process_is_not_reused(aperio_slide: SyntheticSlide) -> None:
    slide = open_slide(aperio_slide.path, backend="tiffslide")
    inherited = slide._handle
    slide._pid = -1  # what a forked child sees: the handle belongs to another process
    region = slide.read_region((0, 0), 0, (32, 32))
    assert slide._handle is not inherited
    assert region.shape == (32, 32, 3)
    inherited.close()
    slide.close()


@pytest.mark.parametrize(
    ("backend", "context"),
    [
        ("tiffslide", "fork"),
        ("openslide", "fork"),
        pytest.param("tiffslide", "spawn", marks=pytest.mark.slow),  # ~10 s: torch import x2
    ],
)
def test_dataloader_workers_match_direct_reads(aperio_slide: SyntheticSlide, backend: str, context: str) -> None:
    slide = open_slide(aperio_slide.path, backend=backend)  # handle open in the parent
    expected = np.stack([slide.read_region(loc, 0, (128, 128)) for loc in LOCATIONS])
    loader = DataLoader(
        _region_jobs(slide),
        batch_size=None,
        collate_fn=operator.call,
        num_workers=2,
        multiprocessing_context=context,
    )
    got = np.stack(list(loader))
    np.testing.assert_array_equal(got, expected)
    assert (got[2][:, 68:] == 255).all()  # padded white
    assert (got[2][:, :68] < 250).any()
    slide.close()
