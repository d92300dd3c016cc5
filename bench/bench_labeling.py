#!/usr/bin/env python3
"""Instances labelled per second by the MLLM labeller (transformers transport), batched vs one request at a time.

Random weights with the real architecture and size of Qwen3-VL-2B / 4B (the timing is what matters; no weights
can be downloaded here), K red-boxed full images per instance, closed-vocabulary prompt. Generation is forced to
``--new-tokens`` tokens per answer (random weights would stop at random), so the figure is an upper bound on the
cost of a real short answer. Full sizes need a GPU; ``--tiny`` runs a 32-wide model for a quick CPU check.

  python bench/bench_labeling.py --tiny
  python bench/bench_labeling.py --size 4b --instances 32 --batch 8     # on a GPU
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "test"))

from ros2_opentrack.config import DEFAULT_VOCABULARY  # noqa: E402
from ros2_opentrack.perception.base import LabelRequest  # noqa: E402
from ros2_opentrack.perception.mllm import MllmLabeler, TransformersTransport  # noqa: E402
from ros2_opentrack.views import draw_red_box  # noqa: E402

# Published Qwen3-VL sizes (config.json of the Instruct checkpoints).
SIZES = {
    "2b": dict(
        text=dict(
            hidden_size=2048,
            intermediate_size=6144,
            num_hidden_layers=28,
            num_attention_heads=16,
            num_key_value_heads=8,
        ),
        tie=True,
    ),
    "4b": dict(
        text=dict(
            hidden_size=2560,
            intermediate_size=9728,
            num_hidden_layers=36,
            num_attention_heads=32,
            num_key_value_heads=8,
        ),
        tie=True,
    ),
}
VISION = dict(
    depth=24,
    hidden_size=1024,
    intermediate_size=4096,
    num_heads=16,
    patch_size=16,
    spatial_merge_size=2,
    temporal_patch_size=2,
    num_position_embeddings=2304,
    deepstack_visual_indexes=[5, 11, 17],
)


def full_size_model(size: str, tokenizer, dtype):
    import torch
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    spec = SIZES[size]
    text = dict(
        spec["text"],
        vocab_size=151936,
        head_dim=128,
        max_position_embeddings=32768,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 5000000.0,
            "mrope_section": [24, 20, 20],
            "mrope_interleaved": True,
        },
    )
    vision = dict(VISION, out_hidden_size=spec["text"]["hidden_size"])
    ids = {
        k: tokenizer.convert_tokens_to_ids(t)
        for k, t in [
            ("image_token_id", "<|image_pad|>"),
            ("video_token_id", "<|video_pad|>"),
            ("vision_start_token_id", "<|vision_start|>"),
            ("vision_end_token_id", "<|vision_end|>"),
        ]
    }
    config = Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=spec["tie"], **ids)
    torch.set_default_dtype(dtype)
    try:
        model = Qwen3VLForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(torch.float32)
    return model.eval()


def build_labeler(args):
    import torch
    from support.tiny_qwen_vl import build_model, build_processor, build_tokenizer

    from ros2_opentrack.perception.devices import resolve_device

    device = resolve_device(args.device, "bench")
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    tokenizer = build_tokenizer()
    if args.tiny:
        processor = build_processor(tokenizer, "qwen3_vl", max_pixels=args.hw[0] * args.hw[1])
        model = build_model(tokenizer, "qwen3_vl")
    else:
        processor = build_processor(tokenizer, "qwen3_vl", max_pixels=16384 * 32 * 32)  # Qwen3-VL default
        with torch.device(device):
            model = full_size_model(args.size, tokenizer, dtype)
    model = model.to(device)
    model.generation_config.min_new_tokens = args.new_tokens  # random weights: no early stop
    params = sum(p.numel() for p in model.parameters()) / 1e9
    transport = TransformersTransport(model, processor, device, max_new_tokens=args.new_tokens)
    return MllmLabeler(transport, max_batch=args.batch), device, params


def make_requests(n: int, k: int, hw, seed: int = 0):
    rng = np.random.default_rng(seed)
    requests = []
    for i in range(n):
        images = []
        for _ in range(k):
            image = rng.integers(0, 256, (hw[0], hw[1], 3), dtype=np.uint8)
            x0, y0 = rng.integers(0, hw[1] // 2), rng.integers(0, hw[0] // 2)
            images.append(draw_red_box(image, (x0, y0, x0 + hw[1] // 3, y0 + hw[0] // 3)))
        requests.append(LabelRequest(track_id=i, images=images, choices=list(DEFAULT_VOCABULARY)))
    return requests


def timed(labeler, requests, batch, device):
    import torch

    labeler.max_batch = batch
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    results = labeler.label(requests)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    errors = sum(r.error is not None and "names none" not in r.error for r in results)
    return elapsed, errors


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="4b", help="Qwen3-VL size (paper: 4B)")
    parser.add_argument("--tiny", action="store_true", help="a 32-wide 2-layer model: quick CPU check")
    parser.add_argument("--instances", type=int, default=16, help="instances to label per measurement")
    parser.add_argument("--batch", type=int, default=8, help="requests per batched generate")
    parser.add_argument("--k", type=int, default=1, help="views per instance (paper: K=1, 3 on ScanNet200)")
    parser.add_argument("--hw", type=int, nargs=2, default=(480, 640), metavar=("H", "W"), help="image size")
    parser.add_argument("--new-tokens", type=int, default=8, help="tokens generated per answer")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    args = parser.parse_args(argv)
    if args.tiny:
        args.hw = (min(args.hw[0], 96), min(args.hw[1], 128))

    labeler, device, params = build_labeler(args)
    name = "tiny Qwen3-VL" if args.tiny else f"Qwen3-VL-{args.size.upper()}-sized"
    print(
        f"{name} ({params:.3f} B params, random weights) on {device}; {args.instances} instances, K={args.k}, "
        f"{args.hw[1]}x{args.hw[0]} images, {args.new_tokens} new tokens"
    )
    if not args.tiny and not device.startswith("cuda"):
        print("note: full-size figures on a CPU are not representative; run on a GPU")
    requests = make_requests(args.instances, args.k, args.hw)
    labeler.label(requests[: min(2, len(requests))])  # warm-up (kernels, allocator)
    for label, batch in ((f"batched (max_batch={args.batch})", args.batch), ("one request at a time", 1)):
        elapsed, errors = timed(labeler, requests, batch, device)
        print(
            f"{label:28s} {args.instances / elapsed:8.2f} instances/s  {1000 * elapsed / args.instances:9.1f} "
            f"ms/instance  transport errors: {errors}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
