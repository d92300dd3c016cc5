"""Evaluation: ScanNet-style class-agnostic and per-class instance AP (AP, AP50, AP25)."""

from .ap import APResult, Prediction, evaluate, evaluate_points, transfer_to_gt  # noqa: F401


def evaluate_run(out_dir, gt_scene, radius: float = 0.05, min_region_size: int = 100) -> APResult:
    """AP of a run's output folder (instances.npz) against a scene folder with points.ply + gt_instances.txt."""
    from ..io.scannet import read_scene_gt
    from ..io.writers import read_outputs

    gt_points, gt_ids, names = read_scene_gt(gt_scene)
    saved = read_outputs(out_dir)
    return evaluate_points(
        gt_points,
        gt_ids,
        saved.points,
        saved.instance,
        saved.ids.tolist(),
        saved.scores.tolist(),
        saved.labels,
        names,
        radius=radius,
        min_region_size=min_region_size,
    )
