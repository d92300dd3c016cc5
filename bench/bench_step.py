"""Keyframe step time of the online core (model inference excluded: masks are given, features are color_hist).

Prints the median keyframe step time at 640x480 with 20 masks, a per-stage breakdown, and the step time with
2000 tracks in the map against 50 tracks (the spatial index keeps the cost independent of the map size)."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ros2_opentrack.config import OpenTrackConfig  # noqa: E402
from ros2_opentrack.geometry import look_at, voxel_keys  # noqa: E402
from ros2_opentrack.pipeline import Pipeline  # noqa: E402
from ros2_opentrack.synthetic import box_intrinsics, make_box_frame  # noqa: E402
from ros2_opentrack.types import Observation  # noqa: E402


def scene(n_objects=20, seed=0):
    rng = np.random.default_rng(seed)
    boxes, colours = [], []
    for i in range(n_objects):  # a 5 x 4 grid of objects in front of the camera
        cx, cy = (i % 5 - 2) * 0.9, (i // 5) * 0.9 + 1.5
        size = rng.uniform(0.25, 0.6, 3)
        boxes.append(
            (
                np.array([cx, cy, 0]) - [size[0] / 2, size[1] / 2, 0],
                np.array([cx, cy, 0]) + [size[0] / 2, size[1] / 2, size[2]],
            )
        )
        colours.append(tuple(int(c) for c in rng.integers(30, 230, 3)))
    return boxes, colours


def config():
    cfg = OpenTrackConfig()
    cfg.masks.source = "dataset"
    cfg.perception.features.name = "color_hist"
    cfg.perception.labeler.name = "none"  # core timing: no MLLM
    cfg.keyframes.every_n = 1
    return cfg


def render_frames(n, hw=(480, 640)):
    boxes, colours = scene()
    K = box_intrinsics(hw, f=525.0)
    rng = np.random.default_rng(1)
    frames = []
    for i in range(n):
        a = np.radians(-10 + 20 * i / max(1, n - 1))
        pos = np.array([3.5 * np.sin(a), -1.8 - 0.3 * np.cos(a), 1.9])
        frames.append(
            make_box_frame(boxes, colours, look_at(pos, (0, 2.8, 0.2)), hw=hw, K=K, index=i, stamp=i * 0.2, rng=rng)
        )
    return frames


def add_far_tracks(pipe, n, seed=0):
    """Tracks spread over a 200 m x 200 m map, outside this camera's view (as after a long exploration)."""
    rng = np.random.default_rng(seed)
    dummy = make_box_frame([], [], look_at((0, -5, 1), (0, 0, 0)), hw=(48, 64))
    dim = pipe.features.dim
    for _ in range(n):
        c = rng.uniform(-100, 100, 3) * [1, 1, 0] + [0, 0, 0.5]
        if abs(c[0]) < 15 and -10 < c[1] < 15:
            c[0] += 30
        pts = (c + rng.uniform(-0.3, 0.3, (300, 3))).astype(np.float32)
        f = rng.random(dim).astype(np.float32)
        obs = Observation(
            voxels=voxel_keys(pts, 0.05),
            points=pts,
            colors=np.zeros((300, 3), np.uint8),
            feature=f / np.linalg.norm(f),
            pixel_count=300,
            box=np.zeros(4, np.float32),
        )
        pipe.tracker._open(obs, dummy)


def run(frames, repeats, extra_tracks=0):
    pipe = Pipeline(config())
    add_far_tracks(pipe, extra_tracks)
    times, stages = [], {}
    for r in range(repeats):
        for f in frames:
            res = pipe.step(f)
            if r == 0:
                continue  # warm-up pass (imports, first allocations)
            t = res.timings_ms
            times.append(t["total"] - t.get("masks", 0.0))
            for k, v in t.items():
                stages.setdefault(k, []).append(v)
    return times, stages, pipe


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--frames", type=int, default=10, help="distinct rendered keyframes (640x480, 20 objects)")
    ap.add_argument("--repeats", type=int, default=4, help="passes over the frames (the first is warm-up)")
    ap.add_argument("--dbscan", default="auto", help="dbscan.backend for the comparison line")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    frames = render_frames(args.frames)
    print(
        f"rendered {len(frames)} frames in {time.perf_counter() - t0:.1f} s; masks per frame: "
        f"{[len(f.masks) for f in frames]}"
    )
    times, stages, pipe = run(frames, args.repeats)
    print(
        f"median keyframe step (model inference excluded), 640x480, ~20 masks: {statistics.median(times):.1f} ms "
        f"(p90 {np.percentile(times, 90):.1f} ms, n={len(times)}); tracks: {len(pipe.tracker.tracks)}"
    )
    print("  stages (median ms): " + ", ".join(f"{k} {statistics.median(v):.2f}" for k, v in stages.items()))
    base, _, p50 = run(frames, args.repeats, extra_tracks=50 - 20)
    big, _, p2000 = run(frames, args.repeats, extra_tracks=2000 - 20)
    m50, m2000 = statistics.median(base), statistics.median(big)
    print(
        f"map size: {len(p50.tracker.tracks)} tracks -> {m50:.1f} ms; {len(p2000.tracker.tracks)} tracks -> "
        f"{m2000:.1f} ms; ratio {m2000 / m50:.2f}"
    )


if __name__ == "__main__":
    main()
