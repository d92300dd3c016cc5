#!/usr/bin/env python3
"""Export the paper's torch models to ONNX files for the `onnx` backends (ONNX Runtime: CPU, CUDA, TensorRT).

  # SAM2 image encoder + prompt decoder pair -> sam2_tiny.encoder.onnx, sam2_tiny.decoder.onnx
  python scripts/export_onnx.py sam2 --size tiny --checkpoint sam2.1_hiera_tiny.pt --out weights/sam2_tiny
  #   then: --set perception.segmenter.name=onnx --set perception.segmenter.model=weights/sam2_tiny.encoder.onnx
  # DINOv2 feature map at a fixed input size (multiples of 14)
  python scripts/export_onnx.py dinov2 --model facebook/dinov2-small --height 448 --width 588 \
      --out weights/dinov2_s.onnx
  # YOLO-World with the vocabulary baked in (needs ultralytics + torchvision, and CLIP weights on first use)
  python scripts/export_onnx.py yolo_world --weights yolov8s-worldv2.pt --vocabulary "chair,table,mug" \
      --out weights/yolo_world_s.onnx

Each export is checked after writing: the ONNX Runtime output is compared with the torch output on a random
input and the max abs difference is printed (exit 1 above --tolerance). --random-weights builds the
architecture without a checkpoint (offline timing and tests)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def ort_session(path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def cmd_sam2(args) -> float:
    import torch

    from ros2_opentrack.perception import onnx_export as X
    from ros2_opentrack.perception.sam2_segmenter import build_sam2_model, parse_model

    if args.random_weights == bool(args.checkpoint):
        raise SystemExit("sam2: give --checkpoint PATH or --random-weights")
    if args.tiny_test_model:
        from sam2.build_sam import build_sam2

        torch.manual_seed(0)
        overrides = X.TINY_SAM2_OVERRIDES + [f"++model.image_size={args.image_size or 128}"]
        model = build_sam2(parse_model(args.size).config, None, device="cpu", hydra_overrides_extra=overrides)
    else:
        model = build_sam2_model(args.size, args.checkpoint, "cpu", args.image_size)
    enc, dec = X.export_sam2(args.out, model=model, multimask=not args.single_mask, opset=args.opset)
    s = int(model.image_size)
    x = torch.rand(1, 3, s, s)
    with torch.no_grad():
        ref = X.Sam2Encoder.build(model)(x)
        coords = torch.tensor([[[s * 0.1, s * 0.2], [s * 0.6, s * 0.8]]])
        labels = torch.tensor([[2, 3]], dtype=torch.int32)
        ref_m, ref_i = X.Sam2Decoder.build(model, not args.single_mask)(*ref, coords, labels)
    got = ort_session(enc).run(None, {"image": x.numpy()})
    m, i = ort_session(dec).run(
        None,
        {
            "image_embed": got[0],
            "high_res_feats_0": got[1],
            "high_res_feats_1": got[2],
            "point_coords": coords.numpy(),
            "point_labels": labels.numpy(),
        },
    )
    d_enc = max(X.max_abs_diff(g, r) for g, r in zip(got, ref))
    d_dec = max(X.max_abs_diff(m, ref_m), X.max_abs_diff(i, ref_i))
    print(f"wrote {enc} and {dec} (image size {s})")
    print(f"max abs diff ONNX Runtime vs torch: encoder {d_enc:.2e}, decoder {d_dec:.2e}")
    return max(d_enc, d_dec)


def cmd_dinov2(args) -> float:
    import torch

    from ros2_opentrack.perception import onnx_export as X

    model = None
    if args.random_weights:
        from transformers import Dinov2Config, Dinov2Model

        torch.manual_seed(0)
        model = Dinov2Model(
            Dinov2Config(
                hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, patch_size=14
            )
        ).eval()
    else:
        from ros2_opentrack.perception.dinov2 import hub_id

        args.model = hub_id(args.model)
    path = X.export_dinov2(
        args.out, model=model, model_ref=args.model, height=args.height, width=args.width, opset=args.opset
    )
    if model is None:
        from transformers import Dinov2Model

        model = Dinov2Model.from_pretrained(str(args.model)).eval()
    x = torch.rand(1, 3, args.height, args.width)
    mean = torch.tensor(X.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(X.IMAGENET_STD).view(1, 3, 1, 1)
    n_prefix = 1 + int(getattr(model.config, "num_register_tokens", 0) or 0)
    with torch.no_grad():
        tokens = model(pixel_values=(x - mean) / std).last_hidden_state[0, n_prefix:]
    got = ort_session(path).run(None, {"images": x.numpy()})[0][0]
    diff = X.max_abs_diff(got.reshape(got.shape[0], -1).T, tokens)
    print(f"wrote {path} (features {list(got.shape)})")
    print(f"max abs diff ONNX Runtime vs torch: {diff:.2e}")
    return diff


def cmd_yolo_world(args) -> float:
    from ros2_opentrack.perception import onnx_export as X

    vocab = [v.strip() for v in args.vocabulary.split(",") if v.strip()]
    path = X.export_yolo_world(
        args.out, args.weights, vocab, image_size=args.image_size or 640, half=args.half, opset=args.opset
    )
    out = ort_session(path).run(
        None,
        {
            ort_session(path).get_inputs()[0].name: np.zeros(
                (1, 3, args.image_size or 640, args.image_size or 640), np.float32
            )
        },
    )
    print(f"wrote {path} (output {list(out[0].shape)}, classes: {', '.join(vocab)})")
    return 0.0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--tolerance", type=float, default=1e-3, help="fail when ONNX Runtime and torch differ more")
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("sam2", help="SAM2 encoder + decoder pair (sam2 package)")
    s.add_argument("--size", default="tiny", help="tiny | small | base_plus | large")
    s.add_argument("--checkpoint", help="sam2.1_hiera_<size>.pt")
    s.add_argument("--random-weights", action="store_true")
    s.add_argument("--image-size", type=int, default=None, help="encoder input size (default: the model's, 1024)")
    s.add_argument("--single-mask", action="store_true", help="decoder predicts 1 mask, not the best of 3")
    s.add_argument("--tiny-test-model", action="store_true", help="a shrunk trunk for tests (not a real size)")
    s.add_argument("--out", required=True, help="output prefix: writes <out>.encoder.onnx and <out>.decoder.onnx")
    d = sub.add_parser("dinov2", help="DINOv2 patch-feature map (transformers)")
    d.add_argument("--model", default="facebook/dinov2-small", help="hub id, local folder, or small|base|large")
    d.add_argument("--random-weights", action="store_true", help="tiny random config (offline tests)")
    d.add_argument("--height", type=int, default=448)
    d.add_argument("--width", type=int, default=588)
    d.add_argument("--out", required=True)
    y = sub.add_parser("yolo_world", help="YOLO-World with a baked vocabulary (ultralytics)")
    y.add_argument("--weights", default="yolov8s-worldv2.pt")
    y.add_argument("--vocabulary", required=True, help="comma-separated class names")
    y.add_argument("--image-size", type=int, default=640)
    y.add_argument("--half", action="store_true")
    y.add_argument("--out", required=True)
    args = p.parse_args(argv)
    diff = {"sam2": cmd_sam2, "dinov2": cmd_dinov2, "yolo_world": cmd_yolo_world}[args.what](args)
    if diff > args.tolerance:
        print(f"FAILED: difference {diff:.2e} above --tolerance {args.tolerance:.0e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
