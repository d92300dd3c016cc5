"""Resident memory of the opentrack node under hostile input (issue 8): the node in-process on loopback DDS, fed
a seeded flood of hostile messages on every input topic (test_ros_reliability's generators), then good frames,
then a burst of big (default 4000x3000) frames, then ~/reset. Prints RSS after each phase; asserts nothing.

    python bench/bench_fuzz_memory.py [--messages 2000] [--big 4] [--big-hw 3000 4000] [--no-trim]

--no-trim makes ~/reset skip release_memory (gc + malloc_trim), to see what it gives back."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "test"))
sys.path.insert(0, str(ROOT / "test" / "ros_support"))


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--big", type=int, default=4, help="frames in the burst of big frames")
    ap.add_argument("--big-hw", type=int, nargs=2, default=(3000, 4000), metavar=("H", "W"))
    ap.add_argument("--seed", type=int, default=8)
    ap.add_argument("--no-trim", action="store_true")
    args = ap.parse_args()

    import test_ros_reliability as T  # the generators; importing it sets a loopback DDS domain of its own
    from std_msgs.msg import String
    from std_srvs.srv import Trigger

    from ros2_opentrack import synthetic
    from ros2_opentrack.ros import node as node_mod
    from ros2_opentrack.ros import params
    from ros2_opentrack.ros.node import OpenTrackNode

    if args.no_trim:
        node_mod.release_memory = lambda: None
    rows = []

    def mark(phase: str) -> None:
        rows.append((phase, rss_mb()))
        print(f"{phase:<44} RSS {rows[-1][1]:8.1f} MiB  ({rows[-1][1] - rows[0][1]:+8.1f})", flush=True)

    r = T.Rig(OpenTrackNode(parameter_overrides=params.overrides({**T.BASE, "masks.max_ids": 64})))
    assert r.wait_for_subscribers()
    frames = synthetic.render_sequence(synthetic.make_room(seed=0, n_objects=5), n_frames=10, hw=(120, 160))
    T.feed(r, frames[:2], [100.0, 100 + 1 / 30])
    mark("start (2 good frames)")
    rng = np.random.default_rng(args.seed)
    now = r.node.get_clock().now().nanoseconds * 1e-9
    t0 = time.perf_counter()
    for k in range(args.messages):
        base = 100.1 + k * 0.01
        topic = str(rng.choice(["rgb", "depth", "masks", "masks", "camera_info", "tf", "query"]))
        if topic in ("rgb", "depth", "masks") and rng.random() < 0.4:
            for name, msg in T.hostile_set(rng, base, now).items():
                r.pubs[name].publish(msg)
        elif topic in ("rgb", "depth", "masks"):
            r.pubs[topic].publish(T.hostile_image(rng, topic, base, now))
        elif topic == "camera_info":
            r.pubs["camera_info"].publish(T.hostile_camera_info(rng, base))
        elif topic == "tf":
            r.pubs["tf"].publish(T.hostile_tf(rng, base))
        else:
            r.pubs["query"].publish(String(data=str(rng.choice(["", "mug", "  ", "chair \u00e9"]))))
        for _ in range(3):
            r.executor.spin_once(timeout_sec=0.002)
    r.spin_for(1.0)
    mark(f"after {args.messages} hostile messages ({time.perf_counter() - t0:.0f} s)")
    T.feed(r, frames[2:10], [200 + k / 30 for k in range(8)])
    mark("after 8 good frames")
    received, accounted = r.node.sync.accounted()
    print(f"  images received {received}, accounted {accounted}; drops {dict(sorted(r.node.drops().items()))}")
    h, w = args.big_hw
    big = synthetic.render_sequence(synthetic.make_room(seed=3, n_objects=4), n_frames=args.big, hw=(h, w))
    mark(f"{args.big} frames of {w}x{h} rendered (the bench's own)")
    T.feed(r, big, [300 + k / 30 for k in range(len(big))])
    mark(f"after the burst of {args.big} {w}x{h} frames")
    del big
    r.got.clear()
    assert r.call(Trigger, "/opentrack/reset").success
    r.spin_for(0.5)
    mark("after ~/reset" + (" (no trim)" if args.no_trim else ""))
    T.feed(r, frames[:3], [400 + k / 30 for k in range(3)])
    mark("after 3 more good frames")
    alive = r.node._worker.is_alive()
    r.close()
    print(f"worker alive: {alive}; growth start -> after reset: {rows[-2][1] - rows[0][1]:+.1f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
