"""Cohort prediction on Dask: slides per hour with 1 and 2 workers, the scheduler's overhead per slide, peak RSS.

The same generated slides and tiny untrained checkpoint (``unet_tiny``, 128 px windows at stride 64 resized to
32) are predicted three ways, each into a fresh folder:

- in process: the CLI's own batch loop (:meth:`wsiseg.cohort.jobs.SlideJob.run`, model loaded once), torch on
  one thread, the thread count of one Dask worker;
- on a local Dask cluster of 1 worker, then of 2 workers (processes with one thread each), through
  :func:`wsiseg.cohort.run.run_cohort`, which is what ``wsiseg predict --cluster local`` runs.

Reported: wall time and slides/hour of each; the scheduler's overhead per slide, as (1-worker wall - in-process
wall) / slides (it includes the one model load on the worker) and as (1-worker wall - the sum of the workers'
own per-slide times) / slides; the CPU seconds per slide (this process in process; the workers' own, summed,
on Dask), which the load of a shared machine changes far less than wall time; cluster start-up and worker
warm-up (importing torch, timm, the slide readers and wsiseg once per worker process) times, which are not in the
walls; the peak RSS of every worker process (``ru_maxrss`` read on the worker after the run) and of this
process. With ``--gpu`` (CUDA only) the in-process and 1-worker runs are repeated on the GPU.

Usage::

    .venv/bin/python benchmarks/bench_cohort.py --slides 8 --size 2048
    .venv/bin/python benchmarks/bench_cohort.py --slides 16 --size 4096 --gpu --json cohort.json
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _cpu_s(dask_worker: Any = None) -> float:
    del dask_worker
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _worker_rss(dask_worker: Any = None) -> float:
    del dask_worker
    return _rss_mib()


def _warm(dask_worker: Any = None) -> bool:
    """Import what a task needs (torch, timm, the slide readers, wsiseg): once per worker process, not per slide."""
    del dask_worker
    import wsiseg.cohort.worker
    import wsiseg.models
    import wsiseg.slide

    return bool(wsiseg.cohort.worker.EVENT_TOPIC and wsiseg.slide and wsiseg.models)


def _inputs(root: Path, n: int, size: int) -> list[Path]:
    from wsiseg.testing.checkpoints import tiny_checkpoint
    from wsiseg.testing.synthetic import make_slide

    for i in range(n):
        make_slide(root / "slides" / f"c{i:03d}.svs", width=size, height=size * 3 // 4, seed=100 + i, tile=256)
    tiny_checkpoint(root / "ckpt")
    return sorted((root / "slides").glob("*.svs"))


def _jobs(root: Path, out: Path, device: str) -> tuple[list[Any], dict[str, Any]]:
    from wsiseg.cohort.jobs import plan_jobs
    from wsiseg.inference.predictor import PredictSettings
    from wsiseg.inference.provenance import checkpoint_provenance
    from wsiseg.tiling.batch import expand_sources
    from wsiseg.train.checkpoint import load_checkpoint

    ckpt = load_checkpoint(root / "ckpt")
    card = ckpt.model_card
    settings = PredictSettings(workers=0, device=device, min_tissue=card.tiling_config.min_tissue, threads=1)
    prov = checkpoint_provenance(ckpt)
    jobs = plan_jobs(expand_sources([str(root / "slides")]), out, tiling=card.tiling_config,
                     classes=card.class_table, settings=settings, provenance=prov)  # fmt: skip
    return jobs, prov


def in_process(root: Path, device: str) -> dict[str, Any]:
    """The plain batch loop, model loaded once, torch on one thread."""
    from wsiseg.train.checkpoint import load_checkpoint

    out = root / f"inproc-{device}"
    out.mkdir()
    jobs, _ = _jobs(root, out, device)
    start, cpu0 = time.perf_counter(), _cpu_s()
    net = load_checkpoint(root / "ckpt").build_model().to(device)
    windows = sum(job.run(net).windows for job in jobs)  # one torch thread (settings.threads), as a worker
    wall, cpu = time.perf_counter() - start, _cpu_s() - cpu0
    return {"mode": f"in process ({device})", "wall_s": wall, "slides": len(jobs), "windows": windows,
            "slides_per_hour": len(jobs) / wall * 3600, "cpu_s_per_slide": cpu / len(jobs)}  # fmt: skip


def on_dask(root: Path, workers: int, device: str) -> dict[str, Any]:
    """``run_cohort`` on a fresh local cluster of ``workers`` processes."""
    from wsiseg.cohort.cluster import CohortOptions, open_client
    from wsiseg.cohort.run import run_cohort

    out = root / f"dask{workers}-{device}"
    out.mkdir()
    jobs, prov = _jobs(root, out, device)
    t0 = time.perf_counter()
    with open_client(CohortOptions(cluster="local", workers=workers, retries=1)) as client:
        client.wait_for_workers(workers)
        startup = time.perf_counter() - t0
        client.run(_warm)
        warmup = time.perf_counter() - t0 - startup
        cpu0 = client.run(_cpu_s)
        start = time.perf_counter()
        summary = run_cohort(client, jobs, checkpoint=prov["checkpoint"], checkpoint_id=prov["checkpoint_id"],
                             device=device, retries=1, out_dir=out)  # fmt: skip
        wall = time.perf_counter() - start
        cpu = sum(client.run(_cpu_s).values()) - sum(cpu0.values())  # workers restarted by a death would miss
        rss = sorted(client.run(_worker_rss).values())
    assert summary.count("done") == len(jobs), [o.reason for o in summary.failed]
    return {"mode": f"Dask, {workers} worker{'s' if workers > 1 else ''} ({device})", "wall_s": wall,
            "slides": len(jobs), "windows": sum(o.windows for o in summary.outcomes),
            "slides_per_hour": len(jobs) / wall * 3600, "task_seconds": sum(o.seconds for o in summary.outcomes),
            "startup_s": startup, "warmup_s": warmup, "worker_peak_rss_mib": rss, "cpu_s_per_slide": cpu / len(jobs),
            "model_loads": sum({o.pid: o.model_loads for o in summary.outcomes}.values())}  # fmt: skip


def _same_masks(root: Path, a: str, b: str) -> bool:
    names = sorted(p.name for p in (root / a).glob("*.tif"))
    return bool(names) and all((root / a / n).read_bytes() == (root / b / n).read_bytes() for n in names)


def _table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| run | wall s | slides/h | CPU s/slide | start-up s | warm-up s | worker peak RSS MiB | model loads |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        rss = ", ".join(f"{v:.0f}" for v in r.get("worker_peak_rss_mib", [])) or "-"
        lines.append(f"| {r['mode']} | {r['wall_s']:.1f} | {r['slides_per_hour']:.0f} | {r['cpu_s_per_slide']:.2f} "
                     f"| {r.get('startup_s', 0):.1f} "
                     f"| {r.get('warmup_s', 0):.1f} | {rss} | {r.get('model_loads', 1)} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    """Run the benchmark and print a Markdown table and the overheads."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slides", type=int, default=8)
    ap.add_argument("--size", type=int, default=2048, help="slide width in px (height is 3/4 of it)")
    ap.add_argument("--gpu", action="store_true", help="also run in process and on 1 worker with CUDA")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench_cohort_"))
    try:
        _inputs(root, args.slides, args.size)
        rows = [in_process(root, "cpu"), on_dask(root, 1, "cpu"), on_dask(root, 2, "cpu")]
        if args.gpu and torch.cuda.is_available():
            rows += [in_process(root, "cuda"), on_dask(root, 1, "cuda")]
        base, one = rows[0], rows[1]
        n = base["slides"]
        overhead = {"vs_in_process_s_per_slide": (one["wall_s"] - base["wall_s"]) / n,
                    "vs_task_time_s_per_slide": (one["wall_s"] - one["task_seconds"]) / n,
                    "speedup_2_vs_1_workers": rows[1]["wall_s"] / rows[2]["wall_s"],
                    "masks_identical": _same_masks(root, "inproc-cpu", "dask2-cpu"),
                    "driver_peak_rss_mib": _rss_mib()}  # fmt: skip
        print(_table(rows))
        print(json.dumps(overhead, indent=1))
        if args.json:
            args.json.write_text(json.dumps({"rows": rows, "overhead": overhead, "args": vars(args)}, indent=1,
                                            default=str))  # fmt: skip
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
