"""Long-lived maps (issue 11): map state save / load time and size, and memory over a long run where objects move.

1. A map of --tracks tracks (default 500): 30 cm objects (about 1,000 fine points each) spread over a 30 x 30 m
   floor, views and keyframe images (640x480 JPEG, one per 10 tracks) and the scene map. Reports the save and
   load time (Pipeline.save_state / load_state, median of --repeat) and the folder size.
2. A --frames loop (default 10,000) over a tiny ray-cast box room (96x128 depth, masks given, every frame a
   keyframe): three tables, and one object that moves to the next table every --move-every frames (default
   1,000). RSS (psutil) after the first move cycle, the number of tracks, the presence of the object's tracks,
   and the map state size every 1,000 frames: all flat when the map is bounded by the explored volume (the
   object's places), not by the length of the run. Renders are cached (the camera loops over 100 poses).

    python bench/bench_map_state.py                      # both
    python bench/bench_map_state.py --frames 2000        # a shorter loop
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ros2_opentrack import geometry  # noqa: E402
from ros2_opentrack.config import OpenTrackConfig  # noqa: E402
from ros2_opentrack.pipeline import Pipeline  # noqa: E402
from ros2_opentrack.synthetic import make_box_frame  # noqa: E402
from ros2_opentrack.types import Frame, Observation, View  # noqa: E402


def config(**flat) -> OpenTrackConfig:
    from ros2_opentrack.config import from_flat

    base = {
        "masks.source": "dataset",
        "perception.features.name": "color_hist",
        "perception.labeler.name": "none",
        "perception.text_matcher.name": "none",
        "keyframes.every_n": 1,
    }
    base.update(flat)
    return from_flat(base, OpenTrackConfig())


def folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


# ------------------------------------------------------------------------------------------------------------
def big_map(n_tracks: int, seed: int = 0) -> Pipeline:
    """A pipeline holding n_tracks tracks with views, images and a scene map (built directly, no rendering)."""
    rng = np.random.default_rng(seed)
    pipe = Pipeline(config())
    side = int(np.ceil(np.sqrt(n_tracks)))
    spacing = 30.0 / side
    g = np.arange(0.0, 0.3, 0.02)
    a, b = np.meshgrid(g, g)
    face = np.stack([a.ravel(), b.ravel()], 1)
    cube = np.concatenate([np.insert(face, k, v, axis=1) for k in range(3) for v in (0.0, 0.3)]).astype(np.float32)
    dim = pipe.features.dim if pipe.features is not None else 64
    h, w = 480, 640
    yy, xx = np.mgrid[0:h, 0:w]
    offers, frame = [], None
    for k in range(n_tracks):
        if k % 10 == 0:
            if offers:
                pipe.views.offer(frame.rgb, offers)
                offers = []
            rgb = np.clip(
                np.stack([xx * 0.3, yy * 0.4, (xx + yy) * 0.15], -1) + rng.integers(0, 40, (h, w, 3)), 0, 255
            ).astype(np.uint8)
            frame = Frame(
                rgb=rgb,
                depth=np.ones((h, w), np.float32),
                K=np.eye(3),
                T_world_cam=np.eye(4),
                stamp=k / 10.0,
                index=k // 10,
            )
        at = np.array([(k % side) * spacing, (k // side) * spacing, 0.0], np.float32)
        pts = cube + at + rng.normal(0, 0.003, cube.shape).astype(np.float32)
        colors = np.clip(rng.normal(rng.integers(40, 215, 3), 8, (len(pts), 3)), 0, 255).astype(np.uint8)
        feat = rng.random(dim).astype(np.float32)
        obs = Observation(
            voxels=geometry.voxel_keys(pts, pipe.cfg.tracking.voxel_size_m),
            points=pts,
            colors=colors,
            feature=feat / np.linalg.norm(feat),
            pixel_count=len(pts),
            box=np.array([10, 10, 100, 100], np.float32),
            label="box",
        )
        t = pipe.tracker._open(obs, frame)
        t.observations = 5
        pipe.tracker.scene.add(pts, colors)
        offers.append(
            (
                t.id,
                View(
                    image_key=0,
                    frame_index=frame.index,
                    stamp=frame.stamp,
                    box=obs.box.copy(),
                    visible_fraction=1.0,
                    mask_area=8100,
                ),
            )
        )
    if offers:
        pipe.views.offer(frame.rgb, offers)
    return pipe


def bench_save_load(n_tracks: int, repeat: int) -> None:
    pipe = big_map(n_tracks)
    tmp = Path(tempfile.mkdtemp(prefix="bench_map_state_"))
    try:
        saves, loads = [], []
        for _ in range(repeat):
            t0 = time.perf_counter()
            pipe.save_state(tmp / "map")
            saves.append(time.perf_counter() - t0)
            fresh = Pipeline(config())
            t0 = time.perf_counter()
            fresh.load_state(tmp / "map")
            loads.append(time.perf_counter() - t0)
            assert len(fresh.tracker.tracks) == n_tracks
        s = pipe.stats
        points = sum(len(t.store) for t in pipe.tracker.tracks.values())
        print(
            f"map of {n_tracks} tracks ({points} fine points, {s.images_stored} images "
            f"{s.image_bytes / 2**20:.1f} MB, scene map {pipe.tracker.scene.n_points} points): "
            f"save {np.median(saves) * 1000:.0f} ms, load {np.median(loads) * 1000:.0f} ms "
            f"(median of {repeat}), folder {folder_mb(tmp / 'map'):.1f} MB"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------------------------------------------------
HW = (96, 128)
TABLES = [((x - 0.5, y - 0.4, 0.0), (x + 0.5, y + 0.4, 0.7)) for x, y in ((0.0, 0.0), (3.0, 0.0), (1.5, 2.6))]
COLOURS = [(140, 90, 40), (60, 120, 170), (90, 160, 60), (210, 30, 30)]


def on_table(k: int):
    (x0, y0, _), (x1, y1, z1) = TABLES[k]
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return (np.array([cx - 0.2, cy - 0.2, z1]), np.array([cx + 0.2, cy + 0.2, z1 + 0.4]))


def loop_poses(n: int = 100):
    centre = np.array([1.5, 0.9, 0.6])
    out = []
    for a in np.linspace(0, 2 * np.pi, n, endpoint=False):
        pos = centre + [4.2 * np.cos(a), 4.2 * np.sin(a), 0.0]
        pos[2] = 2.4
        out.append(geometry.look_at(pos, centre))
    return out


def bench_loop(n_frames: int, move_every: int) -> None:
    from ros2_opentrack.types import Presence

    poses = loop_poses()
    boxes = [[(np.array(lo), np.array(hi)) for lo, hi in TABLES] + [on_table(k)] for k in range(3)]
    cache = {}

    def frame(i: int) -> Frame:
        place, p = (i // move_every) % 3, i % len(poses)
        if (place, p) not in cache:
            cache[(place, p)] = make_box_frame(
                boxes[place], COLOURS, poses[p], hw=HW, min_pixels=20, rng=np.random.default_rng(p)
            )
        f = cache[(place, p)]
        return Frame(rgb=f.rgb, depth=f.depth, K=f.K, T_world_cam=f.T_world_cam, stamp=i / 30.0, index=i, masks=f.masks)

    pipe = Pipeline(config(**{"lift.pixel_stride": 1, "lift.min_mask_pixels": 20}))
    tmp = Path(tempfile.mkdtemp(prefix="bench_map_loop_"))
    base = None
    t0 = time.perf_counter()
    rows = []
    try:
        for i in range(n_frames):
            pipe.step(frame(i))
            if i + 1 == min(move_every * 3, n_frames // 2):
                base = rss_mb()  # after the object visited every place once: the explored volume is known
            if (i + 1) % 1000 == 0 or i + 1 == n_frames:
                pipe.save_state(tmp / "map")
                obj = Counter(t.presence.value for t in pipe.tracker.tracks.values() if t.source_id == 3)
                s = pipe.stats
                rss = rss_mb()
                rows.append(rss)
                print(
                    f"frame {i + 1:>6}: RSS {rss:7.1f} MB{'' if base is None else f' ({rss - base:+.1f})'}, "
                    f"tracks {len(pipe.tracker.tracks)} (object: {dict(obj)}; terminated {s.terminated}, merged "
                    f"{s.merged}), images {s.images_stored}, state {folder_mb(tmp / 'map') * 1024:.0f} KB, "
                    f"{time.perf_counter() - t0:.0f} s",
                    flush=True,
                )
        if base is not None:
            after = [r for k, r in enumerate(rows) if (k + 1) * 1000 > move_every * 3]
            print(
                f"RSS growth after the first {move_every * 3} frames: {rss_mb() - base:+.1f} MB (max sample "
                f"{max(after) - base:+.1f} MB) over {n_frames} frames"
            )
        moved = [t for t in pipe.tracker.tracks.values() if t.presence != Presence.PRESENT]
        print(
            f"removed / moved tracks at the end: {len(moved)}; "
            f"{(time.perf_counter() - t0) / n_frames * 1000:.1f} ms per frame"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tracks", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--frames", type=int, default=10000)
    ap.add_argument("--move-every", type=int, default=1000)
    ap.add_argument("--skip-map", action="store_true", help="only the loop")
    ap.add_argument("--skip-loop", action="store_true", help="only save / load")
    args = ap.parse_args(argv)
    if not args.skip_map:
        bench_save_load(args.tracks, args.repeat)
    if not args.skip_loop:
        bench_loop(args.frames, args.move_every)
    return 0


if __name__ == "__main__":
    sys.exit(main())
