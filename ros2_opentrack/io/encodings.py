"""Numpy image codecs, with no ROS import: ROS image / camera_info fields, label images <-> masks, depth in
millimetres, JPEG.

Used by the ROS node (live messages), the rosbag reader/writer (deserialised messages) and the dataset readers.
Every function takes plain fields (encoding, height, width, step, data bytes, arrays) so all callers share one
code path.
Bad input raises InputError naming the encoding / sizes and what was expected.
"""

from __future__ import annotations

import struct
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError
from ..types import Mask2D, check_rgb

# encoding -> (numpy dtype, channels). Colour encodings come out as HxWx3 RGB uint8; the rest as HxW arrays.
_ENCODINGS = {
    "rgb8": (np.uint8, 3),
    "bgr8": (np.uint8, 3),
    "rgba8": (np.uint8, 4),
    "bgra8": (np.uint8, 4),
    "mono8": (np.uint8, 1),
    "8UC1": (np.uint8, 1),
    "mono16": (np.uint16, 1),
    "16UC1": (np.uint16, 1),
    "32FC1": (np.float32, 1),
    "32SC1": (np.int32, 1),
}
_COLOUR = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8")
_CANONICAL = {name.lower(): name for name in _ENCODINGS}
SUPPORTED_ENCODINGS = tuple(_ENCODINGS)


def canonical_encoding(encoding: str) -> str:
    """The supported spelling of an encoding (ROS publishers differ in case, e.g. '16uc1'), or InputError."""
    name = _CANONICAL.get(str(encoding).strip().lower())
    if name is None:
        raise InputError(
            f"image encoding '{encoding}' is not supported; expected one of {', '.join(SUPPORTED_ENCODINGS)}"
        )
    return name


def is_colour_encoding(encoding: str) -> bool:
    return canonical_encoding(encoding) in _COLOUR


# ---------------------------------------------------------------------------------------------------------
# sensor_msgs/Image


def image_to_numpy(encoding: str, height: int, width: int, step: int, data, is_bigendian: int = 0) -> np.ndarray:
    """Decode sensor_msgs/Image fields.

    rgb8/bgr8/rgba8/bgra8/mono8 -> uint8 HxWx3 RGB (alpha dropped, mono replicated); 8UC1 -> uint8 HxW;
    16UC1/mono16 -> uint16 HxW; 32FC1 -> float32 HxW; 32SC1 -> int32 HxW. Row padding (step) and
    is_bigendian are honoured; the result is a native-endian array that owns its memory."""
    enc = canonical_encoding(encoding)
    dtype, channels = _ENCODINGS[enc]
    height, width, step = int(height), int(width), int(step)
    itemsize = np.dtype(dtype).itemsize
    row_bytes = width * channels * itemsize
    if height <= 0 or width <= 0:
        raise InputError(f"{enc} image has an empty size {width}x{height}")
    if step < row_bytes:
        raise InputError(
            f"{enc} image of width {width} needs step >= {row_bytes} bytes "
            f"({channels} channel(s) x {itemsize} byte(s)), got step {step}"
        )
    buf = np.frombuffer(_as_bytes(data), dtype=np.uint8)
    if buf.size != height * step:
        raise InputError(
            f"{enc} image data has {buf.size} bytes, expected height*step = {height}*{step} = {height * step}"
        )
    rows = buf.reshape(height, step)[:, :row_bytes]
    order = ">" if is_bigendian else "<"
    pixels = np.ascontiguousarray(rows).view(np.dtype(dtype).newbyteorder(order))
    pixels = pixels.reshape(height, width, channels).astype(dtype, copy=True)  # native order, owned memory
    return _to_output(pixels, enc)


def _as_bytes(data):
    if isinstance(data, np.ndarray):
        return data if data.dtype == np.uint8 else np.ascontiguousarray(data).tobytes()
    if isinstance(data, (bytes, bytearray, memoryview)):
        return data
    try:  # array.array('B') from rclpy, lists of ints
        return np.asarray(data, dtype=np.uint8)
    except (TypeError, ValueError) as exc:
        raise InputError(f"image data must be bytes or a uint8 array, got {type(data).__name__}") from exc


def _to_output(pixels: np.ndarray, enc: str) -> np.ndarray:
    if enc == "rgb8":
        return pixels
    if enc in ("bgr8", "bgra8"):
        return np.ascontiguousarray(pixels[..., 2::-1])
    if enc == "rgba8":
        return np.ascontiguousarray(pixels[..., :3])
    if enc == "mono8":
        return np.repeat(pixels, 3, axis=2)
    return pixels[..., 0]


def numpy_to_image(array, encoding: str, step: Optional[int] = None) -> Tuple[int, int, int, bytes]:
    """Encode an array as sensor_msgs/Image fields (height, width, step, data), little-endian (is_bigendian=0).

    Colour encodings take RGB uint8 HxWx3 (RGBA HxWx4 for rgba8/bgra8 keeps its alpha, else alpha = 255; mono8
    also takes HxW). Single-channel encodings take HxW arrays of a losslessly castable dtype. ``step`` pads rows
    (default: tight rows)."""
    enc = canonical_encoding(encoding)
    dtype, channels = _ENCODINGS[enc]
    arr = np.asarray(array)
    pixels = _colour_pixels(arr, enc) if enc in _COLOUR else _single_channel_pixels(arr, enc, dtype)
    height, width = pixels.shape[:2]
    pixels = np.ascontiguousarray(pixels.astype(np.dtype(dtype).newbyteorder("<"), copy=False))
    row_bytes = width * channels * np.dtype(dtype).itemsize
    step = row_bytes if step is None else int(step)
    if step < row_bytes:
        raise InputError(f"{enc} image of width {width} needs step >= {row_bytes} bytes, got step {step}")
    rows = pixels.view(np.uint8).reshape(height, row_bytes)
    if step > row_bytes:
        rows = np.concatenate([rows, np.zeros((height, step - row_bytes), np.uint8)], axis=1)
    return height, width, step, rows.tobytes()


def _colour_pixels(arr: np.ndarray, enc: str) -> np.ndarray:
    if arr.dtype != np.uint8:
        raise InputError(f"{enc} image must be uint8, got dtype {arr.dtype}")
    if enc == "mono8":
        if arr.ndim == 3 and arr.shape[2] == 3:
            arr = _rgb_to_grey(arr)
        if arr.ndim != 2:
            raise InputError(f"mono8 image must be HxW or HxWx3 RGB, got shape {arr.shape}")
        return arr[..., None]
    alpha_out = enc in ("rgba8", "bgra8")
    if arr.ndim != 3 or arr.shape[2] not in ((3, 4) if alpha_out else (3,)):
        want = "HxWx3 RGB or HxWx4 RGBA" if alpha_out else "HxWx3 RGB"
        raise InputError(f"{enc} image must be {want} uint8, got shape {arr.shape}")
    rgb = arr[..., :3]
    out = rgb[..., ::-1] if enc.startswith("bgr") else rgb
    if alpha_out:
        alpha = arr[..., 3:4] if arr.shape[2] == 4 else np.full(arr.shape[:2] + (1,), 255, np.uint8)
        out = np.concatenate([out, alpha], axis=2)
    return out


def _rgb_to_grey(rgb: np.ndarray) -> np.ndarray:
    grey = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R BT.601, as OpenCV
    return np.clip(np.rint(grey), 0, 255).astype(np.uint8)


def _single_channel_pixels(arr: np.ndarray, enc: str, dtype) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise InputError(f"{enc} image must be HxW, got shape {arr.shape}")
    integer_target = np.issubdtype(dtype, np.integer)
    castable = (
        np.issubdtype(arr.dtype, np.integer)
        or arr.dtype == bool
        or (not integer_target and np.issubdtype(arr.dtype, np.floating))
    )
    if arr.dtype != dtype and not castable:  # never round floats into integer pixels silently
        raise InputError(f"{enc} image must be {np.dtype(dtype).name}, got dtype {arr.dtype}")
    if arr.dtype != dtype and integer_target and arr.size:
        info = np.iinfo(dtype)
        if arr.min() < info.min or arr.max() > info.max:
            raise InputError(
                f"{enc} image values span [{arr.min()}, {arr.max()}], outside the "
                f"{np.dtype(dtype).name} range [{info.min}, {info.max}]"
            )
    return arr.astype(dtype, copy=False)[..., None]


def depth_to_metres(array, encoding: Optional[str] = None) -> np.ndarray:
    """Depth image -> float32 metres; invalid pixels (0, NaN, inf, negative) become 0.

    16UC1/mono16 are millimetres, 32FC1 metres. Without ``encoding`` the dtype decides (uint16 = mm)."""
    arr = np.asarray(array)
    if encoding is None:
        encoding = "16UC1" if arr.dtype == np.uint16 else "32FC1"
    enc = canonical_encoding(encoding)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise InputError(f"{enc} depth image must be HxW, got shape {arr.shape}")
    if enc in ("16UC1", "mono16"):
        if not np.issubdtype(arr.dtype, np.integer):
            raise InputError(f"{enc} depth must be integer millimetres, got dtype {arr.dtype}")
        return arr.astype(np.float32) / np.float32(1000.0)
    if enc == "32FC1":
        depth = arr.astype(np.float32, copy=True)
        depth[~(np.isfinite(depth) & (depth > 0))] = 0.0
        return depth
    raise InputError(f"depth encoding '{encoding}' is not supported; expected 16UC1 / mono16 (mm) or 32FC1 (m)")


def depth_to_millimetres(depth) -> np.ndarray:
    """Depth in metres -> uint16 millimetres (16UC1): rounded to the nearest mm, clipped to 0..65535 mm;
    NaN, inf and negative depths become 0 (invalid)."""
    metres = np.asarray(depth, dtype=np.float64)
    metres = np.nan_to_num(metres, nan=0.0, posinf=0.0, neginf=0.0)
    return np.clip(np.rint(metres * 1000.0), 0, 65535).astype(np.uint16)


# ---------------------------------------------------------------------------------------------------------
# Label images: one instance id per pixel, 0 = no instance

MAX_LABEL_IDS = 256  # ids kept per label image: far above a real frame's instances, and bounds the masks' memory


class LabelMasks(NamedTuple):
    """Masks decoded from a label image, and how many ids were left out (so callers can count them)."""

    masks: List[Mask2D]  # one per kept id, in increasing id order
    too_small: int  # ids with fewer than min_pixels pixels
    over_cap: int  # ids beyond the max_ids largest


def label_image_to_masks(
    labels, min_pixels: int = 1, max_ids: Optional[int] = MAX_LABEL_IDS, names: Optional[Dict[int, str]] = None
) -> LabelMasks:
    """One Mask2D per positive id of an HxW integer label image (source_id = the id, label = names[id]).

    Ids with fewer than ``min_pixels`` pixels are dropped, then all but the ``max_ids`` largest (None: no cap),
    before any mask is made: one pass over the pixels, and memory bounded by the kept masks whatever the image
    holds (a hostile image of random ids must not cost one full-frame mask per id)."""
    labels = _label_pixels(labels)
    ids, codes, counts = _id_histogram(labels.ravel())
    named = ids > 0  # 0 is no instance; a negative 32SC1 id is none either
    big = named & (counts >= max(1, int(min_pixels)))
    kept = np.flatnonzero(big)
    over_cap = 0
    if max_ids is not None and len(kept) > max_ids:
        largest = np.argsort(-counts[kept], kind="stable")[: max(0, int(max_ids))]  # ties: the lower id
        over_cap = len(kept) - len(largest)
        kept = np.sort(kept[largest])
    masks = [
        Mask2D(mask=mask, source_id=int(ids[k]), label=(names or {}).get(int(ids[k])))
        for k, mask in zip(kept, _masks_of(codes, kept, labels.shape))
    ]
    return LabelMasks(masks, int(np.count_nonzero(named & ~big)), over_cap)


def _label_pixels(labels) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim == 3 and arr.shape[2] in (1, 3):  # mono8 decodes to RGB by the colour convention: equal channels
        arr = arr[..., 0]
    if arr.ndim != 2 or not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
        raise InputError(f"label image must be HxW integer ids, got {arr.dtype} of shape {arr.shape}")
    return arr


def _id_histogram(flat: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sorted distinct ids, per-pixel index into them, pixels per id) in O(pixels) for 8/16-bit ids."""
    if flat.dtype == bool or (flat.dtype.kind == "u" and flat.dtype.itemsize <= 2):
        counts = np.bincount(flat.astype(np.intp, copy=False))
        ids = np.flatnonzero(counts)
        index_of = np.zeros(len(counts), np.intp)
        index_of[ids] = np.arange(len(ids))
        return ids, index_of[flat], counts[ids]
    ids, codes, counts = np.unique(flat, return_inverse=True, return_counts=True)
    return ids, codes.reshape(-1), counts


def _masks_of(codes: np.ndarray, kept: np.ndarray, hw) -> List[np.ndarray]:
    """Full-frame bool masks of the kept id indices, from one grouping of their pixels."""
    slot = np.full(int(codes.max(initial=0)) + 1, -1, np.intp)
    slot[kept] = np.arange(len(kept))
    pixel_slot = slot[codes]
    pixels = np.flatnonzero(pixel_slot >= 0)
    order = np.argsort(pixel_slot[pixels], kind="stable")
    pixels = pixels[order]
    bounds = np.searchsorted(pixel_slot[pixels], np.arange(len(kept) + 1))
    out = []
    for start, stop in zip(bounds[:-1], bounds[1:]):
        mask = np.zeros(hw[0] * hw[1], bool)
        mask[pixels[start:stop]] = True
        out.append(mask.reshape(hw))
    return out


def masks_to_label_image(masks: Sequence[Mask2D], hw, dtype=np.uint16) -> np.ndarray:
    """Label image of masks; a mask's id is its source_id, else its position + 1. Later masks win overlaps.

    An id outside 1..the dtype's maximum (0 is "no instance") raises InputError rather than wrapping."""
    labels = np.zeros(tuple(hw), dtype)
    top = int(np.iinfo(dtype).max)
    for n, m in enumerate(masks):
        ident = int(m.source_id) if m.source_id is not None else n + 1
        if not 0 < ident <= top:
            raise InputError(f"mask id {ident} does not fit a {np.dtype(dtype).name} label image (1..{top})")
        labels[np.asarray(m.mask, bool)] = ident
    return labels


# ---------------------------------------------------------------------------------------------------------
# JPEG: stored keyframe views and labeller requests


def swap_red_blue(image: np.ndarray) -> np.ndarray:
    """RGB <-> BGR of an HxWx3 uint8 image, C-contiguous (cv2.cvtColor: ~20x faster than a reversed copy)."""
    import cv2

    if image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)
    return np.ascontiguousarray(image[..., ::-1])


def encode_jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    """JPEG bytes of an HxWx3 uint8 RGB image (the one encoder for stored keyframes and labeller requests)."""
    import cv2

    rgb = check_rgb(rgb, "image to JPEG-encode")
    bgr = swap_red_blue(rgb)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise InputError(f"could not JPEG-encode an image of shape {rgb.shape}")
    return buf.tobytes()


def decode_jpeg(data: bytes) -> np.ndarray:
    """HxWx3 uint8 RGB of JPEG bytes made by encode_jpeg."""
    import cv2

    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return swap_red_blue(bgr)


# ---------------------------------------------------------------------------------------------------------
# sensor_msgs/CompressedImage

_COMPRESSED_DEPTH_HEADER = struct.Struct("<iff")  # compressed_depth_image_transport ConfigHeader: fmt, quantA, quantB


def decode_compressed(format: str, data) -> np.ndarray:  # noqa: A002 - the message field is called format
    """Decode sensor_msgs/CompressedImage fields.

    'jpeg' / 'png' / 'rgb8; jpeg compressed bgr8' ... -> uint8 HxWx3 RGB (a 16-bit PNG -> uint16 HxW);
    '16UC1; compressedDepth png' -> uint16 HxW millimetres; '32FC1; compressedDepth png' -> float32 HxW metres
    (0 = invalid). RVL-compressed depth is not supported (InputError)."""
    fmt = str(format).strip()
    raw = np.frombuffer(_as_bytes(data), dtype=np.uint8)
    if raw.size == 0:
        raise InputError(f"compressed image ('{fmt}') has no data")
    if "compresseddepth" in fmt.lower():
        return _decode_compressed_depth(fmt, raw)
    if not any(k in fmt.lower() for k in ("jpeg", "jpg", "png")) and fmt:
        raise InputError(
            f"compressed image format '{fmt}' is not supported; expected jpeg, png or "
            f"'16UC1; compressedDepth' / '32FC1; compressedDepth'"
        )
    image = _imdecode(raw, fmt)
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=2) if image.dtype == np.uint8 else image
    if image.shape[2] == 4:
        image = image[..., :3]
    if image.dtype != np.uint8:
        raise InputError(f"compressed colour image ('{fmt}') decoded to {image.dtype}; expected 8-bit colour")
    return swap_red_blue(image)  # OpenCV decodes to BGR


def _imdecode(raw: np.ndarray, fmt: str) -> np.ndarray:
    import cv2

    image = cv2.imdecode(raw, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise InputError(
            f"compressed image ('{fmt}', {raw.size} bytes) could not be decoded: corrupt or not jpeg/png data"
        )
    return image


def _decode_compressed_depth(fmt: str, raw: np.ndarray) -> np.ndarray:
    depth_enc = fmt.split(";")[0].strip()
    if "rvl" in fmt.lower():
        raise InputError(
            f"compressed depth format '{fmt}' (RVL) is not supported; publish with png compression or raw depth"
        )
    if raw.size <= _COMPRESSED_DEPTH_HEADER.size:
        raise InputError(
            f"compressed depth ('{fmt}') has only {raw.size} bytes; expected a "
            f"{_COMPRESSED_DEPTH_HEADER.size}-byte header followed by a PNG"
        )
    kind, quant_a, quant_b = _COMPRESSED_DEPTH_HEADER.unpack(raw[: _COMPRESSED_DEPTH_HEADER.size].tobytes())
    if kind != 0:  # 0 = PNG, 1 = RVL
        raise InputError(f"compressed depth ('{fmt}') uses compression format {kind} (RVL?); only PNG (0) is supported")
    image = _imdecode(raw[_COMPRESSED_DEPTH_HEADER.size :], fmt)
    if image.dtype != np.uint16 or image.ndim != 2:
        raise InputError(
            f"compressed depth ('{fmt}') decoded to {image.dtype} {image.shape}; expected a 16-bit single-channel PNG"
        )
    enc = canonical_encoding(depth_enc or "16UC1")
    if enc in ("16UC1", "mono16"):
        return image
    if enc == "32FC1":  # stored as quantised inverse depth: d = quant_a / (v - quant_b), v = 0 invalid
        v = image.astype(np.float32)
        valid = v != 0
        depth = np.zeros(image.shape, np.float32)
        depth[valid] = quant_a / (v[valid] - quant_b)
        depth[~np.isfinite(depth) | (depth < 0)] = 0.0
        return depth
    raise InputError(f"compressed depth encoding '{depth_enc}' is not supported; expected 16UC1 or 32FC1")


# ---------------------------------------------------------------------------------------------------------
# sensor_msgs/CameraInfo


def intrinsics_from_k(k: Sequence[float], hw: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """3x3 K from CameraInfo.k (9 values, row-major). All zeros (uncalibrated camera) -> InputError."""
    arr = np.asarray(k, dtype=np.float64).ravel()
    if arr.size != 9:
        raise InputError(f"camera_info k must have 9 values, got {arr.size}")
    if not np.isfinite(arr).all():
        raise InputError(f"camera_info k has non-finite values: {arr.tolist()}")
    if not arr.any():
        raise InputError("camera_info k is all zeros: the camera is not calibrated (expected fx, fy, cx, cy)")
    from ..types import validate_intrinsics

    return validate_intrinsics(arr.reshape(3, 3), hw)


def camera_info_intrinsics(k: Sequence[float], info_hw: Tuple[int, int], image_hw: Tuple[int, int]) -> np.ndarray:
    """K for an image of size image_hw from a camera_info of size info_hw (0, 0 = unknown size).

    A camera_info of another size with the same aspect ratio describes a resized image: K is rescaled. Another
    aspect ratio means a cropped or unrelated image, which no rescaling fixes: InputError."""
    from ..types import scale_intrinsics, validate_intrinsics

    K = intrinsics_from_k(k)
    (ih, iw), (h, w) = info_hw, image_hw
    if ih and iw and (ih, iw) != (h, w):
        if abs(iw * h - ih * w) > max(iw, w):
            raise InputError(
                f"camera_info is for a {iw}x{ih} image but the depth image is {w}x{h} "
                f"(another aspect ratio: expected the camera_info of the depth image)"
            )
        K = scale_intrinsics(K, (ih, iw), (h, w))
    return validate_intrinsics(K, (h, w))


def camera_info_fields(K, height: int, width: int) -> dict:
    """CameraInfo field values for a pinhole camera with no distortion (plumb_bob, d = 0)."""
    K = np.asarray(K, dtype=np.float64).reshape(3, 3)
    P = np.zeros((3, 4))
    P[:, :3] = K
    return {
        "height": int(height),
        "width": int(width),
        "distortion_model": "plumb_bob",
        "d": np.zeros(5),
        "k": K.ravel().copy(),
        "r": np.eye(3).ravel(),
        "p": P.ravel(),
    }
