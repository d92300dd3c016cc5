#!/usr/bin/env python3
"""Per-stage time per keyframe of the CPU profile (config/cpu.yaml) on real 640x480 frames, models included:
NanoDet-m detector (ONNX Runtime) -> box_depth segmenter -> EfficientNet-Lite0 mask features (ONNX Runtime) ->
lifting, DBSCAN, tracking, refinement (the pipeline's own stage timers). Every frame is a keyframe here.

  python bench/bench_cpu_profile.py --models /path/to/models [--scene <7-Scenes or ScanNet folder>] [--frames 60]
  python bench/bench_cpu_profile.py --models DIR --compare-torch   # + ONNX vs torch, random-weight SAM2 / DINOv2

--models is the folder with detector_nanodet_m_coco.onnx (+ .classes.txt) and features_efficientnet_lite0.onnx
(it becomes perception.weights_dir). Target on a 2-core CPU: >= 5 keyframes/s."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class Timed:
    """Wraps a backend; records the milliseconds of each call of ``method`` into ``sink[name]``."""

    def __init__(self, inner, method: str, name: str, sink: Dict[str, float]):
        self._inner, self._method, self._name, self._sink = inner, method, name, sink

    def __getattr__(self, attr):
        value = getattr(self._inner, attr)
        if attr != self._method:
            return value

        def call(*args, **kwargs):
            t = time.perf_counter()
            out = value(*args, **kwargs)
            self._sink[self._name] = self._sink.get(self._name, 0.0) + (time.perf_counter() - t) * 1000.0
            return out

        return call


def bench_profile(args) -> None:
    from ros2_opentrack.config import load_config
    from ros2_opentrack.io import open_scene
    from ros2_opentrack.perception.model_source import ModelMaskSource
    from ros2_opentrack.perception.registry import build
    from ros2_opentrack.pipeline import Pipeline

    sets = {"perception.weights_dir": str(args.models), "keyframes.every_n": 1}
    for item in args.set:
        k, _, v = item.partition("=")
        sets[k] = v
    cfg = load_config(ROOT / "config" / "cpu.yaml", sets)
    p = cfg.perception
    sink: Dict[str, float] = {}
    det = Timed(build("detector", p.detector, p), "detect", "detector", sink)
    seg = build("segmenter", p.segmenter, p)
    seg_t = Timed(seg, "segment", "segmenter", sink)
    feats = Timed(build("features", p.features, p), "extract", "features", sink)
    source = ModelMaskSource(det, seg_t)
    source.segmenter = seg_t
    pipe = Pipeline(cfg, mask_source=source, features=feats)
    reader = open_scene(args.scene, stride=args.stride, max_frames=args.frames + args.warmup)
    rows: List[Dict[str, float]] = []
    n_masks = []
    for i, frame in enumerate(reader):
        sink.clear()
        res = pipe.step(frame)
        if i < args.warmup or not res.keyframe:
            continue
        row = dict(res.timings_ms)
        row.update(sink)
        row["masks(rest)"] = row.get("masks", 0.0) - sink.get("detector", 0.0) - sink.get("segmenter", 0.0)
        rows.append(row)
        n_masks.append(getattr(res, "n_masks", 0) or 0)
    keys = (
        ["detector", "segmenter", "masks(rest)", "features"]
        + sorted(k for k in rows[0] if k not in ("detector", "segmenter", "masks(rest)", "features", "masks", "total"))
        + ["total"]
    )
    h, w = frame.rgb.shape[:2]
    print(
        f"CPU profile, {len(rows)} keyframes of {args.scene} at {w}x{h} (after {args.warmup} warm-up), "
        f"models from {args.models}"
    )
    print(f"{'stage':<14}{'median ms':>10}{'mean ms':>10}")
    for k in keys:
        v = [r.get(k, 0.0) for r in rows]
        print(f"{k:<14}{statistics.median(v):>10.1f}{statistics.mean(v):>10.1f}")
    total = [r["total"] for r in rows]
    print(
        f"keyframes/s   {1000.0 / statistics.median(total):.2f} (median), "
        f"{1000.0 / statistics.mean(total):.2f} (mean)"
        f"   instances so far: {len(pipe.instances())}"
    )
    throughput(cfg, args)


def throughput(cfg, args) -> None:
    """Wall-clock keyframes/s over the same in-memory frames: stages one after the other (their sum) vs
    overlapped (segment / describe / track of consecutive keyframes in three threads: the slowest stage)."""
    from ros2_opentrack.io import open_scene
    from ros2_opentrack.overlap import run_overlapped
    from ros2_opentrack.pipeline import Pipeline

    frames = list(open_scene(args.scene, stride=args.stride, max_frames=args.frames + args.warmup))
    rates = {}
    for name in ("sequential", "overlapped"):
        pipe = Pipeline(cfg)
        for f in frames[: args.warmup]:
            pipe.step(f)
        t0 = time.perf_counter()
        if name == "sequential":
            results = [pipe.step(f) for f in frames[args.warmup :]]
        else:
            results = list(run_overlapped(pipe, frames[args.warmup :]))
        seconds = time.perf_counter() - t0
        rates[name] = sum(r.keyframe for r in results) / seconds
        pipe.close()
    print(
        f"throughput    sequential {rates['sequential']:.2f} keyframes/s, overlapped {rates['overlapped']:.2f} "
        f"keyframes/s ({rates['overlapped'] / rates['sequential']:.2f}x)"
    )


def _time(fn, repeat: int) -> float:
    fn()
    t = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        t.append(time.perf_counter() - t0)
    return statistics.median(t) * 1000.0


def compare_torch(args) -> None:
    """ONNX Runtime vs eager torch (CPU, fp32) for the same random-weight SAM2 hiera-tiny and DINOv2-S."""
    import tempfile

    import torch

    from ros2_opentrack.perception import onnx_export as X
    from ros2_opentrack.perception.dinov2 import Dinov2Features
    from ros2_opentrack.perception.onnx_features import OnnxFeatures
    from ros2_opentrack.perception.onnx_runtime import make_session
    from ros2_opentrack.perception.onnx_segmenter import OnnxSam2Segmenter
    from ros2_opentrack.perception.sam2_segmenter import Sam2Segmenter, build_sam2_model

    rgb = np.random.default_rng(0).integers(0, 255, (480, 640, 3), np.uint8)
    boxes = np.array([[100, 100, 200, 220], [300, 50, 500, 300], [10, 300, 200, 470], [400, 350, 600, 450]], np.float32)
    tmp = Path(tempfile.mkdtemp(prefix="bench_onnx_"))
    torch.manual_seed(0)
    size = args.sam2_image_size
    sam = build_sam2_model("tiny", None, "cpu", size)
    enc, dec = X.export_sam2(tmp / "sam2_tiny", model=sam)
    onnx_seg = OnnxSam2Segmenter(make_session(enc, "cpu"), make_session(dec, "cpu"))
    torch_seg = Sam2Segmenter(sam, "cpu")
    with torch.inference_mode():
        t_torch = _time(lambda: torch_seg.segment(rgb, boxes), args.repeat)
    t_onnx = _time(lambda: onnx_seg.segment(rgb, boxes), args.repeat)
    print(f"SAM2 hiera-tiny {size}px, 4 boxes: torch {t_torch:.0f} ms, ONNX Runtime {t_onnx:.0f} ms")
    from transformers import Dinov2Config, Dinov2Model

    dino = Dinov2Model(
        Dinov2Config(
            hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536, patch_size=14
        )
    ).eval()
    hh, ww = 448, 588  # what Dinov2Features(image_size=448) feeds for 640x480
    path = X.export_dinov2(tmp / "dinov2_s.onnx", model=dino, height=hh, width=ww)
    onnx_f = OnnxFeatures(make_session(path, "cpu"))
    torch_f = Dinov2Features(dino, image_size=448, device="cpu")
    masks = np.zeros((4, 480, 640), bool)
    for m, (x0, y0, x1, y1) in zip(masks, boxes.astype(int)):
        m[y0:y1, x0:x1] = True
    t_torch = _time(lambda: torch_f.extract(rgb, masks), args.repeat)
    t_onnx = _time(lambda: onnx_f.extract(rgb, masks), args.repeat)
    cos = float(np.min(np.sum(torch_f.extract(rgb, masks) * onnx_f.extract(rgb, masks), axis=1)))
    print(
        f"DINOv2-S/14 {hh}x{ww}, 4 masks: torch {t_torch:.0f} ms, ONNX Runtime {t_onnx:.0f} ms "
        f"(min cosine torch vs ONNX descriptors {cos:.5f})"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_models = ROOT.parent / "shared" / "models"
    default_scene = ROOT.parent / "shared" / "data" / "7scenes_redkitchen"
    ap.add_argument("--models", type=Path, default=default_models if default_models.is_dir() else None)
    ap.add_argument("--scene", type=Path, default=default_scene if default_scene.is_dir() else None)
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--stride", type=int, default=5)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--compare-torch", action="store_true")
    ap.add_argument("--sam2-image-size", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    if args.models is None or args.scene is None:
        ap.error("give --models DIR (the .onnx files) and --scene FOLDER")
    bench_profile(args)
    if args.compare_torch:
        compare_torch(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
