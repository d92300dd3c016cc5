"""Latency of the opentrack ROS node, in-process (the node + a driver node in one process, DDS on loopback).

1. masks given on the masks topic (no model time): median latency from publishing a frame's rgb/depth/masks to
   receiving the Instance3DArray with that frame's stamp, at 640x480 (target < 50 ms); once with raw Images and
   once with compressed inputs (rgb jpeg on rgb/compressed, depth on depth/compressedDepth, masks png on
   masks/compressed: the node decodes them; encoding happens before the clock starts).
2. a perception stage made slow on purpose (--stage-ms per keyframe, default 300) with --hz input (default
   30) for --minutes (default 5): output latency (publish -> matching Instance3DArray) must stay under 2x the
   stage time, and memory (RSS) must stay flat: frames the worker cannot take are dropped (oldest first, counted).

    .venv/bin/python bench/bench_ros_latency.py --minutes 5
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "test" / "ros_support"))


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=60, help="frames in part 1 (default 60)")
    ap.add_argument("--minutes", type=float, default=5.0, help="duration of part 2 (default 5; 0 skips it)")
    ap.add_argument("--stage-ms", type=float, default=300.0, help="slow perception stage per keyframe (ms)")
    ap.add_argument("--hz", type=float, default=30.0, help="input rate of part 2 (default 30)")
    ap.add_argument("--hw", type=int, nargs=2, default=(480, 640), help="image height width (default 480 640)")
    ap.add_argument("--queue-size", type=int, default=1, help="node queue_size (default 1, as the node)")
    ap.add_argument("--domain-id", type=int, default=90 + os.getpid() % 40, help="ROS_DOMAIN_ID (loopback only)")
    return ap.parse_args()


class SlowFeatures:
    """The real colour-histogram extractor behind a fixed sleep: a stand-in for a slow model stage."""

    def __init__(self, inner, seconds: float):
        self.inner, self.seconds, self.dim, self.calls = inner, seconds, inner.dim, 0

    def extract(self, rgb, masks, boxes):
        self.calls += 1
        time.sleep(self.seconds)
        return self.inner.extract(rgb, masks, boxes)


def make_node(extra: dict, features=None):
    from ros2_opentrack.config import from_flat
    from ros2_opentrack.pipeline import Pipeline
    from ros2_opentrack.ros import params
    from ros2_opentrack.ros.node import OpenTrackNode

    values = {
        "masks.source": "topic",
        "perception.features.name": "color_hist",
        "perception.text_matcher.name": "none",
        "perception.labeler.name": "none",
        "tf_timeout_s": 0.05,
        **extra,
    }
    core = {k: v for k, v in values.items() if "." in k}
    pipeline = Pipeline(from_flat(core), features=features)
    return OpenTrackNode(pipeline=pipeline, parameter_overrides=params.overrides(values))


def render_frames(n: int, hw, seed: int = 0):
    from ros2_opentrack import synthetic

    scene = synthetic.make_room(seed=seed, n_objects=8)
    return synthetic.render_sequence(scene, n_frames=n, hw=tuple(hw), seed=seed)


def compress(msgs: dict) -> dict:
    """rgb -> jpeg CompressedImage, depth -> compressedDepth (png), masks -> 16-bit png (image_transport's)."""
    import struct

    import cv2
    from sensor_msgs.msg import CompressedImage

    from ros2_opentrack.ros import conversions as conv

    rgb = conv.rgb_from_msg(msgs["rgb"])
    out = {k: v for k, v in msgs.items() if k not in ("rgb", "depth", "masks")}
    out["rgb"] = CompressedImage(
        header=msgs["rgb"].header,
        format="rgb8; jpeg compressed bgr8",
        data=cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes(),
    )
    out["depth"] = CompressedImage(
        header=msgs["depth"].header,
        format="16UC1; compressedDepth png",
        data=struct.pack("<iff", 0, 0.0, 0.0) + cv2.imencode(".png", conv.image_to_array(msgs["depth"]))[1].tobytes(),
    )
    if "masks" in msgs:
        out["masks"] = CompressedImage(
            header=msgs["masks"].header,
            format="16UC1; png",
            data=cv2.imencode(".png", conv.image_to_array(msgs["masks"]))[1].tobytes(),
        )
    return out


def part1(args, frames, compressed: bool = False):
    import ros_messages
    from rig import Rig
    from sensor_msgs.msg import CompressedImage

    transports = (
        {"rgb_transport": "compressed", "depth_transport": "compressedDepth", "masks_transport": "compressed"}
        if compressed
        else {}
    )
    rig = Rig(make_node({"queue_size": args.queue_size, **transports}))
    if compressed:
        for stream, transport in (("rgb", "compressed"), ("depth", "compressedDepth"), ("masks", "compressed")):
            rig.pubs[stream] = rig.driver.create_publisher(CompressedImage, f"{stream}/{transport}", 10)
    assert rig.wait_for_subscribers()
    lat, kf = [], []
    try:
        for k in range(args.frames):
            msgs = ros_messages.frame_messages(frames[k % len(frames)], 1000.0 + k / 30.0)
            if compressed:
                msgs = compress(msgs)
            n = rig.counts["instances"]
            t0 = time.perf_counter()
            rig.publish(msgs)
            if not rig.spin_until(lambda n=n: rig.counts["instances"] > n, 5.0):
                print(f"  frame {k}: no output ({rig.node.drops()})")
                continue
            lat.append((rig.arrival["instances"][-1] - t0) * 1e3)
            kf.append(k % 5 == 0)  # keyframes.every_n = 5 (default)
        n_inst = len(rig.got["instances"][-1].instances) if rig.got["instances"] else 0
        drops = rig.node.drops()
    finally:
        rig.close()
    lat, kf = np.array(lat), np.array(kf)
    print(
        f"part 1{' (compressed inputs)' if compressed else ''}: {args.hw[1]}x{args.hw[0]}, masks on the topic, "
        f"{len(lat)} frames, {n_inst} instances at the end"
    )
    print(
        f"  publish -> Instance3DArray latency: median {np.median(lat):.1f} ms, p90 {np.percentile(lat, 90):.1f} ms,"
        f" max {lat.max():.1f} ms; keyframes median {np.median(lat[kf]):.1f} ms, other frames median "
        f"{np.median(lat[~kf]):.1f} ms (target: median < 50 ms) drops={drops}"
    )
    return float(np.median(lat))


def part2(args, frames):
    import psutil
    import rclpy
    import ros_messages
    from rig import Rig

    from ros2_opentrack.config import OpenTrackConfig
    from ros2_opentrack.perception import registry
    from ros2_opentrack.ros import conversions as conv

    p = OpenTrackConfig().perception
    p.features.name = "color_hist"
    slow = SlowFeatures(registry.build("features", p.features, p), args.stage_ms / 1e3)
    rig = Rig(make_node({"queue_size": args.queue_size}, features=slow), keep=5)
    assert rig.wait_for_subscribers()
    steps = []  # (keyframe, wall ms) of every pipeline step: latency is queueing + these
    pipeline_step = rig.node.pipeline.step

    def timed_step(frame):
        t = time.perf_counter()
        result = pipeline_step(frame)
        steps.append((result.keyframe, (time.perf_counter() - t) * 1e3))
        return result

    rig.node.pipeline.step = timed_step
    messages = [ros_messages.frame_messages(f, 0.0) for f in frames]
    published = {}  # stamp nanoseconds -> publish wall time
    stop = threading.Event()
    proc = psutil.Process()

    def publisher():
        period, k, t_next = 1.0 / args.hz, 0, time.perf_counter()
        while not stop.is_set():
            msgs = messages[k % len(messages)]
            stamp = conv.sec_to_stamp(2000.0 + k * period)
            for m in msgs.values():
                m.header.stamp = stamp
            published[stamp.sec * 10**9 + stamp.nanosec] = time.perf_counter()
            rig.publish(msgs)
            k += 1
            t_next += period
            time.sleep(max(0.0, t_next - time.perf_counter()))
        return k

    thread = threading.Thread(target=publisher, daemon=True)
    end = time.monotonic() + args.minutes * 60
    rss = []
    thread.start()
    t_start = time.monotonic()
    next_sample = t_start
    try:
        while time.monotonic() < end and rclpy.ok():
            rig.executor.spin_once(timeout_sec=0.01)
            if time.monotonic() >= next_sample:
                rss.append((time.monotonic() - t_start, proc.memory_info().rss / 2**20))
                next_sample += 10.0
    finally:
        stop.set()
        thread.join(2)
    lat = np.array(
        [
            (arrived - published[key]) * 1e3
            for key, arrived in zip(rig.stamps, rig.arrival["instances"])
            if key in published
        ]
    )
    kf_ms = np.array([ms for kf, ms in steps if kf])
    other_ms = np.array([ms for kf, ms in steps if not kf])
    drops = rig.node.drops()
    n_pub = len(published)
    rig.close()
    bound = 2 * args.stage_ms
    rss_arr = np.array(rss)
    warm = rss_arr[rss_arr[:, 0] >= min(60.0, rss_arr[-1, 0] / 2)]
    print(
        f"part 2: {args.minutes:g} min at {args.hz:g} Hz, {args.hw[1]}x{args.hw[0]}, stage {args.stage_ms:g} ms per "
        f"keyframe ({slow.calls} stage calls), queue_size {args.queue_size}"
    )
    print(f"  published {n_pub} frames, {len(lat)} outputs ({len(lat) / max(n_pub, 1):.0%}); drops {drops}")
    print(
        f"  output latency: median {np.median(lat):.0f} ms, p95 {np.percentile(lat, 95):.0f} ms, p99 "
        f"{np.percentile(lat, 99):.0f} ms, max {lat.max():.0f} ms; over 2x stage ({bound:g} ms): "
        f"{int((lat > bound).sum())} of {len(lat)}"
    )
    print(
        f"  pipeline step (wall, includes the stage): keyframes median {np.median(kf_ms):.0f} ms, p99 "
        f"{np.percentile(kf_ms, 99):.0f} ms, max {kf_ms.max():.0f} ms; other frames median "
        f"{np.median(other_ms):.1f} ms"
    )
    print(
        f"  RSS: start {rss_arr[0, 1]:.0f} MiB, after warm-up {warm[0, 1]:.0f} MiB, end {rss_arr[-1, 1]:.0f} MiB "
        f"(max {rss_arr[:, 1].max():.0f}); samples every 10 s: "
        + " ".join(f"{v:.0f}" for v in rss_arr[:: max(1, len(rss_arr) // 12), 1])
    )
    return lat, rss_arr


def main():
    args = parse_args()
    from rig import init_ros

    init_ros(args.domain_id)
    t = time.perf_counter()
    frames = render_frames(30, args.hw)
    print(f"rendered {len(frames)} frames at {args.hw[1]}x{args.hw[0]} in {time.perf_counter() - t:.1f} s")
    part1(args, frames)
    part1(args, frames, compressed=True)
    if args.minutes > 0:
        part2(args, frames)
    import rclpy

    rclpy.try_shutdown()


if __name__ == "__main__":
    main()
