"""The compiled kernels (ros2_opentrack.compiled, numba) against the numpy code they stand in for, on the same
frames in one process: passes alternate between the two, so a shared machine's slow minutes hit both alike.

    python bench/bench_compiled.py                     # bench_step.py's frames (640x480, 20 masks)
    python bench/render_scannet.py /tmp/s451 && python bench/bench_compiled.py --scene /tmp/s451   # the ScanNet room

Prints each pass's median / mean keyframe step and refinement time per mode, then the median over passes."""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ros2_opentrack import cli, compiled  # noqa: E402
from ros2_opentrack.pipeline import Pipeline  # noqa: E402


def scene_frames(folder: str):
    """The frames of a scene folder with its dataset masks, read once (reading is not timed)."""
    overrides = [
        "perception.features.name=color_hist",
        "perception.labeler.name=none",
        "keyframes.every_n=1",
        "perception.overlap_stages=false",
    ]
    cfg = cli.load_cli_config(None, overrides, "dataset")
    reader = cli.open_reader(argparse.Namespace(scene=folder, max_frames=None, masks="dataset", start=0, stride=1), cfg)
    return cfg, list(reader)


def step_frames(n: int):
    import bench_step

    return bench_step.config(), bench_step.render_frames(n)


def one_pass(cfg, frames):
    """(median, mean) keyframe step ms and the median refinement ms of one run over ``frames``."""
    pipe = Pipeline(cfg)
    steps, refines = [], []
    for frame in frames:
        result = pipe.step(frame)
        if result.keyframe:
            steps.append(result.timings_ms["total"])
            if "refine" in result.timings_ms:
                refines.append(result.timings_ms["refine"])
    return statistics.median(steps), statistics.mean(steps), statistics.median(refines) if refines else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scene", help="a scene folder with dataset masks (default: bench_step.py's rendered frames)")
    ap.add_argument("--frames", type=int, default=10, help="rendered frames when no --scene is given")
    ap.add_argument("--passes", type=int, default=6, help="passes per mode, alternating")
    args = ap.parse_args()
    if not compiled.ENABLED:
        print("numba is not installed (or OPENTRACK_COMPILED=0): nothing to compare", file=sys.stderr)
        return 2
    print(f"kernels ready in {compiled.warm_up():.1f} s")
    cfg, frames = scene_frames(args.scene) if args.scene else step_frames(args.frames)
    runs = {True: [], False: []}
    for p in range(args.passes):
        for mode in (True, False) if p % 2 == 0 else (False, True):
            compiled.ENABLED = mode
            runs[mode].append(one_pass(cfg, frames))
    compiled.ENABLED = True
    for mode, name in ((True, "compiled"), (False, "numpy")):
        passes = " ".join(f"{m:.1f}/{mu:.1f}" for m, mu, _ in runs[mode])
        medians = [m for m, _, _ in runs[mode]]
        refine = statistics.median(r for _, _, r in runs[mode])
        print(f"{name:9s} step median/mean ms per pass: {passes}")
        print(f"{'':9s} median of the medians {statistics.median(medians):.1f} ms; refinement {refine:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
