"""One local-training loop and one evaluation loop, shared by ``train`` and every federated client.

SGD with momentum 0.9 and weight decay 1e-4, poly learning-rate decay (power 0.9) set before each step,
loss 0.5 CE + 0.5 Dice with DHUnet's deep-supervision weights, bf16 autocast and channels_last on CUDA.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from wsiseg.train.losses import SegLoss
from wsiseg.train.report import MetricAccumulator, MetricReport

__all__ = [
    "OptimConfig",
    "StepStats",
    "autocast_factory",
    "evaluate",
    "make_loss",
    "make_optimizer",
    "poly_lr",
    "train_steps",
]


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer settings of the official code (SGD, poly decay)."""

    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 0.9


def poly_lr(base_lr: float, step: int, total_steps: int, power: float = 0.9) -> float:
    """Poly decay ``base * (1 - step / total) ** power``, floored at 0.

    >>> round(poly_lr(0.01, 50, 100), 6)
    0.005359
    """
    if total_steps <= 0:
        return base_lr
    return base_lr * max(0.0, 1.0 - step / total_steps) ** power


def make_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.SGD:
    """SGD over the trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def make_loss(
    model: nn.Module,
    num_classes: int,
    *,
    ce_weight: float = 0.5,
    dice_weight: float = 0.5,
    class_weights: Sequence[float] | None = None,
) -> SegLoss:
    """The CE + Dice loss with the model's deep-supervision weights when it has them."""
    weights = getattr(model, "deep_supervision_weights", None)
    return SegLoss(num_classes, ce_weight=ce_weight, dice_weight=dice_weight, output_weights=weights,
                   class_weights=class_weights)  # fmt: skip


@dataclass
class StepStats:
    """What a run of steps did."""

    steps: int = 0
    images: int = 0
    loss_sum: float = 0.0
    components: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def loss(self) -> float:
        """Mean loss per step."""
        return self.loss_sum / max(1, self.steps)

    @property
    def images_per_s(self) -> float:
        """Throughput including data loading."""
        return self.images / self.seconds if self.seconds > 0 else 0.0


def _autocast(device: str, amp: bool) -> Any:
    if amp and device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def autocast_factory(device: str, amp: bool) -> Callable[[], Any] | None:
    """A factory of the training autocast context (bf16 on CUDA), or None where there is none."""
    if amp and device.startswith("cuda"):
        return lambda: _autocast(device, amp)
    return None


def _to_device(batch: dict[str, Any], device: str, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    image = batch["image"].to(device, non_blocking=True)
    if channels_last and device.startswith("cuda"):
        image = image.contiguous(memory_format=torch.channels_last)
    return image, batch["mask"].to(device, non_blocking=True)


def train_steps(
    model: nn.Module,
    batches: Iterator[dict[str, Any]],
    optimizer: torch.optim.Optimizer,
    loss_fn: SegLoss,
    *,
    lr_at: Callable[[int], float],
    first_step: int,
    max_steps: int | None = None,
    device: str = "cpu",
    amp: bool = True,
    channels_last: bool = True,
    on_step: Callable[[int, float, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> StepStats:
    """Train on batches until the iterator ends or ``max_steps`` steps are done.

    Args:
        model: The model (moved to ``device`` by the caller).
        batches: Iterator of dataset batches (``image``, ``mask``).
        optimizer: Its param groups get ``lr_at(step)`` before every step.
        loss_fn: The loss.
        lr_at: Learning rate for a global step number.
        first_step: Global step number of the first step here.
        max_steps: Stop after this many steps (None: until the iterator ends).
        device: Torch device string.
        amp: bf16 autocast on CUDA.
        channels_last: channels_last inputs on CUDA.
        on_step: Called with ``(global step, loss, batch size)`` after each step.
        should_stop: Checked before each step; True ends the run of steps there (a wall-clock budget).

    Returns:
        Counts, mean loss and throughput.
    """
    model.train()
    stats = StepStats()
    start = time.perf_counter()
    for batch in batches:
        if (max_steps is not None and stats.steps >= max_steps) or (should_stop is not None and should_stop()):
            break
        image, mask = _to_device(batch, device, channels_last)
        lr = lr_at(first_step + stats.steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with _autocast(device, amp):
            raw = model(image)
        outputs = [o.float() for o in raw] if isinstance(raw, list | tuple) else raw.float()
        loss = loss_fn(outputs, mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        value = float(loss.detach())
        stats.steps += 1
        stats.images += image.shape[0]
        stats.loss_sum += value
        for key, val in loss_fn.last_components.items():
            stats.components[key] = stats.components.get(key, 0.0) + val
        if on_step:
            on_step(first_step + stats.steps, value, image.shape[0])
    stats.components = {k: v / max(1, stats.steps) for k, v in stats.components.items()}
    stats.seconds = time.perf_counter() - start
    return stats


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader[Any],
    class_names: list[str],
    *,
    device: str = "cpu",
    amp: bool = True,
    channels_last: bool = True,
) -> MetricReport:
    """Run the model over a tile loader and compute the paper's metrics per slide, then aggregated."""
    model.eval()
    acc = MetricAccumulator(len(class_names), class_names)
    for batch in loader:
        image, mask = _to_device(batch, device, channels_last)
        with _autocast(device, amp):
            logits = model(image)
        if isinstance(logits, list | tuple):
            logits = logits[0]
        pred = logits.float().argmax(1).cpu().numpy()
        target = mask.cpu().numpy()
        for i, slide in enumerate(batch["slide"]):
            acc.update(pred[i], target[i], str(slide))
    return acc.compute()
