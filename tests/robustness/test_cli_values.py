"""Out-of-range CLI values: each a one-line error with its documented code, before anything is written."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from wsiseg.errors import PrivacyError
from wsiseg.federated.config import FedConfig
from wsiseg.testing.synthetic import make_patch_image


@pytest.fixture(scope="module")
def patch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("patch") / "p.png"
    make_patch_image(path, size=(256, 256), seed=5)
    return path


@pytest.mark.parametrize(
    ("case", "args", "words"),
    [
        ("predict --batch-size 0", ["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
        ("predict --workers -1", ["--workers", "-1"], "--workers must be at least 0 (0 reads in this process), got -1"),
    ],
)
def test_predict_values(wsiseg: Callable[..., Any], patch: Path, tmp_path: Path, case: str, args: list[str],
                        words: str) -> None:  # fmt: skip
    run = wsiseg(case, "predict", patch, "--out", tmp_path / "out", *args)
    assert run.exit_code == 2, run.output
    assert words in run.error
    assert "None" not in run.error  # the bad value is named, not an unset default
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("case", "args", "named", "not_named"),
    [
        ("export --alpha 5", ["--alpha", "5"], "--alpha", "--as"),
        ("export --as bogus", ["--as", "bogus"], "--as", "--alpha"),
    ],
)
def test_export_values_refused_before_writing(wsiseg: Callable[..., Any], patch: Path, tmp_path: Path, case: str,
                                              args: list[str], named: str, not_named: str) -> None:  # fmt: skip
    """Before: exit 70 after the overlay was already written; then a bad --alpha was reported as a bad --as too."""
    out = tmp_path / "export"
    run = wsiseg(case, "export", patch.with_name("p_mask.png"), "--slide", patch, "--out", out, *args)
    assert run.exit_code == 2, run.output
    assert "nothing was written" in run.error
    assert named in run.error
    assert not_named not in run.error  # only the bad value is named
    assert not out.exists()


@pytest.mark.parametrize(
    ("case", "args", "words"),
    [
        ("tile --slide-mpp -1", ["--slide-mpp", "-1"], "--slide-mpp"),
        ("tile --slide-mpp nan", ["--slide-mpp", "nan"], "--slide-mpp"),
        ("tile --workers 0", ["--workers", "0"], "--workers"),
        ("tile --size 20000 (about 14 GB a window)", ["--size", "20000"], "--max-window-mb"),
    ],
)
def test_tile_values(wsiseg: Callable[..., Any], patch: Path, tmp_path: Path, case: str, args: list[str],
                     words: str) -> None:  # fmt: skip
    run = wsiseg(case, "tile", patch, "--out", tmp_path / "t", *args)
    assert run.exit_code == 2, run.output
    assert words in run.error
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize(
    ("case", "args"),
    [
        ("fed-train --clip 0", ["--clip", "0"]),
        ("fed-train --clip inf", ["--clip", "inf"]),
        ("fed-train --sigma -1", ["--sigma", "-1"]),
        ("fed-train --sigma 0 --dp central", ["--sigma", "0", "--dp", "central"]),
        ("fed-train --sigma 0 --dp local", ["--sigma", "0", "--dp", "local"]),
    ],
)
def test_privacy_values_all_exit_8(wsiseg: Callable[..., Any], tmp_path: Path, case: str, args: list[str]) -> None:
    """Before: ``--clip 0`` gave 2 and ``--clip inf`` 8; ``--sigma 0`` under DP ran with infinite epsilon."""
    run = wsiseg(case, "fed-train", "--data", tmp_path / "none", "--runs", tmp_path / "runs", "--dry-run", *args)
    assert run.exit_code == PrivacyError.exit_code, run.output
    assert not (tmp_path / "runs").exists()


def test_zero_noise_only_when_asked_and_then_not_private() -> None:
    with pytest.raises(PrivacyError, match="allow_no_noise"):
        FedConfig(data=("x",), dp="central", sigma=0.0)
    cfg = FedConfig(data=("x",), dp="central", sigma=0.0, allow_no_noise=True)
    assert cfg.noise_multiplier == 0.0
    FedConfig(data=("x",), dp="none", sigma=0.0)  # no DP mode: sigma is unused, nothing to refuse


def test_fed_certs_refuses_to_replace_a_ca(wsiseg: Callable[..., Any], tmp_path: Path) -> None:
    """Before: a rerun into the same folder silently replaced ca.key and every certificate."""
    out = tmp_path / "certs"
    assert wsiseg("fed-certs into a new folder", "fed-certs", "--site", "a", "--out", out).exit_code == 0
    key = (out / "ca.key").read_bytes()
    run = wsiseg("fed-certs over an existing CA", "fed-certs", "--site", "a", "--out", out)
    assert run.exit_code == 2, run.output
    assert "--force" in run.error
    assert (out / "ca.key").read_bytes() == key
    assert wsiseg("fed-certs --force over a CA", "fed-certs", "--site", "a", "--out", out, "--force").exit_code == 0
    assert (out / "ca.key").read_bytes() != key
