"""DP-SGD throughput (``--dp sample``) against non-private training at the same batch, in one process.

For each model, on in-memory random tiles of the model's size with random masks (compute only, no loader):

- **non-private**: one ``train_steps`` step (forward, CE+Dice, backward, SGD) on a batch of ``--batch``;
- **DP-SGD**: one :func:`wsiseg.privacy.dpsgd.dp_sgd_steps` step over tile units with rate 1 (so exactly
  ``--batch`` examples): per-example gradients with ``torch.func`` in chunks of ``--physical-batch``, per-unit
  clipping, Gaussian noise from an explicit generator, SGD.

The two are interleaved (``--repeats`` rounds of one step each after a warm-up) and the ratio is taken from
the same run, since these machines are noisy. Peak memory: CUDA ``max_memory_allocated`` per mode, or the
process's peak RSS on CPU (one number for the process). Target (issue 13): DHUnet DP-SGD at batch 24 within
3x of non-private img/s on a GPU.

Usage::

    .venv/bin/python benchmarks/bench_dpsgd.py                                   # CPU: dhunet_tiny, dhunet
    .venv/bin/python benchmarks/bench_dpsgd.py --models dhunet_tiny --batch 8
    .venv/bin/python benchmarks/bench_dpsgd.py --gpu --batch 24 --physical-batch 8 --out RESULTS.md
"""

from __future__ import annotations

import argparse
import itertools
import platform
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from wsiseg.models import create_model
from wsiseg.models._registry import get_entry
from wsiseg.privacy.dpsgd import DpSgdConfig, dp_sgd_steps
from wsiseg.train.loop import autocast_factory, make_loss, train_steps


def _size(name: str) -> int:
    """64 px for tiny variants (as in the tests), 224 px for full models, or the size a model is fixed to."""
    entry = get_entry(name)
    return entry.input_size(64 if entry.meta.get("tiny") else 224)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench(name: str, batch: int, physical: int, device: str, repeats: int) -> dict[str, float | str]:
    """Seconds per step of both modes, interleaved; img/s, ratio and peak memory."""
    size = _size(name)
    args = {"img_size": size} if name.startswith("dhunet") else {}
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, norm="groupnorm", **args).to(device)
    loss_fn = make_loss(model, 3)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, size, size, generator=gen).to(device)
    y = torch.randint(0, 3, (batch, size, size), generator=gen).to(device)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    cfg = DpSgdConfig(clip=1.0, noise_multiplier=1.0, unit="tile", physical_batch=physical)
    groups = [[i] for i in range(batch)]
    rng = np.random.default_rng(0)
    amp = device.startswith("cuda")

    def load(idx: object) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.as_tensor(list(idx), device=device)  # type: ignore[call-overload]
        return x[ids], y[ids]

    def private() -> None:
        dp_sgd_steps(model, load, groups, cfg, opt, loss_fn, rate=1.0, steps=1, lr_at=lambda _s: 1e-3,
                     first_step=0, noise_rng=rng, data_rng=rng, device=device,
                     autocast=autocast_factory(device, amp))  # fmt: skip

    def plain() -> None:
        train_steps(model, itertools.repeat({"image": x, "mask": y}), opt, loss_fn, lr_at=lambda _s: 1e-3,
                    first_step=0, max_steps=1, device=device, amp=amp)  # fmt: skip

    times: dict[str, list[float]] = {"plain": [], "dp": []}
    peak: dict[str, float] = {}
    for mode, fn in (("plain", plain), ("dp", private)):  # warm-up, and peak memory per mode on CUDA
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        fn()
        _sync(device)
        if device.startswith("cuda"):
            peak[mode] = torch.cuda.max_memory_allocated() / 2**20
    for _ in range(repeats):
        for mode, fn in (("plain", plain), ("dp", private)):
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[mode].append(time.perf_counter() - t0)
    plain_s, dp_s = statistics.median(times["plain"]), statistics.median(times["dp"])
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "model": name, "size": size, "batch": batch, "physical": physical, "device": device,
        "plain_img_s": batch / plain_s, "dp_img_s": batch / dp_s, "slowdown": dp_s / plain_s,
        "peak_plain_mib": peak.get("plain", float("nan")), "peak_dp_mib": peak.get("dp", float("nan")),
        "rss_mib": rss,
    }  # fmt: skip


def main() -> None:
    """Run the benchmark and print (or append) a markdown table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["dhunet_tiny", "dhunet"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--physical-batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--gpu", action="store_true", help="Run on CUDA (fails when there is none).")
    p.add_argument("--out", type=Path, help="Append the table to this markdown file.")
    a = p.parse_args()
    device = "cuda" if a.gpu else "cpu"
    if a.gpu and not torch.cuda.is_available():
        raise SystemExit("bench_dpsgd: --gpu but torch sees no CUDA device")
    rows = [bench(m, a.batch, a.physical_batch, device, a.repeats) for m in a.models]
    where = torch.cuda.get_device_name() if a.gpu else f"{platform.processor() or platform.machine()} CPU"
    lines = [
        f"### bench_dpsgd: DP-SGD vs non-private step, {where}, {torch.get_num_threads()} threads, "
        f"batch {a.batch}, physical batch {a.physical_batch}, median of {a.repeats} interleaved steps",
        "",
        "| model | px | non-private img/s | DP-SGD img/s | DP-SGD / non-private time | peak MiB (plain / DP, CUDA) "
        "| peak RSS MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['size']} | {r['plain_img_s']:.2f} | {r['dp_img_s']:.2f} | "
                     f"{r['slowdown']:.2f}x | {r['peak_plain_mib']:.0f} / {r['peak_dp_mib']:.0f} | "
                     f"{r['rss_mib']:.0f} |")  # fmt: skip
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        with a.out.open("a", encoding="utf-8") as fh:
            fh.write("\n" + text)


if __name__ == "__main__":
    main()
