"""A small generated cohort output for the cohort table and report tests.

Four H&E-like slides from ``wsiseg.testing``; each one's ground-truth mask is written as the ``mask.tif`` that
``wsiseg predict`` writes (same writer, sidecar and provenance fields), so every area in the cohort table has a
known answer: pixel count x (mask mpp)^2. One slide has an mpp assumed at prediction, one is almost empty and
one has a name that is HTML (``<img src=x onerror=...>``); the report must show it as text.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsiseg.classes import DEFAULT_CLASSES
from wsiseg.export.sinks import write_label_pyramid
from wsiseg.testing.synthetic import make_slide

HOSTILE = "<img src=x onerror=alert(1)>"
MASK_DS = 4
SLIDE_MPP = 0.5


@dataclass(frozen=True)
class CohortOutputs:
    pred_dir: Path
    labels: dict[str, np.ndarray]  # slide -> the mask's labels
    mask_mpp: float  # um per mask pixel
    hostile: str = HOSTILE


@pytest.fixture(scope="session")
def cohort_outputs(tmp_path_factory: pytest.TempPathFactory) -> CohortOutputs:
    root = tmp_path_factory.mktemp("cohort_out")
    pred = root / "pred"
    pred.mkdir()
    labels: dict[str, np.ndarray] = {}
    names = ["case_a", "case_b", "case_c", HOSTILE]
    for seed, name in enumerate(names):
        slide = make_slide(root / "slides" / f"s{seed}.svs", width=1024, height=768, seed=seed + 3,
                           mpp=SLIDE_MPP, mask_downsample=MASK_DS)  # fmt: skip
        lab = np.asarray(Image.open(slide.mask_path)).astype(np.uint8)
        if name == "case_c":  # almost no tissue: a few tumour pixels in a corner
            lab = np.zeros_like(lab)
            lab[:6, :8] = 1
        labels[name] = lab
        prov = {
            "slide": str(slide.slide_path) if name != HOSTILE else f"/data/{HOSTILE}<script>alert(2)</script>.svs",
            "slide_dimensions": [1024, 768], "slide_mpp": SLIDE_MPP,
            "mpp_source": "assumed" if name == "case_b" else "slide",
            "tiling": {"window": 1000, "stride": 500, "size": 224, "mpp": None}, "window_level0": 1000,
            "stride_level0": 500, "checkpoint": "runs/r1/checkpoints/final", "checkpoint_id": f"abc{seed}",
            "card_sha256": "f" * 64, "dp": "central", "epsilon": 3.5 + seed, "delta": 1e-5,
            "privacy_unit": "one client (all of its slides)",
        }  # fmt: skip
        write_label_pyramid(pred / f"{name}.tif", lab, mpp=SLIDE_MPP * MASK_DS, classes=DEFAULT_CLASSES,
                            downsample_to_level0=float(MASK_DS), provenance=prov)  # fmt: skip
    return CohortOutputs(pred, labels, SLIDE_MPP * MASK_DS)
