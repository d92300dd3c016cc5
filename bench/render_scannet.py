"""Render the real ScanNet room of ../shared/data into a scene folder that `opentrack run` / `opentrack bench` read
(RGB-D frames, poses, intrinsics, dataset instance masks with a real segmenter's errors): the input of the
ScanNet speed figure in README.md.

    .venv/bin/python bench/render_scannet.py /tmp/s451                      # 100 frames, 640x480 (~1 min)
    .venv/bin/opentrack bench /tmp/s451 --masks dataset --set perception.features.name=color_hist \\
        --set perception.labeler.name=none --set keyframes.every_n=1 --set perception.overlap_stages=false
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ros2_opentrack.synthetic import MaskNoise, load_scannet_npy, render_sequence, write_scene_folder  # noqa: E402

SCANNET_NPY = Path(__file__).resolve().parents[2] / "shared" / "data" / "scannet_scene0451_01" / "scene0451_01.npy"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="scene folder to write")
    ap.add_argument("--frames", type=int, default=100, help="frames along the default trajectory")
    ap.add_argument("--hw", type=int, nargs=2, default=(480, 640), metavar=("H", "W"))
    ap.add_argument("--seed", type=int, default=0, help="trajectory and mask-noise seed")
    ap.add_argument("--npy", default=str(SCANNET_NPY), help="the ScanNet room (xyz, rgb, semantic, instance)")
    args = ap.parse_args(argv)
    if not Path(args.npy).is_file():
        raise SystemExit(f"no ScanNet room at {args.npy} (expected ../shared/data/scannet_scene0451_01)")
    scene = load_scannet_npy(args.npy)
    frames = render_sequence(
        scene, n_frames=args.frames, hw=tuple(args.hw), seed=args.seed, noise=MaskNoise(seed=args.seed)
    )
    out = write_scene_folder(scene, frames, args.out)
    print(f"wrote {len(frames)} frames of {scene.name} at {args.hw[1]}x{args.hw[0]} to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
