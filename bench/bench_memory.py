"""Resident memory growth of the online core over a long run: loops the 7-Scenes redkitchen frames.

Masks are weight-free and deterministic: depth-discontinuity segments (connected regions of a 4x downsampled
depth image between depth edges > 4 cm, the 20 largest of >= 300 pixels at full resolution). Features are
color_hist. RSS (psutil) is sampled after a warm-up pass over the cached frames; the growth from there is
what the target (<= 50 MB over 10,000 frames) bounds."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ros2_opentrack.config import OpenTrackConfig  # noqa: E402
from ros2_opentrack.pipeline import Pipeline  # noqa: E402
from ros2_opentrack.types import Frame, Mask2D  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "7scenes_redkitchen"


def load_frames(folder: Path, n: int, stride: int):
    import cv2

    K = (
        np.loadtxt(folder / "camera-intrinsics.txt")
        if (folder / "camera-intrinsics.txt").is_file()
        else np.array([[585.0, 0, 320], [0, 585.0, 240], [0, 0, 1]])
    )
    poses = sorted(folder.glob("frame-*.pose.txt"))[::stride][:n]
    frames = []
    for i, p in enumerate(poses):
        stem = str(p)[: -len(".pose.txt")]
        rgb = cv2.imread(stem + ".color.jpg")[..., ::-1]
        d = cv2.imread(stem + ".depth.png", cv2.IMREAD_UNCHANGED).astype(np.float32)
        d[d >= 65535] = 0
        depth = d / 1000.0
        frames.append(
            Frame(
                rgb=np.ascontiguousarray(rgb),
                depth=depth,
                K=K,
                T_world_cam=np.loadtxt(p),
                index=i,
                stamp=i / 30.0,
                masks=depth_segments(depth),
            )
        )
    return frames


def depth_segments(depth: np.ndarray, n_max: int = 20, min_pixels: int = 300):
    import cv2

    small = depth[::4, ::4]
    gy = np.abs(np.diff(small, axis=0, append=small[-1:]))
    gx = np.abs(np.diff(small, axis=1, append=small[:, -1:]))
    inside = (small > 0) & (gx < 0.04) & (gy < 0.04)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(inside.astype(np.uint8), connectivity=4)
    areas = stats[1:, cv2.CC_STAT_AREA] * 16
    order = np.argsort(-areas)[:n_max]
    big = cv2.resize(labels.astype(np.int32).astype(np.float32), depth.shape[::-1], interpolation=cv2.INTER_NEAREST)
    return [Mask2D(mask=big == (k + 1)) for k in order if areas[k] >= min_pixels]


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--frames", type=int, default=10000, help="frames to run (the cached frames are looped)")
    ap.add_argument("--cache", type=int, default=150, help="distinct 7-Scenes frames kept in memory")
    ap.add_argument("--stride", type=int, default=3, help="take every n-th frame of the sequence for the cache")
    ap.add_argument("--data", type=Path, default=DATA)
    args = ap.parse_args(argv)
    if not args.data.is_dir():
        print(f"no data at {args.data}")
        return 1
    frames = load_frames(args.data, args.cache, args.stride)
    cfg = OpenTrackConfig()
    cfg.masks.source = "dataset"
    cfg.perception.features.name = "color_hist"
    cfg.perception.labeler.name = "none"  # the core's memory: no MLLM
    pipe = Pipeline(cfg)
    for f in frames:  # warm-up pass: imports, allocator pools, the explored volume
        pipe.step(f)
    base = rss_mb()
    t0 = time.perf_counter()
    samples = []
    for i in range(args.frames):
        f = frames[i % len(frames)]
        pipe.step(
            Frame(rgb=f.rgb, depth=f.depth, K=f.K, T_world_cam=f.T_world_cam, index=i, stamp=i / 30.0, masks=f.masks)
        )
        if (i + 1) % max(1, args.frames // 10) == 0:
            samples.append(rss_mb() - base)
            s = pipe.stats
            print(
                f"frame {i + 1}: RSS +{samples[-1]:.1f} MB, tracks {s.active + s.dormant} "
                f"(terminated {s.terminated}, merged {s.merged}), images {s.images_stored} "
                f"({s.image_bytes / 2**20:.1f} MB), {time.perf_counter() - t0:.0f} s",
                flush=True,
            )
    print(f"RSS growth over {args.frames} frames: {rss_mb() - base:.1f} MB (max sample {max(samples):.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
