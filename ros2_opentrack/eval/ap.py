"""ScanNet-style instance segmentation AP (the logic of ScanNet's evaluate_semantic_instance.py).

Ground truth: per GT point an id label*1000+instance (0 = ignore / unannotated). Predictions: 3D point sets
with a confidence; each is transferred to the GT points within ``radius`` of any of its points (a KD-tree per
prediction, so predictions may overlap, as ScanNet's masks may). Then, per IoU threshold (ScanNet's np.arange(0.5, 0.95,
0.05), i.e. 0.50 ... 0.90, averaged into AP; plus 0.25), greedy matching exactly as ScanNet does it: IoU must be
strictly above the threshold; a second prediction on an already matched GT is a false positive with the lower
score; unmatched predictions are false
positives unless more than the threshold of their points lie on ignored points or on too-small GT instances;
AP is the area under ScanNet's precision-recall curve (artificial first point at recall 0, precision 1)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..errors import InputError

IOU_THRESHOLDS = np.append(np.arange(0.5, 0.95, 0.05), 0.25)  # ScanNet's opt['overlaps']
MIN_REGION_SIZE = 100  # ScanNet's opt['min_region_sizes'][0] (GT and predicted vertex counts)
AGNOSTIC = "object"


@dataclass
class Prediction:
    mask: np.ndarray  # bool (N_gt_points,) after transfer to the GT points
    confidence: float
    label: Optional[str] = None
    id: int = -1


@dataclass
class APResult:
    ap: float  # mean over ScanNet's thresholds 0.50:0.05:0.90
    ap50: float
    ap25: float
    per_threshold: Dict[float, float] = field(default_factory=dict)
    per_class: Dict[str, Dict[str, float]] = field(default_factory=dict)  # class -> {ap, ap50, ap25}
    n_gt: int = 0
    n_pred: int = 0

    def summary(self) -> str:
        lines = [
            f"AP {self.ap:.3f}   AP50 {self.ap50:.3f}   AP25 {self.ap25:.3f}   "
            f"({self.n_pred} predictions, {self.n_gt} ground-truth instances)"
        ]
        for name, v in sorted(self.per_class.items()):
            lines.append(f"  {name:<16} AP {_fmt(v['ap'])}  AP50 {_fmt(v['ap50'])}  AP25 {_fmt(v['ap25'])}")
        return "\n".join(lines)


def _fmt(x: float) -> str:
    return "  nan" if np.isnan(x) else f"{x:.3f}"


def transfer_to_gt(
    gt_points: np.ndarray,
    pred_points: np.ndarray,
    pred_instance: np.ndarray,
    pred_ids: Sequence[int],
    radius: float = 0.05,
) -> List[np.ndarray]:
    """For each predicted id, the bool mask of GT points that lie within ``radius`` of one of its points."""
    from scipy.spatial import cKDTree

    gt_points = np.asarray(gt_points, np.float64)
    pred_points = np.asarray(pred_points, np.float64)
    masks = []
    for pid in pred_ids:
        pts = pred_points[pred_instance == pid]
        mask = np.zeros(len(gt_points), bool)
        if len(pts):
            lo, hi = pts.min(0) - radius, pts.max(0) + radius
            near = np.flatnonzero(np.all((gt_points >= lo) & (gt_points <= hi), axis=1))
            if len(near):
                d, _ = cKDTree(pts).query(gt_points[near], k=1, distance_upper_bound=radius)
                mask[near[np.isfinite(d)]] = True
        masks.append(mask)
    return masks


def evaluate(
    gt_ids: np.ndarray,
    predictions: Sequence[Prediction],
    class_names: Optional[Dict[int, str]] = None,
    min_region_size: int = MIN_REGION_SIZE,
    per_class: bool = True,
) -> APResult:
    """Class-agnostic AP (all GT with label > 0 are one class), and per-class AP when predictions carry labels
    and GT label ids have names (class_names: label id -> name)."""
    gt_ids = np.asarray(gt_ids, np.int64).reshape(-1)
    for p in predictions:
        if p.mask.shape != gt_ids.shape:
            raise InputError(f"prediction {p.id}: mask of {p.mask.shape[0]} points for {gt_ids.shape[0]} GT points")
    agnostic = {int(g): 1 for g in np.unique(gt_ids) if g >= 1000}  # every GT instance in one class
    per_t = _ap_per_threshold(gt_ids, [(p.mask, p.confidence, 1) for p in predictions], [1], agnostic, min_region_size)[
        1
    ]
    result = _summarise(per_t)
    result.n_pred = len(predictions)
    result.n_gt = int(sum(1 for g in agnostic if np.count_nonzero(gt_ids == g) >= min_region_size))
    if per_class and class_names and any(p.label for p in predictions):
        by_name = {name.lower(): cid for cid, name in class_names.items()}
        labelled = [(p.mask, p.confidence, by_name.get((p.label or "").lower(), -1)) for p in predictions]
        gt_class = {g: g // 1000 for g in agnostic}
        present = sorted(set(gt_class.values()))
        per_label = _ap_per_threshold(gt_ids, labelled, present, gt_class, min_region_size)
        for cid in present:
            r = _summarise(per_label[cid])
            result.per_class[class_names.get(cid, str(cid))] = {"ap": r.ap, "ap50": r.ap50, "ap25": r.ap25}
    return result


def _summarise(per_t: Dict[float, float]) -> APResult:
    main = [per_t[t] for t in IOU_THRESHOLDS[:-1]]
    ap = float(np.nanmean(main)) if not all(np.isnan(main)) else float("nan")
    return APResult(
        ap=ap,
        ap50=float(per_t[IOU_THRESHOLDS[0]]),
        ap25=float(per_t[IOU_THRESHOLDS[-1]]),
        per_threshold={round(float(t), 2): float(v) for t, v in per_t.items()},
    )


def _ap_per_threshold(gt_ids, preds, labels, gt_class, min_region_size) -> Dict[int, Dict[float, float]]:
    """label -> {IoU threshold -> AP}. preds: list of (mask, confidence, label); gt_class: GT id -> label."""
    gt_ids = np.asarray(gt_ids, np.int64)
    out: Dict[int, Dict[float, float]] = {}
    uniq, counts = np.unique(gt_ids, return_counts=True)
    gt_count = dict(zip(uniq.tolist(), counts.tolist()))
    for label in labels:
        of_label = {g for g, c in gt_class.items() if c == label}
        gt_valid = [g for g in sorted(of_label) if gt_count[g] >= min_region_size]
        pred_info = []
        for mask, conf, plabel in preds:
            if plabel != label:
                continue
            n = int(np.count_nonzero(mask))
            if n < min_region_size:
                continue  # ScanNet skips predictions smaller than the minimum region
            u, c = np.unique(gt_ids[mask], return_counts=True)
            inter = {g: k for g, k in zip(u.tolist(), c.tolist()) if g in of_label}  # ScanNet's matched_gt
            void = int(sum(k for g, k in zip(u.tolist(), c.tolist()) if g < 1000))
            pred_info.append({"n": n, "conf": float(conf), "inter": inter, "void": void})
        out[label] = {float(t): _ap_at(t, gt_valid, gt_count, pred_info, min_region_size) for t in IOU_THRESHOLDS}
    return out


def _ap_at(th, gts, gt_count, preds, min_region_size) -> float:
    visited = [False] * len(preds)
    cur_true = np.ones(len(gts))
    cur_score = np.full(len(gts), -np.inf)
    cur_match = np.zeros(len(gts), bool)
    hard_fn = 0
    for gi, g in enumerate(gts):
        found = False
        for pi, p in enumerate(preds):  # ScanNet visits a GT's matched predictions in order
            inter = p["inter"].get(g, 0)
            if inter == 0 or visited[pi]:
                continue
            iou = inter / (gt_count[g] + p["n"] - inter)
            if iou > th:
                if cur_match[gi]:  # a second prediction on a matched GT: the lower score is a false positive
                    lo, hi = min(cur_score[gi], p["conf"]), max(cur_score[gi], p["conf"])
                    cur_score[gi] = hi
                    cur_true = np.append(cur_true, 0)
                    cur_score = np.append(cur_score, lo)
                    cur_match = np.append(cur_match, True)
                else:
                    found = True
                    cur_match[gi] = True
                    cur_score[gi] = p["conf"]
                    visited[pi] = True
        if not found:
            hard_fn += 1
    cur_true, cur_score = cur_true[cur_match], cur_score[cur_match]
    for p in preds:
        if any(c / (gt_count[g] + p["n"] - c) > th for g, c in p["inter"].items()):
            continue
        ignore = p["void"] + sum(c for g, c in p["inter"].items() if gt_count[g] < min_region_size)
        if ignore / p["n"] <= th:  # mostly on ignored points: not counted as a false positive
            cur_true = np.append(cur_true, 0)
            cur_score = np.append(cur_score, p["conf"])
    if not gts:
        return float("nan")
    if not preds:
        return 0.0
    return _curve_ap(cur_true, cur_score, hard_fn)


def _curve_ap(y_true: np.ndarray, y_score: np.ndarray, hard_fn: int) -> float:
    order = np.argsort(y_score, kind="stable")
    y_score, y_true = y_score[order], y_true[order]
    cumsum = np.cumsum(y_true)
    _, unique_idx = np.unique(y_score, return_index=True)
    n_pr = len(unique_idx) + 1
    n_examples = len(y_score)
    n_true = cumsum[-1] if len(cumsum) else 0
    precision, recall = np.zeros(n_pr), np.zeros(n_pr)
    cumsum = np.append(cumsum, 0)
    for k, idx in enumerate(unique_idx):
        cs = cumsum[idx - 1]
        tp = n_true - cs
        fp = n_examples - idx - tp
        fn = cs + hard_fn
        precision[k] = tp / (tp + fp)
        recall[k] = tp / (tp + fn)
    precision[-1], recall[-1] = 1.0, 0.0
    r = np.append(recall[0], recall)
    r = np.append(r, 0.0)
    steps = np.convolve(r, [-0.5, 0, 0.5], "valid")
    return float(np.dot(precision, steps))


def evaluate_points(
    gt_points: np.ndarray,
    gt_ids: np.ndarray,
    pred_points: np.ndarray,
    pred_instance: np.ndarray,
    pred_ids: Sequence[int],
    pred_scores: Sequence[float],
    pred_labels: Optional[Sequence] = None,
    class_names: Optional[Dict[int, str]] = None,
    radius: float = 0.05,
    min_region_size: int = MIN_REGION_SIZE,
    gt_mask: Optional[np.ndarray] = None,
) -> APResult:
    """AP of predicted point sets (e.g. a run's instances.npz) against a GT point cloud.

    gt_mask: (N_gt,) bool; only these GT points take part, e.g. the points some frame saw ("seen-only" AP: an
    object the camera never saw is no miss, and a GT instance counts only with what of it was seen)."""
    gt_points = np.asarray(gt_points)
    if len(gt_points) != len(gt_ids):
        raise InputError(f"{len(gt_ids)} GT ids for {len(gt_points)} GT points")
    if gt_mask is not None:
        gt_mask = np.asarray(gt_mask, bool).reshape(-1)
        if gt_mask.shape != (len(gt_points),):
            raise InputError(f"gt_mask of {gt_mask.shape[0]} entries for {len(gt_points)} GT points")
        gt_points, gt_ids = gt_points[gt_mask], np.asarray(gt_ids).reshape(-1)[gt_mask]
    masks = transfer_to_gt(gt_points, pred_points, np.asarray(pred_instance), pred_ids, radius)
    labels = list(pred_labels) if pred_labels is not None else [None] * len(pred_ids)
    preds = [
        Prediction(mask=m, confidence=float(s), label=lab, id=int(i))
        for m, s, lab, i in zip(masks, pred_scores, labels, pred_ids)
    ]
    return evaluate(gt_ids, preds, class_names, min_region_size)
