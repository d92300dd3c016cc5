"""Export the torch models of the paper's pipeline to ONNX files the ``onnx`` backends load, so a robot runs them
on ONNX Runtime (CPU, CUDA or TensorRT execution providers) without torch, torchvision, ultralytics or sam2.
``scripts/export_onnx.py`` is the command line over these functions.

- YOLO-World (ultralytics) with the vocabulary baked in -> detector 'onnx' (raw YOLOv8 head, names metadata).
- SAM2 (sam2 package) -> ``<prefix>.encoder.onnx`` + ``<prefix>.decoder.onnx`` -> segmenter 'onnx'
  (interface in perception/onnx_segmenter.py).
- DINOv2 (transformers) -> a feature map [1, D, H/14, W/14] with normalisation inside -> features 'onnx'.
Every export writes metadata_props the backends read (names, stride, image_size, input_scale, ...)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from .devices import IMAGENET_MEAN, IMAGENET_STD

# The packaged hiera-tiny config shrunk for tests and smoke exports (16-d trunk, 5 blocks; the mask decoder keeps
# its size): hydra overrides for build_sam2, without the image size. Not a real model size.
TINY_SAM2_OVERRIDES = [
    "++model.image_encoder.trunk.embed_dim=16",
    "++model.image_encoder.trunk.stages=[1,1,2,1]",
    "++model.image_encoder.trunk.global_att_blocks=[3]",
    "++model.image_encoder.trunk.window_spec=[8,4,4,2]",
    "++model.image_encoder.neck.backbone_channel_list=[128,64,32,16]",
    "++model.memory_attention.num_layers=1",
]


log = logging.getLogger(__name__)


def add_metadata(path: Path, meta: Dict[str, Any]) -> None:
    """Write key/value strings into an ONNX file's metadata_props (replacing keys that exist)."""
    import onnx

    model = onnx.load(str(path))
    keep = [p for p in model.metadata_props if p.key not in meta]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    onnx.save(model, str(path))


def _export(
    module: Any, args: Tuple, path: Path, input_names, output_names, dynamic_axes=None, opset: int = 17
) -> Path:
    """torch.onnx.export with the TorchScript exporter (robust for SAM2's and DINOv2's Python control flow)."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            dynamo=False,
            do_constant_folding=True,
        )
    return path


# ------------------------------------------------------------------------------------------------------ SAM2
class Sam2Encoder:
    """torch module factory: image [1, 3, S, S] RGB 0..1 -> image_embed, high_res_feats_0, high_res_feats_1."""

    @staticmethod
    def build(model: Any):
        import torch

        class Encoder(torch.nn.Module):
            def __init__(self, sam):
                super().__init__()
                self.sam = sam
                self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
                self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

            def forward(self, image):
                sam = self.sam
                backbone_out = sam.forward_image((image - self.mean) / self.std)
                _, feats, _, sizes = sam._prepare_backbone_features(backbone_out)
                if sam.directly_add_no_mem_embed:
                    feats[-1] = feats[-1] + sam.no_mem_embed
                maps = [f.permute(1, 2, 0).reshape(1, -1, s[0], s[1]) for f, s in zip(feats, sizes)]
                return maps[-1], maps[0], maps[1]

        return Encoder(model).eval()


class Sam2Decoder:
    """torch module factory: embeddings + B box prompts as 2 corner points (labels 2, 3) -> low-res mask logits
    [B, M, S/4, S/4] and predicted IoU [B, M] (M = 3 with multimask, else 1)."""

    @staticmethod
    def build(model: Any, multimask: bool = True):
        import torch

        class Decoder(torch.nn.Module):
            def __init__(self, sam):
                super().__init__()
                self.sam = sam
                self.multimask = multimask

            def forward(self, image_embed, high_res_feats_0, high_res_feats_1, point_coords, point_labels):
                sam = self.sam
                sparse, dense = sam.sam_prompt_encoder(points=(point_coords, point_labels), boxes=None, masks=None)
                low_res, iou, _, _ = sam.sam_mask_decoder(
                    image_embeddings=image_embed,
                    image_pe=sam.sam_prompt_encoder.get_dense_pe(),
                    sparse_prompt_embeddings=sparse,
                    dense_prompt_embeddings=dense,
                    multimask_output=self.multimask,
                    repeat_image=True,
                    high_res_features=[high_res_feats_0, high_res_feats_1],
                )
                return low_res, iou

        return Decoder(model).eval()


def export_sam2(
    prefix: str | Path,
    model: Any = None,
    size: str = "tiny",
    checkpoint: Optional[str] = None,
    image_size: Optional[int] = None,
    multimask: bool = True,
    opset: int = 17,
) -> Tuple[Path, Path]:
    """SAM2 -> (<prefix>.encoder.onnx, <prefix>.decoder.onnx). ``model`` (a SAM2Base) or the sam2 package's
    packaged config of ``size`` with ``checkpoint`` (None: random weights, for tests and timing)."""
    import torch

    if model is None:
        from .sam2_segmenter import build_sam2_model

        model = build_sam2_model(size, checkpoint, "cpu", image_size)
    model = model.to("cpu").eval()
    s = int(model.image_size)
    prefix = Path(prefix)
    enc_path = prefix.parent / f"{prefix.name}.encoder.onnx"
    dec_path = prefix.parent / f"{prefix.name}.decoder.onnx"
    encoder = Sam2Encoder.build(model)
    image = torch.rand(1, 3, s, s)
    _export(
        encoder, (image,), enc_path, ["image"], ["image_embed", "high_res_feats_0", "high_res_feats_1"], opset=opset
    )
    with torch.no_grad():
        embed, h0, h1 = encoder(image)
    decoder = Sam2Decoder.build(model, multimask)
    coords = torch.tensor([[[10.0, 12.0], [s * 0.6, s * 0.7]], [[s * 0.2, s * 0.1], [s * 0.9, s * 0.5]]])
    labels = torch.tensor([[2, 3], [2, 3]], dtype=torch.int32)
    _export(
        decoder,
        (embed, h0, h1, coords, labels),
        dec_path,
        ["image_embed", "high_res_feats_0", "high_res_feats_1", "point_coords", "point_labels"],
        ["masks", "iou_predictions"],
        dynamic_axes={
            "point_coords": {0: "boxes"},
            "point_labels": {0: "boxes"},
            "masks": {0: "boxes"},
            "iou_predictions": {0: "boxes"},
        },
        opset=opset,
    )
    common = {
        "model": "sam2",
        "image_size": str(s),
        "input_scale": "0..1 RGB",
        "normalization": "ImageNet mean/std inside the graph",
    }
    add_metadata(
        enc_path,
        {
            **common,
            "role": "sam2 image encoder",
            "outputs": "image_embed [1,256,S/16,S/16], high_res_feats_0 [1,32,S/4,S/4], "
            "high_res_feats_1 [1,64,S/8,S/8]",
        },
    )
    add_metadata(
        dec_path,
        {
            **common,
            "role": "sam2 prompt encoder + mask decoder",
            "multimask": "true" if multimask else "false",
            "prompts": "point_coords [B,2,2] box corners (x0,y0),(x1,y1) in encoder input pixels; "
            "point_labels [B,2] int32 = 2, 3",
            "outputs": "masks [B,M,S/4,S/4] logits, iou_predictions [B,M]",
        },
    )
    return enc_path, dec_path


# ---------------------------------------------------------------------------------------------------- DINOv2
def export_dinov2(
    path: str | Path,
    model: Any = None,
    model_ref: str = "facebook/dinov2-small",
    height: int = 448,
    width: int = 588,
    opset: int = 17,
    perception_cfg: Any = None,
) -> Path:
    """DINOv2 -> features [1, D, H/14, W/14] (patch tokens as a map), input RGB 0..1 [1, 3, H, W] fixed
    (H, W multiples of the patch; the backend resizes frames to it), ImageNet normalisation inside."""
    import torch

    if model is None:
        from transformers import Dinov2Model

        from .weights import from_pretrained

        model = from_pretrained(Dinov2Model.from_pretrained, model_ref, "export (dinov2)", perception_cfg)
    model = model.to("cpu", torch.float32).eval()
    patch = int(model.config.patch_size)
    if height % patch or width % patch:
        raise ValueError(f"DINOv2 export: {height}x{width} is not a multiple of the patch {patch}")
    n_prefix = 1 + int(getattr(model.config, "num_register_tokens", 0) or 0)
    gh, gw = height // patch, width // patch

    class FeatureMap(torch.nn.Module):
        def __init__(self, backbone):
            super().__init__()
            self.backbone = backbone
            self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

        def forward(self, images):
            hidden = self.backbone(pixel_values=(images - self.mean) / self.std).last_hidden_state
            tokens = hidden[:, n_prefix:]
            return tokens.reshape(1, gh, gw, tokens.shape[-1]).permute(0, 3, 1, 2)

    wrapper = FeatureMap(model).eval()
    path = _export(wrapper, (torch.rand(1, 3, height, width),), Path(path), ["images"], ["features"], opset=opset)
    add_metadata(
        path,
        {
            "stride": str(patch),
            "input_scale": "0..1 RGB",
            "model": "dinov2",
            "normalization": "ImageNet mean/std inside the graph",
            "output": f"features [1,{model.config.hidden_size},{gh},{gw}] patch tokens",
        },
    )
    return path


# ------------------------------------------------------------------------------------------------ YOLO-World
def export_yolo_world(
    path: str | Path,
    weights: str = "yolov8s-worldv2.pt",
    vocabulary: Sequence[str] = (),
    image_size: int = 640,
    half: bool = False,
    opset: int = 17,
) -> Path:
    """YOLO-World with ``vocabulary`` baked in (set_classes runs the CLIP text tower once) -> an ONNX file with
    the raw YOLOv8 head [1, 4 + nc, anchors] and ultralytics' ``names`` metadata (= the vocabulary), which
    detector 'onnx' reads. Needs ultralytics (and so torchvision) and the CLIP weights ultralytics downloads on
    first use: run it on a connected machine, copy the .onnx to the robot. (Written against the ultralytics
    API; not runnable on machines where ultralytics cannot import.)"""
    from .yolo_world import require_ultralytics

    require_ultralytics()
    import shutil

    from ultralytics import YOLOWorld

    from .owlv2 import check_vocabulary

    classes = check_vocabulary(list(vocabulary))
    model = YOLOWorld(weights)
    model.set_classes(classes)
    exported = model.export(
        format="onnx", imgsz=image_size, opset=opset, half=half, simplify=False, dynamic=False, nms=False
    )
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    if Path(exported).resolve() != out.resolve():
        shutil.move(str(exported), str(out))
    add_metadata(
        out,
        {
            "names": json.dumps(classes),
            "input_scale": "0..1 RGB",
            "vocabulary": ", ".join(classes),
            "source": f"YOLO-World {weights} (ultralytics)",
        },
    )
    return out


def max_abs_diff(a: Any, b: Any) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
