"""SAM2 box-prompted segmentation on ONNX Runtime (``segmenter.name: onnx``): an image-encoder + prompt-decoder
pair, the encoder once per frame and ALL boxes of the frame in one decoder call. scripts/export_onnx.py writes
such a pair from the sam2 package (perception/onnx_export.py:export_sam2).

Files: ``segmenter.model`` names the encoder, ``<prefix>.encoder.onnx``; the decoder is ``<prefix>.decoder.onnx``
beside it (a folder holding ``encoder.onnx`` + ``decoder.onnx`` also works).

Encoder
  input  ``image``            float32 [1, 3, S, S]  RGB 0..1, the frame resized (no aspect kept) to S x S;
                                                     ImageNet normalisation is inside the graph
  output ``image_embed``      float32 [1, 256, S/16, S/16]  (no-memory embedding already added)
         ``high_res_feats_0`` float32 [1, 32, S/4, S/4]
         ``high_res_feats_1`` float32 [1, 64, S/8, S/8]
Decoder
  input  the three encoder outputs, and
         ``point_coords``     float32 [B, 2, 2]  each box as its 2 corner points (x0, y0), (x1, y1) in encoder input
                                                 pixels (frame pixels * S / W, * S / H)
         ``point_labels``     int32   [B, 2]     2, 3 (SAM's top-left / bottom-right box-corner labels)
  output ``masks``            float32 [B, M, S/4, S/4]  mask logits (M = 3 with multimask, else 1)
         ``iou_predictions``  float32 [B, M]
Metadata: ``image_size`` (S; else read from the encoder's input shape), ``multimask``.
The best of the M masks by predicted IoU is upsampled (bilinear) to the frame and thresholded at 0, as the torch
sam2 backend does."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Tuple

import numpy as np

from ..errors import BackendUnavailable
from .devices import check_rgb
from .onnx_runtime import backend_requirements, env_threads, fixed_hw, make_session, metadata, resolve_model

log = logging.getLogger(__name__)

ENCODER_OUTPUTS = ("image_embed", "high_res_feats_0", "high_res_feats_1")


def decoder_path(encoder: Path) -> Path:
    name = encoder.name
    if encoder.is_dir():
        return encoder / "decoder.onnx"
    if ".encoder." in name:
        return encoder.with_name(name.replace(".encoder.", ".decoder."))
    if "encoder" in name:
        return encoder.with_name(name.replace("encoder", "decoder"))
    return encoder.with_name(encoder.stem + ".decoder.onnx")


def clip_boxes(boxes: Any, hw: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
    """Boxes clipped to the image and a keep flag (finite, at least one pixel wide and high)."""
    from ..errors import InputError

    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 4), np.float32), np.zeros(0, bool)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise InputError(f"segmenter boxes must be (N, 4) x0, y0, x1, y1, got shape {arr.shape}")
    h, w = hw
    finite = np.isfinite(arr).all(axis=1)
    arr = np.where(finite[:, None], arr, 0.0)
    clipped = np.clip(arr, 0.0, [w, h, w, h])
    keep = finite & (clipped[:, 2] - clipped[:, 0] >= 1.0) & (clipped[:, 3] - clipped[:, 1] >= 1.0)
    return clipped.astype(np.float32), keep


class OnnxSam2Segmenter:
    """Segmenter protocol over a SAM2 encoder/decoder ONNX pair."""

    def __init__(self, encoder: Any, decoder: Any, mask_threshold: float = 0.0, name: str = "sam2-onnx"):
        self.encoder, self.decoder = encoder, decoder
        self.name = name
        self.mask_threshold = float(mask_threshold)
        self.degenerate_boxes = 0
        meta = {**metadata(decoder), **metadata(encoder)}
        fixed = fixed_hw(encoder.get_inputs()[0].shape)
        size = int(meta.get("image_size", 0) or 0) or (fixed[0] if fixed else 0)
        if not size:
            raise BackendUnavailable(
                f"segmenter (onnx): {name}: the encoder declares no image size (metadata "
                f"image_size or a fixed input shape)"
            )
        self.image_size = size
        self.input_name = encoder.get_inputs()[0].name
        names = [o.name for o in encoder.get_outputs()]
        missing = [n for n in ENCODER_OUTPUTS if n not in names]
        dec_inputs = {i.name for i in decoder.get_inputs()}
        if missing or not {*ENCODER_OUTPUTS, "point_coords", "point_labels"} <= dec_inputs:
            raise BackendUnavailable(
                f"segmenter (onnx): {name} does not follow the SAM2 encoder/decoder interface "
                f"(encoder outputs {names}, decoder inputs {sorted(dec_inputs)}; see "
                f"perception/onnx_segmenter.py)"
            )

    requirements = staticmethod(backend_requirements)

    @classmethod
    def from_config(cls, cfg: Any, perception_cfg: Any = None) -> "OnnxSam2Segmenter":
        enc_path = (
            resolve_model(cfg.model, "segmenter (onnx)", perception_cfg)
            if not Path(cfg.model).expanduser().is_dir()
            else Path(cfg.model).expanduser()
        )
        if enc_path.is_dir():
            enc_path = enc_path / "encoder.onnx"
        dec_path = decoder_path(enc_path)
        for p, what in ((enc_path, "encoder"), (dec_path, "decoder")):
            if not p.is_file():
                raise BackendUnavailable(
                    f"segmenter (onnx): SAM2 {what} {p} not found; export a pair with "
                    f"scripts/export_onnx.py sam2 --out <prefix>"
                )
        common = dict(
            device=cfg.device, perception_cfg=perception_cfg, half=cfg.half, threads=env_threads(perception_cfg)
        )
        enc = make_session(enc_path, role="segmenter (onnx) encoder", **common)
        dec = make_session(dec_path, role="segmenter (onnx) decoder", **common)
        return cls(enc, dec, name=enc_path.name.replace(".encoder.onnx", ""))

    # -------------------------------------------------------------------------------------------------
    def encode(self, rgb: np.ndarray) -> dict:
        import cv2

        s = self.image_size
        img = cv2.resize(rgb, (s, s), interpolation=cv2.INTER_AREA if min(rgb.shape[:2]) > s else cv2.INTER_LINEAR)
        x = (img.transpose(2, 0, 1)[None].astype(np.float32)) * np.float32(1.0 / 255.0)
        outs = self.encoder.run(list(ENCODER_OUTPUTS), {self.input_name: x})
        return dict(zip(ENCODER_OUTPUTS, outs))

    def decode(self, features: dict, boxes: np.ndarray, hw: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
        """(B, S/4, S/4) best low-res logits, (B,) predicted IoU for boxes in frame pixels."""
        h, w = hw
        s = self.image_size
        coords = (boxes.reshape(-1, 2, 2) * np.array([s / w, s / h], np.float32)).astype(np.float32)
        labels = np.tile(np.array([[2, 3]], np.int32), (len(boxes), 1))
        low, iou = self.decoder.run(
            ["masks", "iou_predictions"], {**features, "point_coords": coords, "point_labels": labels}
        )
        best = iou.argmax(axis=1)
        rows = np.arange(len(boxes))
        return low[rows, best], iou[rows, best]

    def segment(self, rgb: np.ndarray, boxes: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(masks (N, H, W) bool, predicted IoU (N,)); degenerate boxes get an empty mask and IoU 0."""
        import cv2

        rgb = check_rgb(rgb, "segmenter")
        h, w = rgb.shape[:2]
        clipped, keep = clip_boxes(boxes, (h, w))
        masks = np.zeros((len(clipped), h, w), bool)
        ious = np.zeros(len(clipped), np.float32)
        self.degenerate_boxes += int((~keep).sum())
        if not keep.any():
            return masks, ious
        logits, scores = self.decode(self.encode(rgb), clipped[keep], (h, w))
        for j, i in enumerate(np.flatnonzero(keep)):
            masks[i] = cv2.resize(logits[j], (w, h), interpolation=cv2.INTER_LINEAR) > self.mask_threshold
        ious[keep] = scores
        return masks, ious

    def logits(self, rgb: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """Full-size best-mask logits (B, H, W) of valid boxes (for comparisons with the torch backend)."""
        import cv2

        rgb = check_rgb(rgb, "segmenter")
        h, w = rgb.shape[:2]
        low, _ = self.decode(self.encode(rgb), np.asarray(boxes, np.float32), (h, w))
        return np.stack([cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR) for m in low])
