"""ScanNet-style AP against hand-computed cases."""

import numpy as np
import pytest

from ros2_opentrack.eval import Prediction, evaluate, evaluate_points

# 3 GT instances of 200 points each (class 1: ids 1001, 1002; class 2: id 2003), 100 void points, 50 points of a
# GT instance too small to count (class 1, id 1004).
GT = np.concatenate([np.full(200, 1001), np.full(200, 1002), np.full(200, 2003), np.zeros(100, int), np.full(50, 1004)])


def pred(ids, conf, label=None, extra_void=0):
    mask = np.isin(GT, ids)
    if extra_void:
        mask[np.flatnonzero(GT == 0)[:extra_void]] = True
    return Prediction(mask=mask, confidence=conf, label=label)


def test_perfect_prediction_is_ap_one():
    r = evaluate(GT, [pred([1001], 0.9), pred([1002], 0.8), pred([2003], 0.7)])
    assert r.ap == pytest.approx(1.0) and r.ap50 == pytest.approx(1.0) and r.ap25 == pytest.approx(1.0)
    assert r.n_gt == 3


def test_two_of_three_found_gives_recall_bound():
    # precision 1 up to recall 2/3: ScanNet's curve integrates to 2/3
    r = evaluate(GT, [pred([1001], 0.9), pred([1002], 0.8)])
    assert r.ap == pytest.approx(2 / 3)


def test_duplicate_above_a_true_positive_lowers_ap():
    gt2 = GT.copy()
    gt2[gt2 == 2003] = 0
    r = evaluate(
        gt2,
        [
            Prediction(np.isin(gt2, [1001]), 0.9),
            Prediction(np.isin(gt2, [1001]), 0.8),
            Prediction(np.isin(gt2, [1002]), 0.7),
        ],
    )
    # sorted ascending: TP .7, FP .8, TP .9 -> precision [2/3, 1/2, 1, 1], recall [1, 1/2, 1/2, 0];
    # step widths [1/4, 1/4, 1/4, 1/4] -> AP = (2/3 + 1/2 + 1 + 1) / 4 = 19/24
    assert r.ap50 == pytest.approx(19 / 24)
    # the same duplicate ranked last does not lower AP (ScanNet's curve starts at the top score)
    r = evaluate(
        gt2,
        [
            Prediction(np.isin(gt2, [1001]), 0.9),
            Prediction(np.isin(gt2, [1002]), 0.7),
            Prediction(np.isin(gt2, [1001]), 0.1),
        ],
    )
    assert r.ap50 == pytest.approx(1.0)


def test_iou_thresholds_and_partial_overlap():
    # a prediction covering 1001 plus 100 points of 1002: IoU with 1001 = 200/300 = 0.667
    mask = np.isin(GT, [1001])
    mask[np.flatnonzero(GT == 1002)[:100]] = True
    r = evaluate(GT[GT != 2003], [Prediction(mask[GT != 2003], 0.9)])
    # one of two GT found at thresholds 0.25..0.65, none at 0.70..0.95; the unmatched 1002 stays a miss
    assert r.ap25 == pytest.approx(0.5) and r.ap50 == pytest.approx(0.5)
    assert r.per_threshold[0.65] == pytest.approx(0.5) and r.per_threshold[0.7] == pytest.approx(0.0)
    # ScanNet's thresholds: np.arange(0.5, 0.95, 0.05) = 0.50 ... 0.90 (nine), so AP = 4 * 0.5 / 9
    assert r.ap == pytest.approx(0.5 * 4 / 9)


def test_false_positive_on_void_is_ignored_but_on_objects_counts():
    base = [pred([1001], 0.5), pred([1002], 0.5), pred([2003], 0.5)]
    on_void = Prediction(mask=GT == 0, confidence=0.99)
    assert evaluate(GT, base + [on_void]).ap == pytest.approx(1.0)
    small = Prediction(mask=np.isin(GT, [1004, 0]), confidence=0.99)  # small GT + void: ignored too
    assert evaluate(GT, base + [small]).ap == pytest.approx(1.0)
    # a high-scoring prediction half on 1001, half on 1002: IoU 0.2 with each -> a false positive at 0.5
    half = np.zeros(len(GT), bool)
    half[np.flatnonzero(GT == 1001)[:50]] = True
    half[np.flatnonzero(GT == 1002)[:50]] = True
    r = evaluate(GT, [pred([1001], 0.9), pred([1002], 0.8), pred([2003], 0.7), Prediction(half, 0.95)])
    # ascending: TP .7, TP .8, TP .9, FP .95 -> precision [3/4, 2/3, 1/2, 0, 1], recall [1, 2/3, 1/3, 0, 0]
    # widths: [1/6, 1/3, 1/3, 1/6, 0] -> AP = 3/4 * 1/6 + 2/3 * 1/3 + 1/2 * 1/3 (top-ranked FP: precision 0)
    assert r.ap50 == pytest.approx(0.75 / 6 + 2 / 9 + 1 / 6)


def test_small_predictions_skipped_and_no_predictions_zero():
    tiny = np.zeros(len(GT), bool)
    tiny[:99] = True
    assert evaluate(GT, [Prediction(tiny, 0.9)]).ap == 0.0
    assert evaluate(GT, []).ap50 == 0.0


def test_per_class_ap_with_labels():
    names = {1: "chair", 2: "table"}
    r = evaluate(
        GT, [pred([1001], 0.9, "chair"), pred([1002], 0.8, "Table"), pred([2003], 0.7, "table")], class_names=names
    )
    assert r.ap == pytest.approx(1.0)  # class-agnostic ignores labels
    # chair: 1001 found, 1002 missed (it was called a table) -> 0.5
    assert r.per_class["chair"]["ap50"] == pytest.approx(0.5)
    # table: the 1002 prediction is a false positive ranked above the true 2003 one:
    # precision [1/2, 0, 1], recall [1, 0, 0] -> AP = 1/2 * 1/2 = 0.25
    assert r.per_class["table"]["ap50"] == pytest.approx(0.25)


def test_point_transfer_by_radius():
    rng = np.random.default_rng(0)
    gt_pts = np.concatenate([rng.uniform(0, 1, (300, 3)), rng.uniform(5, 6, (300, 3))])
    gt_ids = np.repeat([1001, 1002], 300)
    # predictions sampled on a subset of the GT points, plus a far-away object nobody annotated
    pred_pts = np.concatenate([gt_pts[:300:2] + 0.001, gt_pts[300::3] + 0.001, rng.uniform(20, 21, (200, 3))])
    inst = np.concatenate([np.full(150, 1), np.full(100, 2), np.full(200, 3)])
    r = evaluate_points(gt_pts, gt_ids, pred_pts, inst, [1, 2, 3], [0.9, 0.8, 0.95], radius=0.3)
    # 1 and 2 recover their GT (radius 0.3 covers the unit cube's gaps); 3 covers no GT point -> skipped
    assert r.ap == pytest.approx(1.0)
    r = evaluate_points(gt_pts, gt_ids, pred_pts, inst, [1, 2], [0.9, 0.8], radius=1e-4)
    assert r.ap25 == pytest.approx(0.0)  # nothing transfers at a radius far below the offsets
