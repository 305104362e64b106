from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from wsiseg.train.losses import DHUNET_OUTPUT_WEIGHTS, SegLoss, balanced_class_weights, dice_loss
from wsiseg.train.metrics import LabelRangeError

LN3 = math.log(3.0)


def _hand_logits() -> torch.Tensor:
    # class-0 logits 0; class-1 logits ln3, 0, -ln3, 0 -> p1 = 0.75, 0.5, 0.25, 0.5 (row-major 2x2)
    logits = torch.zeros(1, 2, 2, 2, dtype=torch.float64)
    logits[0, 1] = torch.tensor([[LN3, 0.0], [-LN3, 0.0]], dtype=torch.float64)
    return logits


def test_dice_loss_hand_example() -> None:
    target = torch.tensor([[[1, 1], [0, 1]]])
    # class 1: t = 1,1,0,1; Σpt = .75+.5+.5 = 1.75; Σp² = .5625+.25+.0625+.25 = 1.125; Σt² = 3
    #   dice = (3.5 + s) / (4.125 + s)
    # class 0: p0 = .25,.5,.75,.5, t = 0,0,1,0; Σpt = .75; Σp² = 1.125; Σt² = 1 -> (1.5 + s) / (2.125 + s)
    s = 1e-5
    expected = 1 - ((3.5 + s) / (4.125 + s) + (1.5 + s) / (2.125 + s)) / 2  # = 0.22281...
    loss = dice_loss(_hand_logits(), target, 2)
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    assert loss.item() == pytest.approx(0.2228164, abs=1e-6)


def test_dice_loss_sums_over_the_whole_batch() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, 5, generator=gen)
    target = torch.randint(0, 3, (2, 4, 5), generator=gen)
    batched = dice_loss(logits, target, 3)
    # the whole batch counts as one image: side by side along the width gives the same sums
    side_by_side = dice_loss(torch.cat([logits[0], logits[1]], dim=-1)[None], torch.cat([*target], -1)[None], 3)
    assert batched.item() == pytest.approx(side_by_side.item(), abs=1e-6)
    per_sample_mean = (dice_loss(logits[:1], target[:1], 3) + dice_loss(logits[1:], target[1:], 3)) / 2
    assert abs(batched.item() - per_sample_mean.item()) > 1e-4


def test_dice_loss_perfect_and_wrong_logits() -> None:
    gen = torch.Generator().manual_seed(1)
    target = torch.randint(0, 4, (2, 8, 8), generator=gen)
    target[0, 0, :4] = torch.arange(4)  # every class present
    perfect = 100.0 * F.one_hot(target, 4).movedim(-1, 1).float()
    wrong = 100.0 * F.one_hot((target + 1) % 4, 4).movedim(-1, 1).float()
    assert dice_loss(perfect, target, 4).item() < 1e-6
    assert dice_loss(wrong, target, 4).item() > 0.99


def test_dice_loss_gradient_flows() -> None:
    logits = _hand_logits().requires_grad_(True)
    dice_loss(logits, torch.tensor([[[1, 1], [0, 1]]]), 2).backward()
    assert logits.grad is not None
    assert torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum().item() > 1e-3


def test_dice_loss_ignore_index_ignores_those_pixels() -> None:
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(1, 3, 4, 4, generator=gen)
    target = torch.randint(0, 3, (1, 4, 4), generator=gen)
    target[0, 0] = 255
    changed = logits.clone()
    changed[0, :, 0] = torch.randn(3, 4, generator=gen) * 10
    a = dice_loss(logits, target, 3, ignore_index=255)
    b = dice_loss(changed, target, 3, ignore_index=255)
    c = dice_loss(logits[:, :, 1:], target[:, 1:], 3)
    assert a.item() == pytest.approx(b.item(), abs=1e-6)
    assert a.item() == pytest.approx(c.item(), abs=1e-6)


def test_segloss_single_tensor_and_components() -> None:
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 4, 6, 6, generator=gen)
    target = torch.randint(0, 4, (2, 6, 6), generator=gen)
    loss_fn = SegLoss(4)
    total = loss_fn(logits, target)
    ce = F.cross_entropy(logits, target)
    dice = dice_loss(logits, target, 4)
    assert total.item() == pytest.approx(0.5 * ce.item() + 0.5 * dice.item(), abs=1e-6)
    assert loss_fn.last_components == pytest.approx({"loss": total.item(), "ce": ce.item(), "dice": dice.item()})
    weighted = SegLoss(4, ce_weight=1.0, dice_weight=0.0)(logits, target)
    assert weighted.item() == pytest.approx(ce.item(), abs=1e-6)


def test_segloss_class_weights_weight_the_ce_term() -> None:
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 4, 6, 6, generator=gen)
    target = torch.randint(0, 4, (2, 6, 6), generator=gen)
    weights = [1.0, 0.5, 2.0, 4.0]
    total = SegLoss(4, ce_weight=1.0, dice_weight=0.0, class_weights=weights)(logits, target)
    # by hand: sum_i w[y_i] * nll_i / sum_i w[y_i]
    nll = -torch.log_softmax(logits, dim=1).gather(1, target.unsqueeze(1)).squeeze(1)
    w = torch.tensor(weights)[target]
    assert total.item() == pytest.approx(float((w * nll).sum() / w.sum()), abs=1e-6)
    assert total.item() != pytest.approx(F.cross_entropy(logits, target).item(), abs=1e-3)
    with pytest.raises(ValueError, match="4 positive weights"):
        SegLoss(4, class_weights=[1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="4 positive weights"):
        SegLoss(4, class_weights=[1.0, 0.0, 1.0, 1.0])


def test_balanced_class_weights_median_frequency() -> None:
    # fractions 0.1, 0.2, 0.6, 0.1 (sorted 0.1, 0.1, 0.2, 0.6; median 0.15): w = 0.15 / f
    assert balanced_class_weights([100, 200, 600, 100]) == pytest.approx([1.5, 0.75, 0.25, 1.5])
    # an absent class gets 1; weights clip at max_weight and 1/max_weight
    assert balanced_class_weights([0, 10, 10, 10]) == pytest.approx([1.0, 1.0, 1.0, 1.0])
    assert balanced_class_weights([1, 1000, 1000], max_weight=10.0) == pytest.approx([10.0, 1.0, 1.0])
    assert balanced_class_weights([1, 1, 10_000], max_weight=4.0)[2] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="no training pixels"):
        balanced_class_weights([0, 0])


def test_segloss_deep_supervision_weights() -> None:
    gen = torch.Generator().manual_seed(4)
    outputs = [torch.randn(2, 3, 5, 5, generator=gen).requires_grad_(True) for _ in range(5)]
    target = torch.randint(0, 3, (2, 5, 5), generator=gen)
    loss_fn = SegLoss(3, output_weights=DHUNET_OUTPUT_WEIGHTS)
    total = loss_fn(outputs, target)

    def single(x: torch.Tensor) -> float:
        return 0.5 * F.cross_entropy(x, target).item() + 0.5 * dice_loss(x, target, 3).item()

    manual = 0.5 * single(outputs[0]) + 0.3 * single(outputs[2]) + 0.2 * single(outputs[4])
    assert total.item() == pytest.approx(manual, abs=1e-6)
    total.backward()
    assert [o.grad is not None for o in outputs] == [True, False, True, False, True]
    comps = loss_fn.last_components
    assert set(comps) == {"loss", "ce", "dice", "ce/0", "dice/0", "ce/2", "dice/2", "ce/4", "dice/4"}
    assert comps["dice/2"] == pytest.approx(dice_loss(outputs[2], target, 3).item(), abs=1e-6)
    assert comps["ce"] == pytest.approx(0.5 * comps["ce/0"] + 0.3 * comps["ce/2"] + 0.2 * comps["ce/4"])
    # a list without weights trains output 0 only
    only_first = SegLoss(3)(outputs, target)
    assert only_first.item() == pytest.approx(single(outputs[0]), abs=1e-6)


def test_segloss_ignore_index() -> None:
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(1, 3, 4, 4, generator=gen)
    target = torch.randint(0, 3, (1, 4, 4), generator=gen)
    target[0, :, 0] = 255
    total = SegLoss(3, ignore_index=255)(logits, target)
    ref = 0.5 * F.cross_entropy(logits[..., 1:], target[..., 1:]) + 0.5 * dice_loss(logits[..., 1:], target[..., 1:], 3)
    assert total.item() == pytest.approx(ref.item(), abs=1e-6)


def test_errors() -> None:
    logits = torch.zeros(1, 3, 2, 2)
    target = torch.tensor([[[0, 3], [1, 7]]])
    with pytest.raises(LabelRangeError, match=r"3, 7 outside \[0, 3\)"):
        SegLoss(3)(logits, target)
    with pytest.raises(LabelRangeError, match="255"):
        dice_loss(logits, torch.tensor([[[0, 255], [1, 1]]]), 3)
    with pytest.raises(ValueError, match="channels"):
        dice_loss(logits, torch.zeros(1, 2, 2, dtype=torch.long), 4)
    with pytest.raises(ValueError, match="does not fit"):
        SegLoss(3)(logits, torch.zeros(1, 3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"indices \[4\]"):
        SegLoss(3, output_weights={0: 0.5, 4: 0.5})([logits, logits], torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="output_weights"):
        SegLoss(3, output_weights={0: -1.0})
