"""Tracking quality on rendered scenes with ground truth: class-agnostic AP / AP50 / AP25 of

  (a) oracle   - the pipeline fed the true instance ids (masks.oracle_ids=true): the association upper bound
  (b) tracker  - the real tracker (Hungarian on a*cos + (1-a)*IoU_voxel) on anonymous masks
  (c) greedy   - the greedy best-IoU baseline (tracking.association=greedy_iou) on the same masks

Scenes: the ScanNet room of ../shared/data (when present) rendered along a synthetic trajectory, and procedural
rooms. Every method sees the same frames, whose masks are perturbed by MaskNoise (drops, eroded/dilated edges,
false blobs, depth noise sigma = k z^2). Prints one table; --json writes the figures too.

    .venv/bin/python bench/bench_quality.py                     # ScanNet room + 3 procedural rooms
    .venv/bin/python bench/bench_quality.py --rooms 1 --frames 60 --no-scannet
    .venv/bin/python bench/bench_quality.py --methods tracker --set tracking.visible_iou=false   # an ablation
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ros2_opentrack.config import OpenTrackConfig, from_flat  # noqa: E402
from ros2_opentrack.eval import evaluate_points  # noqa: E402
from ros2_opentrack.pipeline import Pipeline  # noqa: E402
from ros2_opentrack.synthetic import MaskNoise, load_scannet_npy, make_room, render_sequence  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
METHODS = {
    "oracle": {"masks.oracle_ids": True},
    "tracker": {},
    "greedy": {"tracking.association": "greedy_iou"},
}
BASE = {"masks.source": "dataset", "perception.features.name": "color_hist", "perception.labeler.name": "none",
        "keyframes.every_n": 1}


def run_method(frames, overrides):
    cfg = from_flat({**BASE, **overrides}, OpenTrackConfig())
    pipe = Pipeline(cfg)
    t0 = time.perf_counter()
    for f in frames:
        pipe.step(f)
    instances = pipe.finalize()
    seconds = time.perf_counter() - t0
    pipe.close()
    return instances, seconds


def _parse_sets(items):
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        out[key] = yaml.safe_load(value)
    return out


def score(scene, instances, radius):
    if not instances:
        return dict(ap=0.0, ap50=0.0, ap25=0.0, n_pred=0)
    pts = np.concatenate([i.points for i in instances])
    inst = np.concatenate([np.full(len(i.points), i.id) for i in instances])
    r = evaluate_points(scene.points, scene.gt_ids(), pts, inst, [i.id for i in instances],
                        [i.score for i in instances], radius=radius)
    return dict(ap=r.ap, ap50=r.ap50, ap25=r.ap25, n_pred=r.n_pred, n_gt=r.n_gt)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rooms", type=int, default=3, help="procedural rooms (seeds 0..N-1)")
    ap.add_argument("--objects", type=int, default=10, help="objects per procedural room")
    ap.add_argument("--frames", type=int, default=80, help="frames per scene")
    ap.add_argument("--hw", type=int, nargs=2, default=(240, 320), metavar=("H", "W"))
    ap.add_argument("--no-scannet", action="store_true", help="skip the ScanNet room")
    ap.add_argument("--noise", choices=("default", "none", "heavy"), default="default")
    ap.add_argument("--radius", type=float, default=0.05, help="prediction -> GT transfer radius (m)")
    ap.add_argument("--json", help="write the figures to this file")
    ap.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS), help="methods to run")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="config overrides for every method (ablations), e.g. tracking.visible_iou=false")
    args = ap.parse_args(argv)

    noise = {"default": MaskNoise(), "none": None,
             "heavy": MaskNoise(p_drop=0.2, edge_px=5, false_blobs=1.0, depth_k=0.005)}[args.noise]
    scenes = []
    npy = DATA / "scannet_scene0451_01" / "scene0451_01.npy"
    if not args.no_scannet and npy.is_file():
        scenes.append(load_scannet_npy(npy))
    scenes += [make_room(seed=s, n_objects=args.objects) for s in range(args.rooms)]

    rows, table = [], {}
    print(f"{'scene':<18}{'method':<9}{'AP':>7}{'AP50':>7}{'AP25':>7}{'pred':>6}{'gt':>5}{'s':>7}")
    for k, scene in enumerate(scenes):
        frames = render_sequence(scene, n_frames=args.frames, hw=tuple(args.hw), seed=k, noise=noise)
        for method in args.methods:
            instances, seconds = run_method(frames, {**_parse_sets(args.set), **METHODS[method]})
            s = score(scene, instances, args.radius)
            s.update(scene=scene.name, method=method, seconds=round(seconds, 2))
            rows.append(s)
            table.setdefault(method, []).append(s)
            print(f"{scene.name:<18}{method:<9}{s['ap']:>7.3f}{s['ap50']:>7.3f}{s['ap25']:>7.3f}"
                  f"{s['n_pred']:>6}{s.get('n_gt', 0):>5}{seconds:>7.1f}", flush=True)
    print("-" * 66)
    means = {}
    for method, ss in table.items():
        means[method] = {m: float(np.mean([s[m] for s in ss])) for m in ("ap", "ap50", "ap25")}
        print(f"{'mean':<18}{method:<9}{means[method]['ap']:>7.3f}{means[method]['ap50']:>7.3f}"
              f"{means[method]['ap25']:>7.3f}")
    if "oracle" in means and "tracker" in means and "greedy" in means and means["oracle"]["ap50"] > 0:
        ratio = means["tracker"]["ap50"] / means["oracle"]["ap50"]
        print(f"tracker AP50 / oracle AP50 = {ratio:.3f} (bar: >= 0.90); "
              f"tracker - greedy AP50 = {means['tracker']['ap50'] - means['greedy']['ap50']:+.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "means": means, "args": vars(args)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
