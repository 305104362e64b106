"""Peak memory of ``wsiseg predict`` as users run it: default settings, loader workers on, a real tiny model.

A square Aperio-style slide is generated with ``wsiseg.testing.large.make_large_slide`` (repeated JPEG tiles,
``--tissue`` of the area in a few blobs, so a 100k x 100k slide takes seconds and about 1 GB); a ``dhunet_tiny``
checkpoint with the paper's tiling (1000 px windows, stride 500, 224 px) is written with initial weights (memory
does not depend on the weights). Then ``wsiseg predict SLIDE --checkpoint CKPT --out mask.tif`` runs under
``/usr/bin/time -v`` with no other flag, while this script polls ``VmHWM`` (peak RSS) of the command and of
every process below it (the DataLoader's reader workers) from ``/proc``. Target (issue 17): under 1 GiB per
process at 100k x 100k.

``--batches`` instead measures the model's forward pass alone at batch 1, 2, 4 and 16 with 1 and 2 torch
threads, interleaved in one process: windows per CPU-second (the numbers behind
the CPU defaults ``default_batch_size`` and ``cpu_threads``).

Usage::

    .venv/bin/python benchmarks/bench_predict_rss.py --size 100000 --tissue 0.04
    .venv/bin/python benchmarks/bench_predict_rss.py --batches
    .venv/bin/python benchmarks/bench_predict_rss.py --size 20000 --tissue 0.3 --out benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import re
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from wsiseg.classes import DEFAULT_CLASSES
from wsiseg.models import create_model
from wsiseg.testing.large import make_large_slide
from wsiseg.tiling.geometry import TilingConfig
from wsiseg.train.card import ModelCard, ModelSpec
from wsiseg.train.checkpoint import save_checkpoint


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def _hwm_mib(pid: int) -> float | None:
    try:
        found = re.search(r"VmHWM:\s+(\d+)", Path(f"/proc/{pid}/status").read_text())
    except OSError:
        return None
    return int(found.group(1)) / 1024 if found else None


def run_polled(cmd: list[str], log: Path, every: float = 0.2) -> tuple[int, dict[int, float], str]:
    """Run ``cmd`` (stderr to ``log``) and return ``(exit code, peak VmHWM MiB per pid, stderr)``."""
    with log.open("w", encoding="utf-8") as fh:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=fh, text=True)
        peaks: dict[int, float] = {}
        while proc.poll() is None:
            todo, seen = [proc.pid], []
            while todo:
                pid = todo.pop()
                seen.append(pid)
                todo += _children(pid)
            for pid in seen:
                hwm = _hwm_mib(pid)
                if hwm is not None:
                    peaks[pid] = max(peaks.get(pid, 0.0), hwm)
            time.sleep(every)
    return proc.returncode, peaks, log.read_text(encoding="utf-8", errors="replace")


def make_checkpoint(folder: Path, model: str) -> Path:
    """A ``model`` checkpoint with initial weights and the paper's tiling."""
    torch.manual_seed(0)
    net = create_model(model, pretrained=False)
    card = ModelCard(ModelSpec(model, {}), DEFAULT_CLASSES.to_list(), TilingConfig().to_dict())
    path = folder / model
    save_checkpoint(path, net, card)
    return path


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def batch_sweep(model: str, rounds: int = 2, windows: int = 32) -> list[str]:
    """Forward-pass rate (windows per CPU-s) per batch size and torch thread count."""
    net = create_model(model, pretrained=False).eval()
    rates: dict[tuple[int, int], list[float]] = {}
    with torch.no_grad():
        net(torch.rand(2, 3, 224, 224))
        for _ in range(rounds):
            for threads in (1, 2):
                torch.set_num_threads(threads)
                for batch in (1, 2, 4, 16):
                    calls = max(1, windows // batch)
                    c0 = _cpu_s()
                    for _ in range(calls):
                        net(torch.rand(batch, 3, 224, 224))
                    acc = rates.setdefault((threads, batch), [0.0, 0.0])
                    acc[0] += calls * batch
                    acc[1] += _cpu_s() - c0
    lines = [f"### forward pass alone ({model}, 224 px, CPU, interleaved, {rounds} rounds)", "",
             "| torch threads | batch | windows per CPU-s |", "|---:|---:|---:|"]  # fmt: skip
    lines += [f"| {t} | {b} | {n / c:.1f} |" for (t, b), (n, c) in sorted(rates.items())]
    return lines


def main() -> None:
    """Generate, predict under ``/usr/bin/time -v``, print (and append) the result."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=100_000, help="level-0 side of the generated slide")
    ap.add_argument("--tissue", type=float, default=0.04, help="tissue fraction of the slide")
    ap.add_argument("--model", default="dhunet_tiny")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "wsiseg-bench-rss")
    ap.add_argument("--keep", action="store_true", help="keep the generated slide")
    ap.add_argument("--out", type=Path, help="append the markdown lines to this file")
    ap.add_argument("--batches", action="store_true", help="measure the forward pass per batch size instead")
    args = ap.parse_args()
    if args.batches:
        text = "\n".join(batch_sweep(args.model))
        print(text, flush=True)
        if args.out:
            with args.out.open("a", encoding="utf-8") as fh:
                fh.write("\n" + text + "\n")
        return
    args.work.mkdir(parents=True, exist_ok=True)
    slide = args.work / f"large_{args.size}_t{args.tissue:g}.svs"
    make_large_slide(slide, width=args.size, height=args.size, seed=1, tissue=args.tissue)
    ckpt = make_checkpoint(args.work, args.model)
    mask = args.work / "mask.tif"
    wsiseg = str(Path(sys.executable).with_name("wsiseg"))
    cmd = [wsiseg, "predict", str(slide), "--checkpoint", str(ckpt), "--out", str(mask), "--overwrite"]
    try:
        code, peaks, err = run_polled(["/usr/bin/time", "-v", *cmd], args.work / "predict.log")
    finally:
        if not args.keep:
            slide.unlink(missing_ok=True)
    maxrss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", err)
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", err)
    procs = sorted(peaks.items())[1:]  # the first pid is /usr/bin/time itself
    main_hwm, workers = (procs[0][1], [h for _, h in procs[1:]]) if procs else (0.0, [])
    text = (
        f"`{shlex.join(['wsiseg', *cmd[1:]])}` ({args.size}x{args.size}, tissue {args.tissue:g}, {args.model}, "
        f"exit {code}, wall {wall.group(1) if wall else '?'}): `/usr/bin/time -v` maximum resident set size "
        f"**{int(maxrss.group(1)) / 1024 if maxrss else float('nan'):.0f} MiB**; VmHWM main process "
        f"{main_hwm:.0f} MiB, reader workers {', '.join(f'{h:.0f}' for h in workers) or 'none'} MiB"
    )
    print(text, flush=True)
    if code != 0:
        print(err[-3000:], file=sys.stderr)
    if args.out:
        with args.out.open("a", encoding="utf-8") as fh:
            fh.write("\n" + text + "\n")


if __name__ == "__main__":
    main()
