"""SAM2 box-prompted segmentation: all boxes of a frame in one batched call (image encoder once, prompt encoder
and mask decoder batched over the boxes), best-of-3 by predicted IoU.

SAM2ImagePredictor imports torchvision, so the image preprocessing (resize to the model's square input,
ImageNet normalisation) and the mask post-processing (upsample the logits to the image, threshold) are done
here in torch; the model itself is the sam2 package's, built from its packaged sam2.1 configs."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, Optional, Tuple

import numpy as np

from ..errors import BackendUnavailable, ConfigError
from .base import Requirements
from .devices import IMAGENET_MEAN, IMAGENET_STD, check_rgb, resolve_device, use_half
from .onnx_segmenter import clip_boxes

log = logging.getLogger(__name__)

# size -> (config suffix, checkpoint/hub name part)
SIZES = {"tiny": ("t", "tiny"), "small": ("s", "small"), "base_plus": ("b+", "base_plus"), "large": ("l", "large")}
_ALIASES = {
    "t": "tiny",
    "tiny": "tiny",
    "s": "small",
    "small": "small",
    "b+": "base_plus",
    "base_plus": "base_plus",
    "base-plus": "base_plus",
    "baseplus": "base_plus",
    "b": "base_plus",
    "l": "large",
    "large": "large",
}


@dataclass
class Sam2Model:
    """What a segmenter.model reference means: the size, its packaged config, checkpoint file and hub repo."""

    size: str
    config: str
    checkpoint: str  # a file name (looked up in weights_dir) or a path
    repo: str

    @property
    def filename(self) -> str:
        return f"sam2.1_hiera_{SIZES[self.size][1]}.pt"


def parse_model(ref: str) -> Sam2Model:
    """'large' | 'sam2.1_hiera_large' | 'sam2.1_hiera_l' | '/path/sam2.1_hiera_tiny.pt' -> Sam2Model."""
    text = ref.strip()
    stem = re.sub(r"\.(pt|pth)$", "", text.split("/")[-1].lower())
    token = re.sub(r"^sam2(\.1)?[_-]hiera[_-]", "", stem)
    size = _ALIASES.get(token)
    if size is None:
        raise ConfigError(
            f"segmenter.model = {ref!r}: expected a SAM2 size (tiny, small, base_plus, large), "
            f"'sam2.1_hiera_<size>' or a checkpoint path whose name contains the size"
        )
    short, long = SIZES[size]
    is_path = text.endswith((".pt", ".pth")) or "/" in text
    checkpoint = text if is_path else f"sam2.1_hiera_{long}.pt"
    return Sam2Model(
        size, f"configs/sam2.1/sam2.1_hiera_{short}.yaml", checkpoint, f"facebook/sam2.1-hiera-{long.replace('_', '-')}"
    )


def build_sam2_model(
    size: str = "tiny", checkpoint: Optional[str] = None, device: str = "cpu", image_size: Optional[int] = None
) -> Any:
    """The sam2 package's model from its packaged config; checkpoint None -> random weights (tests, timing)."""
    try:
        from sam2.build_sam import build_sam2
    except Exception as exc:
        raise BackendUnavailable(
            f"segmenter 'sam2' needs the sam2 package (pip install --no-deps sam2 "
            f"hydra-core iopath): {type(exc).__name__}: {exc}"
        ) from None
    spec = parse_model(size)
    overrides = [f"++model.image_size={int(image_size)}"] if image_size else []
    return build_sam2(spec.config, checkpoint, device=device, hydra_overrides_extra=overrides)


class Sam2Segmenter:
    """Segmenter over a SAM2Base model."""

    def __init__(
        self, model: Any, device: str = "cpu", half: bool = False, multimask: bool = True, mask_threshold: float = 0.0
    ):
        import torch

        self.model = model.to(device).eval()
        self.device = device
        self.half = use_half(device, half)
        self.multimask = multimask
        self.mask_threshold = mask_threshold
        self.image_size = int(model.image_size)
        self.degenerate_boxes = 0  # boxes with no area inside the image (empty masks returned for them)
        self._mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)

    @classmethod
    def build(
        cls,
        size: str = "tiny",
        checkpoint: Optional[str] = None,
        device: str = "cpu",
        half: bool = False,
        multimask: bool = True,
        image_size: Optional[int] = None,
    ) -> "Sam2Segmenter":
        return cls(build_sam2_model(size, checkpoint, device, image_size), device, half, multimask)

    @staticmethod
    def requirements(cfg: Any, perception_cfg: Any = None) -> Requirements:
        """A single checkpoint file of a hub repository; ConfigError when segmenter.model names no SAM2 size."""
        spec = parse_model(cfg.model)
        return Requirements(
            modules=("sam2.build_sam",), weights=spec.checkpoint, hub_file=spec.filename, hub_repo=spec.repo
        )

    @classmethod
    def from_config(cls, cfg: Any, perception_cfg: Any = None) -> "Sam2Segmenter":
        from .weights import hf_download, resolve_file

        spec = parse_model(cfg.model)
        device = resolve_device(cfg.device, "segmenter")
        ckpt = resolve_file(
            spec.checkpoint,
            "segmenter (sam2)",
            perception_cfg,
            repo=spec.repo,
            download=lambda: hf_download(spec.repo, spec.filename, perception_cfg),
        )
        try:
            model = build_sam2_model(spec.size, str(ckpt), device)
        except (RuntimeError, KeyError) as exc:
            raise BackendUnavailable(
                f"segmenter (sam2): checkpoint {ckpt} does not fit the {spec.size} model "
                f"({type(exc).__name__}: {exc}); set segmenter.model to its size"
            ) from None
        return cls(model, device, cfg.half, cfg.multimask)

    # -------------------------------------------------------------------------------------------------
    def preprocess(self, rgb: np.ndarray):
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(rgb).to(self.device).permute(2, 0, 1)[None].float().div_(255.0)
        x = F.interpolate(
            x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False, antialias=True
        )
        return (x - self._mean) / self._std

    def encode(self, pixels) -> dict:
        """Image encoder once per frame -> the embeddings the mask decoder reads (as SAM2ImagePredictor)."""
        model = self.model
        backbone_out = model.forward_image(pixels)
        _, feats, _, sizes = model._prepare_backbone_features(backbone_out)
        if model.directly_add_no_mem_embed:
            feats[-1] = feats[-1] + model.no_mem_embed
        maps = [f.permute(1, 2, 0).reshape(1, -1, *s) for f, s in zip(feats, sizes)]
        return {"image_embed": maps[-1], "high_res_feats": maps[:-1]}

    clip_boxes = staticmethod(clip_boxes)  # the onnx segmenter's: the same boxes are kept and clipped

    def segment(self, rgb: np.ndarray, boxes: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(masks (N, H, W) bool, predicted IoU (N,)). Degenerate boxes get an empty mask and IoU 0 (counted in
        degenerate_boxes) so the output stays aligned with the input boxes."""
        import torch

        rgb = check_rgb(rgb, "segmenter")
        h, w = rgb.shape[:2]
        clipped, keep = self.clip_boxes(boxes, (h, w))
        masks = np.zeros((len(clipped), h, w), bool)
        ious = np.zeros(len(clipped), np.float32)
        dropped = int((~keep).sum())
        if dropped:
            self.degenerate_boxes += dropped
            log.debug("segmenter: %d degenerate box(es) dropped", dropped)
        if not keep.any():
            return masks, ious
        with torch.inference_mode(), torch.autocast("cuda", dtype=self._autocast_dtype(), enabled=self.half):
            logits, scores = self._decode(rgb, clipped[keep])
            masks[keep] = (logits > self.mask_threshold).cpu().numpy()
        ious[keep] = scores.float().cpu().numpy()
        return masks, ious

    @staticmethod
    def _autocast_dtype():
        """Half precision under autocast (weights stay fp32): bfloat16 where the GPU has it, as SAM2's own demos
        do, since some Hiera activations overflow fp16; float16 on older GPUs."""
        import torch

        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float16

    def _decode(self, rgb: np.ndarray, boxes: np.ndarray):
        """One batched prompt-encoder + mask-decoder call -> (B, H, W) logits at image size, (B,) IoU."""
        import torch
        import torch.nn.functional as F

        model = self.model
        h, w = rgb.shape[:2]
        features = self.encode(self.preprocess(rgb))
        scale = torch.tensor([self.image_size / w, self.image_size / h], device=self.device)
        coords = torch.from_numpy(boxes).to(self.device).reshape(-1, 2, 2) * scale
        labels = torch.tensor([[2, 3]], dtype=torch.int, device=self.device).repeat(len(boxes), 1)
        sparse, dense = model.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        low_res, iou, _, _ = model.sam_mask_decoder(
            image_embeddings=features["image_embed"],
            image_pe=model.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=self.multimask,
            repeat_image=len(boxes) > 1,
            high_res_features=features["high_res_feats"],
        )
        best = iou.argmax(dim=1)  # (B,) best of the 3 (or the only) masks by predicted IoU
        rows = torch.arange(len(boxes), device=self.device)
        chosen = low_res[rows, best][:, None].float()
        logits = F.interpolate(chosen, size=(h, w), mode="bilinear", align_corners=False)[:, 0]
        return logits, iou[rows, best]
