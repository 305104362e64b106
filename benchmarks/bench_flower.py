"""Per-round overhead of the Flower path against the in-process simulation, for the same run.

Runs the same tiny federation (3 synthetic sites, ``unet_tiny``, 64 px tiles, 2 local steps, ``--dp local``)
once with :func:`wsiseg.federated.rounds.run_federated` and once over real Flower processes on 127.0.0.1
(SuperLink + 3 SuperNodes, TLS, SuperNode authentication), then prints both per-round times and whether the
final weights agree. Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_flower.py --rounds 3 [--out bench_flower.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path
from typing import Any

SITES = ["site0", "site1", "site2"]


def _cohort(root: Path) -> None:
    from wsiseg.testing.synthetic import make_slide
    from wsiseg.tiling.batch import tile_many
    from wsiseg.tiling.geometry import TilingConfig

    for i, site in enumerate(SITES):
        for j in range(2):
            s = make_slide(root / "raw" / site / f"{site}_s{j}.svs", width=512, height=512, seed=10 + 3 * i + j,
                           site=i, tile=256, min_level_size=512)  # fmt: skip
            tile_many([s.slide_path], root / site, TilingConfig(window=128, stride=128, size=64), workers=1)


def flower_run(root: Path, cfg: Any, *, sites: list[str] = SITES, tag: str = "flower-run",
               min_clients: int = 3) -> tuple[float, Path]:  # fmt: skip
    """One federation over real Flower processes (TLS, node auth) on 127.0.0.1: ``(seconds, run folder)``."""
    from wsiseg.federated.flower import launch
    from wsiseg.federated.flower.certificates import make_trial_certs
    from wsiseg.federated.flower.federation import SiteOptions, run_server, start_site
    from wsiseg.federated.flower.server_loop import ServerSpec

    work = root / tag
    certs = make_trial_certs(work / "certs", sites, hosts=["127.0.0.1"])
    port = launch.free_port()
    spec = ServerSpec(fed_config=cfg.to_dict(), sites=sites, run_dir=str(work / "run"), min_clients=min_clients,
                      round_timeout=600, wait_timeout=120)  # fmt: skip
    procs = []

    def ready() -> None:
        for s in sites:
            d = certs.site_dirs[s]
            procs.append(start_site(SiteOptions(data=root / s, site=s, server=f"127.0.0.1:{port}",
                                                state_dir=work / f"state-{s}", ca_cert=d / "ca.crt",
                                                node_key=d / "node.key", port=launch.free_port(), device="cpu",
                                                threads=1)))  # fmt: skip

    srv = certs.server_dir
    tls = launch.Tls(srv / "ca.crt", srv / "server.pem", srv / "server.key")
    t0 = time.perf_counter()
    try:
        code = run_server(spec, host="127.0.0.1", port=port, tls=tls, site_keys=srv / "site-keys", on_ready=ready,
                          say=lambda _: None)  # fmt: skip
    finally:
        for p in procs:
            launch.stop(p)
    if code != 0:
        msg = f"Flower run failed; see {work / 'run' / 'flower' / 'flwr-run.log'}"
        raise SystemExit(msg)
    return time.perf_counter() - t0, Path(spec.run_dir)


def main() -> None:
    """Run both paths and print the comparison."""
    import torch

    from wsiseg.federated.config import FedConfig
    from wsiseg.federated.rounds import run_federated
    from wsiseg.train.checkpoint import load_checkpoint

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _cohort(root)
        cfg = FedConfig(client_dirs=tuple(str(root / s) for s in SITES), rounds=args.rounds, local_steps=2,
                        batch_size=4, model="unet_tiny", dp="local", sigma=0.5, clip=0.5, seed=7, device="cpu",
                        amp=False, augment=False, eval_every=10_000)  # fmt: skip
        sim_rounds: list[float] = []
        t0 = time.perf_counter()
        sim = run_federated(cfg, runs_root=root / "sim", on_round=lambda r: sim_rounds.append(r.seconds))
        sim_total = time.perf_counter() - t0
        fl_total, fl_dir = flower_run(root, cfg)
        fl_rounds = [float(r["seconds"]) for r in csv.DictReader((fl_dir / "flower_rounds.csv").open())]
        a = load_checkpoint(sim.run_dir / "checkpoints" / "final").weights
        b = load_checkpoint(fl_dir / "checkpoints" / "final").weights
        diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    report = {
        "rounds": args.rounds, "sim_round_s": sim_rounds, "flower_round_s": fl_rounds, "sim_total_s": sim_total,
        "flower_total_s": fl_total, "overhead_per_round_s": (sum(fl_rounds) - sum(sim_rounds)) / args.rounds,
        "max_abs_weight_diff": diff,
    }  # fmt: skip
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
