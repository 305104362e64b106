"""Throughput of every registered model: forward and forward+backward images/s.

CPU: fp32 at batch 8 (a few iterations after warm-up). CUDA (when available): fp32, bf16 autocast,
bf16 + channels_last and bf16 + channels_last + torch.compile, at batch 24 and 64.

Usage:
    python benchmarks/bench_models.py --models dhunet dhunet_tiny [--out benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from wsiseg.models import create_model, get_entry, list_models


@dataclass(frozen=True)
class Setting:
    device: str
    batch: int
    bf16: bool = False
    channels_last: bool = False
    compile: bool = False

    @property
    def label(self) -> str:
        parts = ["bf16" if self.bf16 else "fp32"]
        parts += ["channels_last"] * self.channels_last + ["compile"] * self.compile
        return "+".join(parts)


def settings(cpu_batch: int, gpu_batches: list[int], *, cpu: bool = True) -> list[Setting]:
    out = [Setting("cpu", cpu_batch)] if cpu else []
    if torch.cuda.is_available():
        for b in gpu_batches:
            out += [
                Setting("cuda", b),
                Setting("cuda", b, bf16=True),
                Setting("cuda", b, bf16=True, channels_last=True),
                Setting("cuda", b, bf16=True, channels_last=True, compile=True),
            ]
    return out


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


@contextlib.contextmanager
def _autocast(s: Setting) -> Iterator[None]:
    if s.bf16:
        with torch.autocast(device_type=s.device, dtype=torch.bfloat16):
            yield
    else:
        yield


def _loss(out: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    outs = out if isinstance(out, list) else [out]
    return sum(o.float().mean() for o in outs)  # type: ignore[return-value]


def _rate(step: Callable[[], None], s: Setting, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        step()
    _sync(s.device)
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    _sync(s.device)
    return s.batch * iters / (time.perf_counter() - t0)


def bench(name: str, s: Setting, size: int, warmup: int, iters: int) -> tuple[float, float]:
    """Return (forward img/s, forward+backward img/s) for one model and setting."""
    gen = torch.Generator().manual_seed(0)
    model: nn.Module = create_model(name, pretrained=False).to(s.device)
    x = torch.randn(s.batch, 3, size, size, generator=gen).to(s.device)
    if s.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    run: nn.Module = torch.compile(model) if s.compile else model  # type: ignore[assignment]

    def fwd() -> None:
        with torch.no_grad(), _autocast(s):
            run(x)

    def fwd_bwd() -> None:
        with _autocast(s):
            loss = _loss(run(x))
        loss.backward()
        model.zero_grad(set_to_none=True)

    model.eval()
    f = _rate(fwd, s, warmup, iters)
    model.train()
    fb = _rate(fwd_bwd, s, warmup, iters)
    return f, fb


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", help="Registry names (default: every model, tiny included).")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--cpu-batch", type=int, default=8)
    ap.add_argument("--gpu-batches", type=int, nargs="*", default=[24, 64])
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--cpu-only", action="store_true", help="Skip CUDA even when available.")
    ap.add_argument("--gpu-only", action="store_true", help="Only the CUDA rows (gpu_suite.sh).")
    ap.add_argument("--out", type=Path, help="Append the markdown table to this file.")
    args = ap.parse_args()
    names = args.models or list_models()
    plan = settings(args.cpu_batch, [] if args.cpu_only else args.gpu_batches, cpu=not args.gpu_only)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"
    lines = [
        f"### bench_models: {size_note(args.size)}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} CPU threads, {device}",
        "",
        "| model | device | batch | precision | fwd img/s | fwd+bwd img/s |",
        "|---|---|---:|---|---:|---:|",
    ]
    for name in names:
        size = get_entry(name).input_size(args.size)  # tiny Swin/ViT variants take only their own size
        label = name if size == args.size else f"{name} (at {size} px)"
        for s in plan:
            try:
                f, fb = bench(name, s, size, args.warmup, args.iters)
                row = f"| {label} | {s.device} | {s.batch} | {s.label} | {f:.1f} | {fb:.1f} |"
            except Exception as err:  # a failing setting (e.g. OOM) must not stop the table
                row = f"| {label} | {s.device} | {s.batch} | {s.label} | failed: {type(err).__name__} | |"
            if s.device == "cuda":
                torch.cuda.empty_cache()
            print(row, flush=True)
            lines.append(row)
    table = "\n".join(lines) + "\n"
    print("\n" + table)
    if args.out:
        with args.out.open("a") as fh:
            fh.write("\n" + table)


def size_note(size: int) -> str:
    return f"{size}x{size} RGB, random init, training mode for fwd+bwd (deep supervision on)"


if __name__ == "__main__":
    main()
