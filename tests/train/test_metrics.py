from __future__ import annotations

import json
import tracemalloc
import warnings

import numpy as np
import pytest
import torch
from torchmetrics.functional.classification import (
    binary_accuracy,
    binary_f1_score,
    binary_jaccard_index,
    multiclass_confusion_matrix,
    multiclass_jaccard_index,
    multiclass_precision,
    multiclass_recall,
)
from torchmetrics.functional.segmentation import dice_score

from wsiseg.errors import DataError
from wsiseg.train.metrics import (
    LabelRangeError,
    aggregate_paper_metrics,
    confusion_matrix,
    confusion_metrics,
    paper_metrics_from_confusion,
    paper_metrics_per_class,
)
from wsiseg.train.report import MetricAccumulator

# Hand example, 4 classes. Pixel pairs (target, pred) row-major:
# (0,0) (1,1) (1,2) (2,2) / (0,1) (1,1) (2,2) (2,2) / (0,0) (0,0) (2,3) (3,3)
HAND_TARGET = np.array([[0, 1, 1, 2], [0, 1, 2, 2], [0, 0, 2, 3]], dtype=np.uint8)
HAND_PRED = np.array([[0, 1, 2, 2], [1, 1, 2, 2], [0, 0, 3, 3]], dtype=np.uint8)
HAND_CM = np.array([[3, 1, 0, 0], [0, 2, 1, 0], [0, 0, 3, 1], [0, 0, 0, 1]])
# class 1: |G|=3 |P|=3 TP=2 FP=1 FN=1 TN=8 -> Dice 4/6, J 2/4, Acc 10/12
# class 2: |G|=4 |P|=4 TP=3 FP=1 FN=1 TN=7 -> Dice 6/8, J 3/5, Acc 10/12
# class 3: |G|=1 |P|=2 TP=1 FP=1 FN=0 TN=10 -> Dice 2/3, J 1/2, Acc 11/12
HAND_DICE = [4 / 6, 6 / 8, 2 / 3]
HAND_JAC = [2 / 4, 3 / 5, 1 / 2]
HAND_ACC = [10 / 12, 10 / 12, 11 / 12]


def test_confusion_matrix_hand_example() -> None:
    cm = confusion_matrix(HAND_PRED, HAND_TARGET, 4)
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, HAND_CM)


def test_paper_metrics_hand_example() -> None:
    m = paper_metrics_per_class(HAND_PRED, HAND_TARGET, 4)
    np.testing.assert_allclose(m["dice"], HAND_DICE)
    np.testing.assert_allclose(m["jaccard"], HAND_JAC)
    np.testing.assert_allclose(m["acc"], HAND_ACC)


def test_confusion_metrics_hand_example() -> None:
    m = confusion_metrics(HAND_CM)
    # background: |G|=4 |P|=3 TP=3 -> Dice 6/7, IoU 3/4, precision 1, recall 3/4
    np.testing.assert_allclose(m["dice"], [6 / 7, 4 / 6, 6 / 8, 2 / 3])
    np.testing.assert_allclose(m["iou"], [3 / 4, 2 / 4, 3 / 5, 1 / 2])
    np.testing.assert_allclose(m["precision"], [1, 2 / 3, 3 / 4, 1 / 2])
    np.testing.assert_allclose(m["recall"], [3 / 4, 2 / 3, 3 / 4, 1])
    np.testing.assert_array_equal(m["support"], [4, 3, 4, 1])
    assert m["pixel_accuracy"] == pytest.approx(9 / 12)
    assert m["mean_dice"] == pytest.approx((4 / 6 + 6 / 8 + 2 / 3) / 3)
    with_bg = confusion_metrics(HAND_CM, include_background=True)
    assert with_bg["mean_dice"] == pytest.approx((6 / 7 + 4 / 6 + 6 / 8 + 2 / 3) / 4)


def test_confusion_metrics_absent_classes_are_nan_and_excluded() -> None:
    # class 1 absent everywhere; class 2 predicted once but absent from the target
    cm = np.array([[2, 0, 1], [0, 0, 0], [0, 0, 0]])
    m = confusion_metrics(cm)
    assert np.isnan(m["dice"][1])
    assert np.isnan(m["iou"][1])
    assert np.isnan(m["recall"][1])
    assert m["dice"][2] == 0
    assert m["precision"][2] == 0
    assert np.isnan(m["recall"][2])
    assert m["mean_dice"] == 0.0  # nanmean over classes 1..2 -> only class 2
    assert np.isnan(m["mean_recall"])


def test_paper_special_cases() -> None:
    # class 1: P, G empty -> 1; class 2: P empty, G not -> 0; class 3: P not, G empty -> NaN
    # class 4: G = {2, 3}, P = {2, 5}, TP=1 FP=1 FN=1 TN=3 -> Dice 1/2, J 1/3, Acc 4/6
    target = np.array([[0, 2, 4], [4, 0, 0]])
    pred = np.array([[0, 0, 4], [3, 0, 4]])
    m = paper_metrics_per_class(pred, target, 5)
    np.testing.assert_allclose(m["dice"], [1, 0, np.nan, 1 / 2])
    np.testing.assert_allclose(m["jaccard"], [1, 0, np.nan, 1 / 3])
    np.testing.assert_allclose(m["acc"], [1, 0, np.nan, 4 / 6])
    patch = paper_metrics_from_confusion(confusion_matrix(pred, target, 5), nan_if_target_empty=True)
    np.testing.assert_allclose(patch["dice"], [np.nan, 0, np.nan, 1 / 2])


def test_out_of_range_labels_raise_with_values() -> None:
    target = np.array([[0, 7], [255, 1]], dtype=np.uint8)
    pred = np.zeros_like(target)
    with pytest.raises(LabelRangeError, match=r"7, 255") as info:
        confusion_matrix(pred, target, 4)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, DataError)
    with pytest.raises(LabelRangeError, match="-1"):
        confusion_matrix(np.array([0, -1]), np.array([0, 1]), 4)
    # ignore_index drops 255 only; 7 still fails
    with pytest.raises(LabelRangeError, match="7"):
        confusion_matrix(pred, target, 4, ignore_index=255)
    target[0, 1] = 2
    np.testing.assert_array_equal(confusion_matrix(pred, target, 4, ignore_index=255).sum(axis=0), [3, 0, 0, 0])


def test_bad_inputs() -> None:
    with pytest.raises(TypeError, match="integer"):
        confusion_matrix(np.zeros((2, 2), np.float32), np.zeros((2, 2), np.int64), 2)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(np.zeros((2, 2), np.int64), np.zeros((2, 3), np.int64), 2)


def test_torch_and_bool_inputs_match_numpy() -> None:
    cm = confusion_matrix(torch.from_numpy(HAND_PRED).long(), torch.from_numpy(HAND_TARGET), 4)
    np.testing.assert_array_equal(cm, HAND_CM)
    bool_cm = confusion_matrix(HAND_PRED == 1, HAND_TARGET == 1, 2)
    np.testing.assert_array_equal(bool_cm, [[8, 1], [1, 2]])


@pytest.mark.parametrize("chunk", [1, 7, 64, 10**6])
def test_chunking_gives_identical_results(chunk: int) -> None:
    rng = np.random.default_rng(3)
    target = rng.integers(0, 5, (37, 53), dtype=np.uint8)
    pred = rng.integers(0, 5, (37, 53), dtype=np.uint8)
    ref = np.zeros((5, 5), np.int64)
    np.add.at(ref, (target.ravel(), pred.ravel()), 1)
    np.testing.assert_array_equal(confusion_matrix(pred, target, 5, chunk_pixels=chunk), ref)
    # non-contiguous views take the row-block path
    np.testing.assert_array_equal(confusion_matrix(pred.T, target.T, 5, chunk_pixels=chunk), ref)
    np.testing.assert_array_equal(
        confusion_matrix(pred[:, ::2], target[:, ::2], 5, chunk_pixels=chunk),
        confusion_matrix(pred[:, ::2].copy(), target[:, ::2].copy(), 5),
    )


def test_aggregate_with_nan_and_no_warnings() -> None:
    slides = [
        {"dice": [1.0, np.nan, 0.5], "jaccard": [1.0, np.nan, 1 / 3], "acc": [1.0, np.nan, 0.9]},
        {"dice": [0.0, np.nan, np.nan], "jaccard": [0.0, np.nan, np.nan], "acc": [0.0, np.nan, np.nan]},
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        agg = aggregate_paper_metrics(slides)
        all_nan = aggregate_paper_metrics([{"dice": [np.nan], "jaccard": [np.nan], "acc": [np.nan]}])
    np.testing.assert_allclose(agg["per_class"]["dice"], [0.5, np.nan, 0.5])
    assert agg["dice"] == pytest.approx(0.5)
    assert agg["jaccard"] == pytest.approx((0.5 + 1 / 3) / 2)
    assert agg["acc"] == pytest.approx((0.5 + 0.9) / 2)
    assert agg["num_slides"] == 2
    assert np.isnan(all_nan["dice"])
    with pytest.raises(ValueError, match="no per-slide"):
        aggregate_paper_metrics([])
    with pytest.raises(ValueError, match="differ in length"):
        aggregate_paper_metrics([slides[0], {"dice": [1.0], "jaccard": [1.0], "acc": [1.0]}])


def test_against_torchmetrics_on_random_masks() -> None:
    # torchmetrics 1.9: binary_f1_score / binary_jaccard_index / binary_accuracy per class one-vs-rest
    # for the paper metrics; segmentation.dice_score, multiclass_jaccard_index/precision/recall and
    # multiclass_confusion_matrix (average="none") for the confusion-matrix metrics.
    rng = np.random.default_rng(11)
    target = rng.integers(0, 4, (48, 40))
    pred = np.where(rng.random((48, 40)) < 0.6, target, rng.integers(0, 4, (48, 40)))
    p_t, t_t = torch.from_numpy(pred), torch.from_numpy(target)
    cm = confusion_matrix(pred, target, 4)
    np.testing.assert_array_equal(cm, multiclass_confusion_matrix(p_t.ravel(), t_t.ravel(), 4).numpy())
    paper = paper_metrics_from_confusion(cm)
    for c in range(1, 4):
        pc, tc = (p_t == c).long(), (t_t == c).long()
        assert paper["dice"][c - 1] == pytest.approx(binary_f1_score(pc, tc).item(), abs=1e-6)
        assert paper["jaccard"][c - 1] == pytest.approx(binary_jaccard_index(pc, tc).item(), abs=1e-6)
        assert paper["acc"][c - 1] == pytest.approx(binary_accuracy(pc, tc).item(), abs=1e-6)
    plain = confusion_metrics(cm)
    tm_dice = dice_score(p_t[None], t_t[None], 4, average="none", input_format="index")[0]
    np.testing.assert_allclose(plain["dice"], tm_dice.numpy(), atol=1e-6)
    for key, fn in (("iou", multiclass_jaccard_index), ("precision", multiclass_precision)):
        np.testing.assert_allclose(plain[key], fn(p_t, t_t, 4, average="none").numpy(), atol=1e-6)
    np.testing.assert_allclose(plain["recall"], multiclass_recall(p_t, t_t, 4, average="none").numpy(), atol=1e-6)


def test_property_dice_jaccard_relation() -> None:
    rng = np.random.default_rng(2024)
    for _ in range(200):
        c = int(rng.integers(2, 7))
        probs = rng.dirichlet(np.full(c, 0.3))  # skewed, so classes are often absent
        shape = (int(rng.integers(1, 9)), int(rng.integers(1, 9)))
        target = rng.choice(c, size=shape, p=probs)
        pred = np.where(rng.random(shape) < rng.random(), target, rng.choice(c, size=shape, p=probs))
        m = paper_metrics_per_class(pred, target, c)
        nan = np.isnan(m["dice"])
        np.testing.assert_array_equal(nan, np.isnan(m["jaccard"]))
        np.testing.assert_array_equal(nan, np.isnan(m["acc"]))
        d, j = m["dice"][~nan], m["jaccard"][~nan]
        assert np.all(d >= j - 1e-12)
        assert np.all((d >= 0) & (d <= 1) & (m["acc"][~nan] >= 0) & (m["acc"][~nan] <= 1))
        np.testing.assert_allclose(2 * j / (1 + j), d, atol=1e-12)


def test_accumulator_report() -> None:
    # slide b: target [[1,1],[0,0]], pred [[1,0],[0,3]]; class 1: G=2 P=1 TP=1 -> Dice 2/3, J 1/2, Acc 3/4;
    # class 2 both empty -> 1; class 3 P only -> NaN
    acc = MetricAccumulator(4)
    acc.update(HAND_PRED[:2], HAND_TARGET[:2], "a")  # the hand slide, added in two parts
    acc.update(HAND_PRED[2:], HAND_TARGET[2:], "a")
    acc.update(np.array([[1, 0], [0, 3]]), np.array([[1, 1], [0, 0]]), "b")
    report = acc.compute()
    np.testing.assert_allclose(report.per_slide["a"]["dice"], HAND_DICE)
    np.testing.assert_allclose(report.paper_per_class["dice"], [2 / 3, (0.75 + 1) / 2, 2 / 3])
    assert report.paper["dice"] == pytest.approx((2 / 3 + 0.875 + 2 / 3) / 3)
    assert report.paper["jaccard"] == pytest.approx((0.5 + 0.8 + 0.5) / 3)
    assert report.paper["acc"] == pytest.approx(((10 / 12 + 3 / 4) / 2 + (10 / 12 + 1) / 2 + 11 / 12) / 3)
    np.testing.assert_array_equal(report.confusion, [[4, 1, 0, 1], [1, 3, 1, 0], [0, 0, 3, 1], [0, 0, 0, 1]])
    assert (report.num_slides, report.num_pixels) == (2, 16)
    assert report.confusion_metrics["pixel_accuracy"] == pytest.approx(11 / 16)
    assert report.class_names == ("background", "tumor", "stroma", "normal")

    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data["paper"]["per_class"]["tumor"]["dice"] == pytest.approx(2 / 3)
    assert data["per_slide"]["b"]["normal"]["dice"] is None
    assert data["confusion"]["support"]["background"] == 6

    rows = report.to_rows()
    assert [r["class"] for r in rows] == ["background", "tumor", "stroma", "normal", "mean"]
    assert np.isnan(rows[0]["paper_dice"])
    assert rows[2]["paper_dice"] == pytest.approx(0.875)
    assert rows[-1]["paper_dice"] == pytest.approx(report.paper["dice"])
    assert rows[-1]["support"] == 16
    assert len({tuple(r) for r in rows}) == 1


def test_accumulator_merge_reset_and_errors() -> None:
    a, b = MetricAccumulator(4, ["bg", "x", "y", "z"]), MetricAccumulator(4, ["bg", "x", "y", "z"])
    a.update(HAND_PRED, HAND_TARGET, "s1")
    b.update(HAND_PRED, HAND_TARGET, "s1")
    b.update(HAND_PRED, HAND_TARGET, "s2")
    a.merge(b)
    cms = a.slide_confusions
    np.testing.assert_array_equal(cms["s1"], 2 * HAND_CM)
    np.testing.assert_array_equal(cms["s2"], HAND_CM)
    a.reset()
    with pytest.raises(ValueError, match="no slides"):
        a.compute()
    with pytest.raises(ValueError, match="one name per class"):
        MetricAccumulator(3, ["a", "b"])
    with pytest.raises(ValueError, match="does not match"):
        a.add_confusion(np.zeros((3, 3), np.int64), "s")
    assert MetricAccumulator(3).class_names == ("class_0", "class_1", "class_2")


def test_chunking_bounds_memory() -> None:
    # 4000 x 4000 = 16 Mi px: an unchunked int64 index alone would take 128 MiB
    rng = np.random.default_rng(5)
    target = rng.integers(0, 4, (4000, 4000), dtype=np.uint8)
    pred = target.copy()
    pred[::3] = 1
    tracemalloc.start()
    try:
        cm = confusion_matrix(pred, target, 4, chunk_pixels=1 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 40 * 2**20
    assert cm.sum() == 16_000_000
    assert cm[1, 1] == np.count_nonzero(target == 1)
    assert np.trace(cm) == np.count_nonzero(pred == target)


@pytest.mark.slow
def test_full_slide_size_mask() -> None:
    side = 20_000
    target = np.zeros((side, side), dtype=np.uint8)
    target[:, side // 2 :] = 2
    pred = np.zeros_like(target)
    pred[: side // 4] = 2
    m = paper_metrics_per_class(pred, target, 3)
    # class 2: |G| = N/2, |P| = N/4, TP = N/8 -> Dice (2/8)/(3/4) = 1/3, J (1/8)/(5/8) = 1/5,
    # Acc: FP + FN = N/8 + 3N/8 -> 1/2; class 1 absent from both -> 1, 1, 1
    np.testing.assert_allclose(m["dice"], [1.0, 1 / 3])
    np.testing.assert_allclose(m["jaccard"], [1.0, 1 / 5])
    np.testing.assert_allclose(m["acc"], [1.0, 1 / 2])
