"""Overhead of secure aggregation (Flower SecAgg+) per round, and its cost extrapolated to DHUnet's 55 M parameters.

(a) The same tiny federation twice over real Flower processes on 127.0.0.1 (SuperLink + 4 SuperNodes, TLS,
    SuperNode authentication, ``unet_tiny``, 64 px tiles, 2 local steps, sigma 0.5): ``--dp local`` (one
    message per site and round) and ``--dp distributed`` (SecAgg+: four stages per round). Per-round seconds
    come from ``flower_rounds.csv``, per-stage seconds from ``secagg_stages.csv``.
(b) The SecAgg+ arithmetic per round in this process with Flower's own primitives, for ``2**20`` coordinates
    and 4 sites: a site's grid rounding, quantisation and masks (one private, three pairwise), the server's
    modular sum, private-mask removal and decoding. Both scale linearly in the coordinates, so the figure is
    extrapolated to 55.4 M (DHUnet), with the bytes each site uploads.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_secagg.py --rounds 2 --out benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SITES = ["site0", "site1", "site2", "site3"]
DHUNET_PARAMS = 55_400_000


def _cohort(root: Path) -> None:
    from wsiseg.testing.synthetic import make_slide
    from wsiseg.tiling.batch import tile_many
    from wsiseg.tiling.geometry import TilingConfig

    for i, site in enumerate(SITES):
        for j in range(2):
            s = make_slide(root / "raw" / site / f"{site}_s{j}.svs", width=512, height=512, seed=40 + 3 * i + j,
                           site=i % 3, tile=256, min_level_size=512)  # fmt: skip
            tile_many([s.slide_path], root / site, TilingConfig(window=128, stride=128, size=64), workers=1)


def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open())) if path.is_file() else []


def arithmetic(d: int = 1 << 20, n: int = 4) -> dict[str, float]:
    """Seconds of the SecAgg+ arithmetic for ``d`` coordinates and ``n`` sites (Flower's primitives)."""
    from flwr.common.secure_aggregation.ndarrays_arithmetic import parameters_addition, parameters_mod
    from flwr.common.secure_aggregation.quantization import dequantize, quantize
    from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen

    from wsiseg.privacy.secure_sum import choose_ranges, noise_share_std, to_grid

    r = choose_ranges(clip=0.5, noise_std=noise_share_std(0.5, 0.5, 3), n_params=d, n_sites=n)
    rng = np.random.default_rng(0)
    x = {"w": rng.normal(0, 0.1, d)}
    shapes = [(d,)]
    t0 = time.perf_counter()
    grid = to_grid(x, r, rng)[0]["w"]
    t_grid = time.perf_counter() - t0
    t0 = time.perf_counter()
    q = quantize([grid], r.clipping_range, r.quantization_range)
    t_quant = time.perf_counter() - t0
    t0 = time.perf_counter()
    vec = [q[0].astype(np.int64)]
    for _ in range(n):  # one private mask, n - 1 pairwise masks
        vec = parameters_addition(vec, pseudo_rand_gen(os.urandom(32), r.modulus_range, shapes))
    vec = parameters_mod(vec, r.modulus_range)
    t_mask = time.perf_counter() - t0
    t0 = time.perf_counter()
    total = vec
    for _ in range(n - 1):
        total = parameters_addition(total, vec)
    for _ in range(n):  # regenerate and remove each contributor's private mask
        total = [total[0] - pseudo_rand_gen(os.urandom(32), r.modulus_range, shapes)[0]]
    total = parameters_mod(total, r.modulus_range)
    dequantize(total, r.clipping_range, r.quantization_range)
    t_server = time.perf_counter() - t0
    return {"d": d, "n": n, "site_grid": t_grid, "site_quantise": t_quant, "site_masks": t_mask,
            "server": t_server, "upload_bytes_per_param": vec[0].dtype.itemsize}  # fmt: skip


def main() -> None:
    """Run (a) and (b), print the tables, optionally append them to RESULTS.md."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_flower import flower_run  # the Flower harness shared with bench_flower

    from wsiseg.federated.config import FedConfig

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--skip-flower", action="store_true")
    args = ap.parse_args()
    lines = [f"### bench_secagg: {platform.machine()} CPU, {os.cpu_count()} cores, 1 torch thread per site, "
             f"{time.strftime('%Y-%m-%d')}", ""]  # fmt: skip
    if not args.skip_flower:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            _cohort(root)
            base = {"client_dirs": tuple(str(root / s) for s in SITES), "rounds": args.rounds, "local_steps": 2,
                    "batch_size": 4, "model": "unet_tiny", "sigma": 0.5, "clip": 0.5, "seed": 7, "device": "cpu",
                    "amp": False, "augment": False, "eval_every": 100}  # fmt: skip
            runs = {}
            for tag, dp in (("plain", "local"), ("secagg", "distributed")):
                seconds, run = flower_run(root, FedConfig(dp=dp, **base), sites=SITES, tag=tag)  # type: ignore[arg-type]
                runs[tag] = (run, seconds)
            plain = [float(r["seconds"]) for r in _rows(runs["plain"][0] / "flower_rounds.csv")]
            sec = [float(r["seconds"]) for r in _rows(runs["secagg"][0] / "flower_rounds.csv")]
            stages = _rows(runs["secagg"][0] / "secagg_stages.csv")
            lines += ["(a) Flower on 127.0.0.1, 4 sites, TLS + SuperNode auth, unet_tiny (64 px), 2 local steps:", "",
                      "| run | per-round seconds | mean | total incl. start-up |", "|---|---|---:|---:|",
                      f"| `--dp local` (no SecAgg) | {', '.join(f'{s:.1f}' for s in plain)} | "
                      f"{np.mean(plain):.1f} | {runs['plain'][1]:.0f} s |",
                      f"| `--dp distributed` (SecAgg+) | {', '.join(f'{s:.1f}' for s in sec)} | "
                      f"{np.mean(sec):.1f} | {runs['secagg'][1]:.0f} s |", "",
                      f"Ratio secure / plain per round: **{np.mean(sec) / np.mean(plain):.2f}x**. SecAgg+ stages "
                      "(mean seconds over rounds): " + ", ".join(
                          f"{st} {np.mean([float(r['seconds']) for r in stages if r['stage'] == st]):.1f}"
                          for st in ("setup", "share-keys", "collect-masked-vectors", "unmask")), ""]  # fmt: skip
    a = arithmetic()
    scale = DHUNET_PARAMS / a["d"]
    site = a["site_grid"] + a["site_quantise"] + a["site_masks"]
    lines += [f"(b) SecAgg+ arithmetic, Flower's primitives, {a['d']} coordinates, {a['n']} sites, this CPU:", "",
              "| part | seconds at 2^20 | extrapolated to 55.4 M (DHUnet) |", "|---|---:|---:|",
              f"| site: grid rounding | {a['site_grid']:.3f} | {a['site_grid'] * scale:.1f} s |",
              f"| site: quantise | {a['site_quantise']:.3f} | {a['site_quantise'] * scale:.1f} s |",
              f"| site: 1 private + {a['n'] - 1} pairwise masks | {a['site_masks']:.3f} | "
              f"{a['site_masks'] * scale:.1f} s |",
              f"| site total | {site:.3f} | {site * scale:.1f} s |",
              f"| server: sum of {a['n']}, unmask, decode | {a['server']:.3f} | {a['server'] * scale:.1f} s |", "",
              f"Upload per site and round: {a['upload_bytes_per_param']} bytes a parameter (int64 masked vector), "
              f"{a['upload_bytes_per_param'] * DHUNET_PARAMS / 2**20:.0f} MiB for DHUnet against "
              f"{4 * DHUNET_PARAMS / 2**20:.0f} MiB of float32 without SecAgg+.", ""]  # fmt: skip
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        with args.out.open("a", encoding="utf-8") as fh:
            fh.write("\n" + text + "\n")


if __name__ == "__main__":
    main()
