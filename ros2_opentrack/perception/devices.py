"""Device and precision choice shared by the torch backends."""

from __future__ import annotations

from ..errors import BackendUnavailable, ConfigError

# the input normalisation of the ImageNet-trained backbones (DINOv2, SAM2): (x / 255 - mean) / std per RGB channel
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resolve_device(name: str = "auto", role: str = "model") -> str:
    """'auto' -> 'cuda' when torch sees a GPU, else 'cpu'. An explicit CUDA device that is absent is an error,
    not a silent CPU fallback: a user who asked for the GPU wants to know it is not used."""
    import torch

    name = (name or "auto").strip().lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return "cpu"
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise BackendUnavailable(
                f"{role}: device '{name}' requested but CUDA is not available "
                f"(torch {torch.__version__}); set {role}.device to auto or cpu"
            )
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise BackendUnavailable(
                f"{role}: device '{name}' requested but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
        return name
    if name == "mps":
        return name
    raise ConfigError(f"{role}.device = {name!r}: expected auto, cpu, cuda or cuda:N")


def use_half(device: str, half: bool) -> bool:
    """fp16 only on CUDA: CPU half-precision kernels are slow or missing."""
    return bool(half) and str(device).startswith("cuda")


def torch_dtype(device: str, half: bool):
    import torch

    return torch.float16 if use_half(device, half) else torch.float32


# ---------------------------------------------------------------------------------------------------------
# Input checks shared by the image backends: bad input is named, never a deep torch traceback.


def check_rgb(rgb, who: str = "image"):
    """An RGB uint8 HxWx3 array (returned contiguous), else InputError naming what arrived."""
    from ..types import check_rgb as _check_rgb

    return _check_rgb(rgb, f"{who}: rgb")


def check_masks(masks, hw, who: str = "masks"):
    """Bool (N, H, W) masks matching the image size (a single HxW mask becomes N=1)."""
    import numpy as np

    from ..errors import InputError

    arr = np.asarray(masks)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or (arr.shape[0] and tuple(arr.shape[1:]) != tuple(hw)):
        raise InputError(
            f"{who}: expected (N, {hw[0]}, {hw[1]}) masks for a {hw[1]}x{hw[0]} image, got shape {arr.shape}"
        )
    if arr.dtype != bool:
        if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
            raise InputError(f"{who}: masks must be bool or numeric, got dtype {arr.dtype}")
        arr = arr > 0
    return arr
