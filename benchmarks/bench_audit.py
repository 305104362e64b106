"""The canary audit against a correct and a silently broken mechanism, for every audited mode.

"Broken" runs the real code path with its Gaussian noise replaced by zeros while the accountant is still told
sigma (the fault the audit exists to catch). Generated cohort at 32 px, fresh ``unet_tiny`` (GroupNorm), two
real sites of 4 tiles (client-level) or one site of 16 tiles (sample mode), 200 canaries, 25 guesses each side,
95 % confidence, delta 1e-5.

Usage::

    .venv/bin/python benchmarks/bench_audit.py --out benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import wsiseg.federated.aggregate as aggregate
import wsiseg.privacy.dpsgd as dpsgd
from wsiseg.audit.canary import CanaryConfig, run_canary_audit
from wsiseg.audit.inputs import generated_tiles, load_audit_model, pick_targets
from wsiseg.audit.invert import LocalRecipe
from wsiseg.train.loop import make_loss

SETTINGS = {
    "central": {"sigma": 3.0, "rounds": 3},
    "local": {"sigma": 6.0, "rounds": 3},
    "sample": {"sigma": 3.0, "rounds": 3, "sample_rate": 0.5, "steps_per_round": 2},
}


def _one(tiles: Path, mode: str, broken: bool, seed: int) -> tuple[dict, float]:
    real_noise, real_sgd = aggregate.gaussian_noise_like, dpsgd.gaussian_like
    if broken:
        aggregate.gaussian_noise_like = lambda u, std, rng, **_: {n: np.zeros_like(v) for n, v in u.items()}  # type: ignore[assignment]
        dpsgd.gaussian_like = lambda t, std, gen: {n: torch.zeros_like(v) for n, v in t.items()}  # type: ignore[assignment]
    try:
        am = load_audit_model(None, model_name="unet_tiny", tile_size=32, seed=seed)
        n = 16 if mode == "sample" else 8
        t = pick_targets(tiles, n, tile_size=32, num_classes=4, seed=seed)
        data = [(t.images, t.masks)] if mode == "sample" else [(t.images[:4], t.masks[:4]), (t.images[4:], t.masks[4:])]
        cfg = CanaryConfig(mode=mode, canaries=200, guesses=25, seed=seed, **SETTINGS[mode])  # type: ignore[arg-type]
        t0 = time.perf_counter()
        res = run_canary_audit(cfg, am.model, make_loss(am.model, 4), data, LocalRecipe())
        return res.summary(), time.perf_counter() - t0
    finally:
        aggregate.gaussian_noise_like, dpsgd.gaussian_like = real_noise, real_sgd  # type: ignore[assignment]


def main() -> None:
    """Run both cases for every mode and print (or append) the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "wsiseg-bench-audit")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(2)
    tiles = args.work / "tiles"
    if not (tiles / "manifest.json").is_file():
        tiles = generated_tiles(args.work, 32, 0)
    lines = [
        "### bench_audit: one-run canary audit, correct vs silently broken noise (200 canaries, 25 guesses each "
        f"side, 95 %, delta 1e-5, seed {args.seed}, unet_tiny 32 px, CPU)",
        "",
        "| mode | sigma told to the accountant | noise | accountant epsilon (PLD) | correct guesses | lower bound "
        "| bound > accountant? | s |",
        "|---|---:|---|---:|---:|---:|---|---:|",
    ]
    for mode in SETTINGS:
        for broken in (False, True):
            s, sec = _one(tiles, mode, broken, args.seed)
            lines.append(f"| {mode} | {SETTINGS[mode]['sigma']:g} | {'off (broken)' if broken else 'on'} | "
                         f"{s['claimed_epsilon']:.3g} | {s['correct']}/{s['guesses']} | {s['lower_bound']:.3g} | "
                         f"{'yes' if s['exceeds_claim'] else 'no'} | {sec:.0f} |")  # fmt: skip
            print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with args.out.open("a", encoding="utf-8") as fh:
            fh.write("\n" + text)


if __name__ == "__main__":
    main()
