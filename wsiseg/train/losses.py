"""Segmentation losses as in the DHUnet code: ``0.5 * CE + 0.5 * Dice``, with deep-supervision weights.

The Dice term follows the official ``utils.DiceLoss``: softmax over classes, one-hot over **all** classes
(background included), per class ``1 - (2 Σ p t + s) / (Σ p² + Σ t² + s)`` with ``s = 1e-5`` summed over the
whole batch, then averaged over classes. CE is ``nn.CrossEntropyLoss`` without ignore index or class weights
by default; :func:`balanced_class_weights` gives median-frequency weights for the CE term when classes are rare
(a class in a few patches of a patch dataset).
DHUnet trains its outputs ``[final, aux3, aux2, aux1, aux0]`` with weights ``{0: 0.5, 2: 0.3, 4: 0.2}``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from wsiseg.train.metrics import LabelRangeError

__all__ = ["DHUNET_OUTPUT_WEIGHTS", "SegLoss", "balanced_class_weights", "check_target", "dice_loss"]

#: Deep-supervision weights of the official DHUnet trainer (output index -> weight).
DHUNET_OUTPUT_WEIGHTS: dict[int, float] = {0: 0.5, 2: 0.3, 4: 0.2}


def balanced_class_weights(class_pixels: Sequence[int], *, max_weight: float = 10.0) -> list[float]:
    """Median-frequency class weights (Eigen and Fergus, 2015) for the cross-entropy term.

    ``w_c = median(f) / f_c`` with ``f_c`` the fraction of training pixels of class ``c`` and the median taken
    over the classes that occur; a rare class weighs more, a common one less. Weights are clipped to
    ``[1 / max_weight, max_weight]``; a class with no training pixels gets weight 1 (it cannot be learnt
    from this data, and a huge weight would only amplify noise once it appears).

    Args:
        class_pixels: Training pixels per class id.
        max_weight: Largest weight (and inverse of the smallest).

    Returns:
        One weight per class.

    Raises:
        ValueError: If no class has pixels or ``max_weight < 1``.
    """
    if max_weight < 1:
        msg = f"max_weight must be >= 1, got {max_weight}"
        raise ValueError(msg)
    counts = [float(c) for c in class_pixels]
    total = sum(counts)
    present = sorted(c / total for c in counts if c > 0) if total > 0 else []
    if not present:
        msg = "no training pixels to weight the classes by"
        raise ValueError(msg)
    mid = len(present) // 2
    median = present[mid] if len(present) % 2 else 0.5 * (present[mid - 1] + present[mid])
    return [min(max_weight, max(1.0 / max_weight, median * total / c)) if c > 0 else 1.0 for c in counts]


def check_target(logits: torch.Tensor, target: torch.Tensor, *, ignore_index: int | None = None) -> None:
    """Check that ``target`` fits ``logits`` in shape and class range.

    Args:
        logits: ``(N, C, H, W)`` scores.
        target: ``(N, H, W)`` integer class ids.
        ignore_index: A target value allowed besides ``0..C-1``.

    Raises:
        ValueError: If the shapes do not match or the target is not an integer tensor.
        LabelRangeError: If the target holds class ids outside ``[0, C)`` (message names them).
    """
    if logits.ndim < 2 or target.shape != logits.shape[:1] + logits.shape[2:]:
        msg = f"target shape {tuple(target.shape)} does not fit logits {tuple(logits.shape)} (want N,H,W)"
        raise ValueError(msg)
    num_classes = logits.shape[1]
    if target.dtype.is_floating_point or target.dtype == torch.bool:
        msg = f"target must hold integer class ids, got {target.dtype}"
        raise ValueError(msg)
    bad = (target < 0) | (target >= num_classes)
    if ignore_index is not None:
        bad &= target != ignore_index
    if bool(bad.any()):
        values = torch.unique(target[bad]).tolist()
        shown = ", ".join(str(v) for v in values[:10]) + (", ..." if len(values) > 10 else "")
        msg = (
            f"target holds class ids {shown} outside [0, {num_classes}) of the model's {num_classes} "
            "outputs; remap the masks or build the model with more classes"
        )
        raise LabelRangeError(msg)


def dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    *,
    smooth: float = 1e-5,
    ignore_index: int | None = None,
) -> torch.Tensor:
    """Soft Dice loss exactly as the official DHUnet ``DiceLoss`` (with ``softmax=True``).

    Args:
        logits: ``(N, C, H, W)`` unnormalised scores.
        target: ``(N, H, W)`` class ids in ``[0, C)``.
        num_classes: ``C``; must equal ``logits.shape[1]``.
        smooth: Added to numerator and denominator of every class ratio.
        ignore_index: Target value whose pixels are left out of both sums (the official code has none).

    Returns:
        Scalar loss: mean over classes of ``1 - (2 Σ p t + s) / (Σ p² + Σ t² + s)``, sums over the batch.

    Raises:
        ValueError: If ``logits`` does not have ``num_classes`` channels or shapes do not match.
        LabelRangeError: If the target holds ids outside ``[0, C)``.
    """
    if logits.shape[1] != num_classes:
        msg = f"logits have {logits.shape[1]} channels but num_classes is {num_classes}"
        raise ValueError(msg)
    check_target(logits, target, ignore_index=ignore_index)
    return _dice_unchecked(logits, target, smooth=smooth, ignore_index=ignore_index)


def _dice_unchecked(
    logits: torch.Tensor, target: torch.Tensor, *, smooth: float, ignore_index: int | None
) -> torch.Tensor:
    num_classes = logits.shape[1]
    probs = torch.softmax(logits, dim=1)
    labels = target.long()
    # one-hot by comparison, not F.one_hot: no data-dependent size check, so it traces under vmap
    ids = torch.arange(num_classes, device=labels.device).view(1, num_classes, *([1] * (labels.ndim - 1)))
    onehot = (labels.unsqueeze(1) == ids).to(probs.dtype)
    if ignore_index is not None:
        valid = (labels != ignore_index).unsqueeze(1).to(probs.dtype)
        probs = probs * valid
        onehot = onehot * valid
    dims = [0, *range(2, probs.ndim)]
    intersect = (probs * onehot).sum(dim=dims)
    z_sum = (probs * probs).sum(dim=dims)
    y_sum = onehot.sum(dim=dims)  # one-hot squared is itself
    per_class = 1.0 - (2.0 * intersect + smooth) / (z_sum + y_sum + smooth)
    return per_class.mean()


class SegLoss(nn.Module):
    """Weighted cross-entropy plus Dice, over one output or a deep-supervision list of outputs.

    Args:
        num_classes: Number of classes ``C``.
        ce_weight: Weight of the cross-entropy term.
        dice_weight: Weight of the Dice term.
        output_weights: ``{output index: weight}`` for list outputs (DHUnet: :data:`DHUNET_OUTPUT_WEIGHTS`).
            Without it a list output is trained on index 0 only, with weight 1.
        ignore_index: Target value left out of both terms (default: none, as in the official code).
        smooth: Dice smoothing constant.
        class_weights: Per-class weights of the cross-entropy term (default: none, as in the official code).

    After each call, :attr:`last_components` holds floats ``ce``, ``dice`` (weighted over outputs), ``loss``
    and, for list outputs, ``ce/<i>`` and ``dice/<i>`` per used output, for logging.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        ce_weight: float = 0.5,
        dice_weight: float = 0.5,
        output_weights: Mapping[int, float] | None = None,
        ignore_index: int | None = None,
        smooth: float = 1e-5,
        class_weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            msg = f"num_classes must be >= 2, got {num_classes}"
            raise ValueError(msg)
        if output_weights is not None and (
            not output_weights or any(i < 0 for i in output_weights) or any(w < 0 for w in output_weights.values())
        ):
            msg = f"output_weights must map output indices >= 0 to weights >= 0, got {dict(output_weights)}"
            raise ValueError(msg)
        self.num_classes = num_classes
        self.ce_weight = ce_weight
        self.dice_weight = dice_weight
        self.output_weights = dict(output_weights) if output_weights is not None else None
        self.ignore_index = ignore_index
        self.smooth = smooth
        if class_weights is not None and (len(class_weights) != num_classes or min(class_weights) <= 0):
            msg = f"class_weights must hold {num_classes} positive weights, got {list(class_weights)}"
            raise ValueError(msg)
        self.class_weights: torch.Tensor | None
        self.register_buffer(
            "class_weights",
            None if class_weights is None else torch.tensor([float(w) for w in class_weights]),
            persistent=False,
        )
        self.last_components: dict[str, float] = {}

    def _single(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if logits.shape[1] != self.num_classes:
            msg = f"model output has {logits.shape[1]} channels but the loss expects {self.num_classes} classes"
            raise ValueError(msg)
        if logits.shape[:1] + logits.shape[2:] != target.shape:
            msg = f"target shape {tuple(target.shape)} does not fit output {tuple(logits.shape)} (want N,H,W)"
            raise ValueError(msg)
        ignore = -100 if self.ignore_index is None else self.ignore_index
        weight = None if self.class_weights is None else self.class_weights.to(logits.device, logits.dtype)
        ce = F.cross_entropy(logits, target.long(), weight=weight, ignore_index=ignore)
        dice = _dice_unchecked(logits, target, smooth=self.smooth, ignore_index=self.ignore_index)
        return ce, dice

    def forward(self, outputs: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """Return the total loss of ``outputs`` (a tensor or a list of ``(N, C, H, W)`` tensors)."""
        total, logged = self._terms(outputs, target, check=True)
        values = torch.stack([v.float() for v in logged.values()]).tolist()  # one device sync for all components
        self.last_components = dict(zip(logged, values, strict=True))
        return total

    def value(self, outputs: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """The total loss without target checks or logging: traceable under ``torch.func.vmap``.

        Per-example gradients (DP-SGD) call this on one example at a time; check the targets of the batch
        with :func:`check_target` first.
        """
        return self._terms(outputs, target, check=False)[0]

    def _terms(
        self, outputs: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor, *, check: bool
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if isinstance(outputs, torch.Tensor):
            weights, tensors = {0: 1.0}, [outputs]
        else:
            tensors = list(outputs)
            weights = self.output_weights if self.output_weights is not None else {0: 1.0}
            missing = [i for i in weights if i >= len(tensors)]
            if missing:
                msg = f"output_weights use indices {missing} but the model returned {len(tensors)} outputs"
                raise ValueError(msg)
        if check:
            check_target(tensors[next(iter(weights))], target, ignore_index=self.ignore_index)  # once per call
        total = ce_sum = dice_sum = torch.zeros((), device=tensors[0].device)
        per_output: dict[str, torch.Tensor] = {}
        for index, weight in weights.items():
            ce, dice = self._single(tensors[index], target)
            total = total + weight * (self.ce_weight * ce + self.dice_weight * dice)
            ce_sum = ce_sum + weight * ce.detach()
            dice_sum = dice_sum + weight * dice.detach()
            per_output[f"ce/{index}"], per_output[f"dice/{index}"] = ce.detach(), dice.detach()
        logged = {"loss": total.detach(), "ce": ce_sum, "dice": dice_sum}
        if not isinstance(outputs, torch.Tensor):
            logged.update(per_output)
        return total, logged
