"""The benchmark scripts stay importable: a renamed or removed wsiseg name breaks them before anyone runs them."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"
SCRIPTS = sorted(BENCH_DIR.glob("bench_*.py"))


def test_every_benchmark_is_found() -> None:
    names = {p.stem for p in SCRIPTS}
    assert {"bench_tile", "bench_models", "bench_train", "bench_predict", "bench_fed", "bench_flower"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_benchmark_imports_and_has_main(script: Path) -> None:
    spec = importlib.util.spec_from_file_location(f"_bench_{script.stem}", script)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    try:
        spec.loader.exec_module(module)  # runs the imports, not the benchmark (guarded by __main__)
    finally:
        sys.modules.pop(spec.name, None)
    assert callable(getattr(module, "main", None)), f"{script.name} has no main()"
