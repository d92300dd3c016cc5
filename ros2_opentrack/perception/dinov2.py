"""DINOv2 mask descriptors (paper 3.1): one backbone forward per frame, patch tokens averaged under each mask
on the device (mask area fraction per patch as weight), L2-normalised."""

from __future__ import annotations

import logging
from typing import Any, Optional, Tuple

import numpy as np

from ..errors import BackendUnavailable, ConfigError
from .base import Requirements
from .devices import IMAGENET_MEAN, IMAGENET_STD, check_masks, check_rgb, resolve_device, torch_dtype, use_half

log = logging.getLogger(__name__)

HUB_IDS = {
    "small": "facebook/dinov2-small",
    "s": "facebook/dinov2-small",
    "base": "facebook/dinov2-base",
    "b": "facebook/dinov2-base",
    "large": "facebook/dinov2-large",
    "l": "facebook/dinov2-large",
    "giant": "facebook/dinov2-giant",
    "g": "facebook/dinov2-giant",
}


def hub_id(model: str) -> str:
    return HUB_IDS.get(model.strip().lower(), model)


def grid_for(hw: Tuple[int, int], image_size: int, patch: int) -> Tuple[int, int]:
    """Patch grid (rows, cols): the shorter side becomes ~image_size, both sides multiples of the patch."""
    h, w = hw
    scale = image_size / min(h, w)
    return max(1, round(h * scale / patch)), max(1, round(w * scale / patch))


class Dinov2Features:
    """FeatureExtractor over a transformers Dinov2Model (any size; tests use a tiny random config)."""

    def __init__(
        self,
        model: Any,
        image_size: int = 448,
        device: str = "cpu",
        half: bool = False,
        tensorrt: bool = False,
        perception_cfg: Any = None,
        name: str = "dinov2",
    ):
        import torch

        if image_size < 1:
            raise ConfigError(f"features.image_size = {image_size}: expected a positive number of pixels")
        self.device = device
        self.dtype = torch_dtype(device, half)
        self.model = model.to(device=device, dtype=self.dtype).eval()
        config = model.config
        self.patch = int(config.patch_size)
        self.dim = int(config.hidden_size)
        self.n_prefix = 1 + int(getattr(config, "num_register_tokens", 0) or 0)  # CLS (+ registers)
        self.image_size = int(image_size)
        self.name = name
        self.backend = "torch"
        self.empty_masks = 0  # masks that covered no patch (pooled with the image mean instead)
        self._engines = None
        if tensorrt:
            from .tensorrt_engine import Dinov2EngineCache

            self._engines = Dinov2EngineCache(self.model, perception_cfg, name, half=use_half(device, half))
        mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
        self._mean, self._std = mean, std

    @staticmethod
    def requirements(cfg: Any, perception_cfg: Any = None) -> Requirements:
        return Requirements(modules=("transformers",), weights=hub_id(cfg.model))

    @classmethod
    def from_config(cls, cfg: Any, perception_cfg: Any = None) -> "Dinov2Features":
        try:
            from transformers import Dinov2Model
        except ImportError as exc:
            raise BackendUnavailable(f"features 'dinov2' needs transformers: {exc}") from None
        from .weights import from_pretrained

        device = resolve_device(cfg.device, "features")
        model = from_pretrained(Dinov2Model.from_pretrained, hub_id(cfg.model), "features (dinov2)", perception_cfg)
        return cls(
            model,
            image_size=cfg.image_size,
            device=device,
            half=cfg.half,
            tensorrt=cfg.tensorrt,
            perception_cfg=perception_cfg,
            name=hub_id(cfg.model).split("/")[-1],
        )

    # -------------------------------------------------------------------------------------------------
    def grid(self, hw: Tuple[int, int]) -> Tuple[int, int]:
        return grid_for(hw, self.image_size, self.patch)

    def preprocess(self, rgb: np.ndarray):
        """uint8 HxWx3 -> normalised (1, 3, gh*patch, gw*patch) tensor on the device (resize in torch)."""
        import torch
        import torch.nn.functional as F

        gh, gw = self.grid(rgb.shape[:2])
        x = torch.from_numpy(rgb).to(self.device).permute(2, 0, 1)[None].float().div_(255.0)
        x = F.interpolate(
            x, size=(gh * self.patch, gw * self.patch), mode="bilinear", align_corners=False, antialias=True
        )
        return ((x - self._mean) / self._std).to(self.dtype)

    def patch_tokens(self, rgb: np.ndarray):
        """(gh*gw, dim) float32 patch tokens of one image, on the device."""
        import torch

        rgb = check_rgb(rgb, "features")
        pixels = self.preprocess(rgb)
        runner = self._engines.get(tuple(pixels.shape[-2:])) if self._engines is not None else None
        self.backend = "tensorrt" if runner is not None else "torch"
        with torch.inference_mode():
            hidden = runner(pixels) if runner is not None else self.model(pixel_values=pixels).last_hidden_state
        return hidden[0, self.n_prefix :].float()

    def extract(self, rgb: np.ndarray, masks, boxes) -> np.ndarray:
        """FeatureExtractor.extract; the boxes are ignored (each mask is pooled over the whole patch grid)."""
        rgb = check_rgb(rgb, "features")
        if len(masks) == 0:
            return np.zeros((0, self.dim), np.float32)
        masks = check_masks(masks, rgb.shape[:2], "features masks")  # stacks a list of HxW masks
        tokens = self.patch_tokens(rgb)
        weights = self.mask_weights(masks, self.grid(rgb.shape[:2]))
        return pool(tokens, weights, self).cpu().numpy().astype(np.float32, copy=False)

    def mask_weights(self, masks: np.ndarray, grid: Tuple[int, int]):
        """(N, gh*gw) fraction of each patch's area covered by each mask, computed on the device."""
        import torch
        import torch.nn.functional as F

        m = torch.from_numpy(np.ascontiguousarray(masks)).to(self.device)
        frac = F.adaptive_avg_pool2d(m[:, None].float(), grid)  # exact area fractions for integer ratios
        return frac.flatten(1)


def pool(tokens, weights, owner: Optional[Dinov2Features] = None):
    """Weighted average of patch tokens per mask, L2-normalised. A mask with zero coverage (empty) falls back to
    the mean of all patches, so the result is never NaN."""
    import torch

    total = weights.sum(dim=1, keepdim=True)
    empty = total[:, 0] <= 0
    if bool(empty.any()):
        weights = torch.where(empty[:, None], torch.ones_like(weights), weights)
        total = weights.sum(dim=1, keepdim=True)
        if owner is not None:
            owner.empty_masks += int(empty.sum())
    pooled = (weights @ tokens) / total
    return pooled / pooled.norm(dim=1, keepdim=True).clamp_min(1e-12)
