"""Session fixtures shared by the training, federated and prediction tests: one small generated cohort,
tiled at 64 px, and one tiny DHUnet trained on it for a few epochs (about a minute on 2 CPU cores)."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_SLIDES = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "slides"


@pytest.fixture(scope="session")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six 3072 x 2048 H&E-like slides from two sites, with masks and cohort.csv."""
    from wsiseg.testing.synthetic import make_cohort

    root = tmp_path_factory.mktemp("cohort")
    make_cohort(root, n_slides=6, width=3072, height=2048, seed=11, n_sites=2)
    return root


@pytest.fixture(scope="session")
def tiles64(cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cohort tiled at 64 px from 500 px windows at stride 250 (small tiles keep CPU training short)."""
    from wsiseg.tiling.batch import expand_sources, read_site_table, tile_many
    from wsiseg.tiling.geometry import TilingConfig

    out = tmp_path_factory.mktemp("tiles64")
    outcomes = tile_many(expand_sources([cohort]), out, TilingConfig(window=500, stride=250, size=64), workers=1,
                         sites=read_site_table(cohort / "cohort.csv"))  # fmt: skip
    assert all(o.status == "tiled" for o in outcomes), [o.error for o in outcomes]
    return out


TINY = {"model": "dhunet_tiny", "model_args": {"img_size": 64}}


@pytest.fixture(scope="session")
def trained_run(tiles64: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny DHUnet trained centrally on ``tiles64``; returns its run folder."""
    from wsiseg.train.trainer import TrainConfig, run_training

    cfg = TrainConfig(data=(str(tiles64),), epochs=10, batch_size=8, lr=0.02, seed=5, **TINY)
    return run_training(cfg, runs_root=tmp_path_factory.mktemp("runs")).run_dir
