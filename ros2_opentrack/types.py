"""Data contracts shared by the core, the perception backends, the readers and the ROS layer."""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from . import compiled
from .errors import InputError

log = logging.getLogger("ros2_opentrack")


@dataclass
class Mask2D:
    """One 2D instance in one image."""

    mask: np.ndarray  # bool HxW
    box: Optional[np.ndarray] = None  # (4,) x0, y0, x1, y1 in pixels (filled from the mask when None)
    score: float = 1.0  # detector confidence
    label: Optional[str] = None  # detector class text, when the source has one
    source_id: Optional[int] = None  # dataset instance id: used for association only with masks.oracle_ids


@dataclass
class Frame:
    """One RGB-D frame. Camera is OpenCV-style (x right, y down, z forward); T_world_cam maps camera to world."""

    rgb: np.ndarray  # uint8 HxWx3
    depth: np.ndarray  # float32 HxW metres; 0 or NaN = invalid
    K: np.ndarray  # 3x3 intrinsics of the depth image
    T_world_cam: np.ndarray  # 4x4 camera-to-world
    stamp: float = 0.0  # seconds
    index: int = -1  # frame number in its sequence
    masks: Optional[List[Mask2D]] = None  # precomputed 2D instances (dataset / topic mask sources)
    frame_id: str = "camera"
    source: str = ""  # where it came from (file, bag topic), named in error messages


@dataclass
class Observation:
    """A 2D mask lifted to 3D and denoised: what the tracker associates."""

    voxels: np.ndarray  # int64 unique voxel keys (tracking.voxel_size_m)
    points: np.ndarray  # (M, 3) float32 world points of the main cluster (subsampled)
    colors: np.ndarray  # (M, 3) uint8
    feature: np.ndarray  # (D,) float32, L2-normalised
    pixel_count: int  # valid mask pixels before subsampling
    box: np.ndarray  # (4,) image box of the mask
    score: float = 1.0
    label: Optional[str] = None
    source_id: Optional[int] = None
    mask_index: int = -1  # index into the frame's mask list


class Presence(str, enum.Enum):
    """Whether a tracked object is still where the map says (issue: changed scenes)."""

    PRESENT = "present"
    MOVED = "moved"  # its place is seen empty and it was re-observed elsewhere (moved_from links the two)
    REMOVED = "removed"  # its place is seen empty: last-known place only


class TrackState(str, enum.Enum):
    ACTIVE = "active"
    DORMANT = "dormant"
    TERMINATED = "terminated"


@dataclass
class View:
    """A kept view of a track, for the labeller: which keyframe image and where the track is in it."""

    image_key: int  # key into the pipeline's shared keyframe image store
    frame_index: int
    stamp: float
    box: np.ndarray  # (4,) x0, y0, x1, y1
    visible_fraction: float  # fraction of the track's voxels inside this view's frustum (ranking key)
    mask_area: int  # tie-break: projected mask area in pixels


@dataclass
class Instance:
    """A reported 3D instance (what the writers, the ROS layer and evaluation consume)."""

    id: int
    points: np.ndarray  # (M, 3) float32 world coordinates
    colors: np.ndarray  # (M, 3) uint8
    label: Optional[str] = None
    score: float = 0.0  # labeller confidence (or detector mean when unlabelled)
    observations: int = 0
    state: TrackState = TrackState.ACTIVE
    first_seen: float = 0.0  # stamp
    last_seen: float = 0.0  # stamp
    views: List[View] = field(default_factory=list)
    feature: Optional[np.ndarray] = None
    presence: str = "present"  # present | moved | removed (the camera saw its place empty): see Presence
    presence_since: float = 0.0  # stamp of the last presence change
    moved_from: Optional[int] = None  # id of the instance this one was seen to move from, when linked
    extra: Dict[str, object] = field(default_factory=dict)

    @property
    def centroid(self) -> np.ndarray:
        return self.points.mean(axis=0) if len(self.points) else np.zeros(3)

    @property
    def bounds(self) -> np.ndarray:
        """(2, 3): min and max corner of the axis-aligned box."""
        if not len(self.points):
            return np.zeros((2, 3))
        return np.stack([self.points.min(axis=0), self.points.max(axis=0)])

    @property
    def extent(self) -> np.ndarray:
        b = self.bounds
        return b[1] - b[0]


# ---------------------------------------------------------------------------------------------------------
# Validation: every frame entering the pipeline passes here, so errors name the input, not a numpy internal.

_ROTATION_TOLERANCE = 1e-3


def validate_frame(frame: Frame, mask_drops: Optional[Dict[str, int]] = None, limits=None) -> Frame:
    """Check a frame against the contract and normalise it (dtypes, rgb resized to depth). Raises InputError
    for a bad frame; a bad mask only drops itself, counted by reason into ``mask_drops``. ``limits``: the
    sanity bounds (config.ValidationConfig; None: its defaults) on translation, depth and focal lengths."""
    if not isinstance(frame, Frame):
        raise InputError(f"expected a Frame, got {type(frame).__name__}")
    if limits is None:
        from .config import ValidationConfig

        limits = ValidationConfig()
    depth = _as_depth(frame.depth)
    h, w = depth.shape
    rgb_hw = np.shape(frame.rgb)[:2]
    rgb = _as_rgb(frame.rgb, (h, w))
    try:
        K = validate_intrinsics(frame.K, (h, w))
    except InputError as exc:
        if len(rgb_hw) == 2 and tuple(rgb_hw) != (h, w) and "principal point" in str(exc):
            raise InputError(
                f"depth image is {w}x{h} but the colour image is {rgb_hw[1]}x{rgb_hw[0]}, and the "
                f"intrinsics do not fit the depth image ({exc}): K must be the depth image's"
            ) from None
        raise
    _check_focal(K, limits)
    T = validate_pose(frame.T_world_cam)
    far = float(np.abs(T[:3, 3]).max())  # per axis: a norm of 1e300 overflows
    if far > limits.max_translation_m:
        raise InputError(
            f"pose translation {np.array2string(T[:3, 3], precision=3)} m lies beyond "
            f"validation.max_translation_m = {limits.max_translation_m:g}"
        )
    depth, deepest = _clean_depth(depth)
    if deepest <= 0:
        raise InputError(f"frame {frame.index}: depth has no valid pixel (all zero or NaN)")
    if deepest > limits.max_depth_m:
        raise InputError(
            f"depth holds {deepest:.3g} m, beyond validation.max_depth_m = {limits.max_depth_m:g} "
            f"(wrong unit or encoding?)"
        )
    masks = None
    if frame.masks is not None:
        masks, drops = validate_masks(frame.masks, (h, w), np.asarray(frame.rgb).shape[:2], f"frame {frame.index}")
        for reason, n in drops.items():
            if mask_drops is not None:
                mask_drops[reason] = mask_drops.get(reason, 0) + n
    return Frame(
        rgb=rgb,
        depth=depth,
        K=K,
        T_world_cam=T,
        stamp=float(frame.stamp),
        index=frame.index,
        masks=masks,
        frame_id=frame.frame_id,
        source=frame.source,
    )


def _clean_depth(depth: np.ndarray) -> Tuple[np.ndarray, float]:
    """The float32 depth with NaN, inf and <= 0 set to 0 (no reading), and its deepest value."""
    if compiled.ENABLED:  # one pass
        return compiled.clean_depth(depth)
    depth = np.where((depth > 0) & (depth < np.inf), depth, np.float32(0.0))
    return depth, float(depth.max())  # a reduction over the cleaned image: no copy of the valid pixels


def _check_focal(K: np.ndarray, limits) -> None:
    for name, f in (("fx", K[0, 0]), ("fy", K[1, 1])):
        if not limits.min_focal_px <= f <= limits.max_focal_px:
            raise InputError(
                f"intrinsics {name} is {f:.6g} px, outside [validation.min_focal_px "
                f"{limits.min_focal_px:g}, validation.max_focal_px {limits.max_focal_px:g}]"
            )


def _as_depth(depth) -> np.ndarray:
    depth = np.asarray(depth)
    if depth.ndim == 3 and depth.shape[2] == 1:
        depth = depth[..., 0]
    if depth.ndim != 2 or depth.size == 0:
        raise InputError(f"depth must be an HxW image, got shape {depth.shape}")
    if depth.dtype == np.uint16:  # millimetres
        return depth.astype(np.float32) / 1000.0
    if not np.issubdtype(depth.dtype, np.floating):
        raise InputError(f"depth must be float metres or uint16 millimetres, got dtype {depth.dtype}")
    return depth.astype(np.float32, copy=False)


def check_rgb(rgb, who: str = "rgb", min_side: int = 1) -> np.ndarray:
    """An RGB uint8 HxWx3 array (returned contiguous), else InputError naming ``who`` and what arrived."""
    if rgb is None:
        raise InputError(f"{who}: rgb image is None (unreadable file or empty message?)")
    try:
        arr = np.asarray(rgb)
    except Exception as exc:
        raise InputError(f"{who} must be uint8 HxWx3, got {type(rgb).__name__} ({exc})") from None
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3 or min(arr.shape[:2]) < min_side:
        raise InputError(
            f"{who} must be uint8 HxWx3 (at least {min_side}x{min_side}), got shape {arr.shape} dtype {arr.dtype}"
        )
    return np.ascontiguousarray(arr)


def _as_rgb(rgb, depth_hw) -> np.ndarray:
    rgb = check_rgb(rgb)
    return resize_image(rgb, depth_hw) if rgb.shape[:2] != depth_hw else rgb


def resize_image(image: np.ndarray, hw, nearest: bool = False) -> np.ndarray:
    """Resize an image to (h, w); nearest-neighbour for masks and ids."""
    import cv2

    h, w = hw
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_AREA
    if image.dtype == bool:
        return cv2.resize(image.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
    return cv2.resize(image, (w, h), interpolation=interp)


def validate_intrinsics(K, hw=None) -> np.ndarray:
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3):
        raise InputError(f"intrinsics K must be 3x3, got shape {K.shape}")
    if not np.isfinite(K).all():
        raise InputError("intrinsics K has non-finite values")
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    if fx <= 0 or fy <= 0:
        raise InputError(f"intrinsics K must have fx > 0 and fy > 0, got fx={fx}, fy={fy} (camera_info with zeros?)")
    if hw is not None and not (0 < cx < hw[1] and 0 < cy < hw[0]):
        raise InputError(f"intrinsics principal point ({cx}, {cy}) lies outside the {hw[1]}x{hw[0]} image")
    return K


def scale_intrinsics(K: np.ndarray, from_hw, to_hw) -> np.ndarray:
    """K of an image of size from_hw (h, w), rescaled to an image of size to_hw (a resized, not cropped, image)."""
    sy, sx = to_hw[0] / from_hw[0], to_hw[1] / from_hw[1]
    K = np.array(K, dtype=np.float64, copy=True)
    K[0, :] *= sx
    K[1, :] *= sy
    return K


def validate_pose(T) -> np.ndarray:
    """A finite rigid 4x4 transform; small numerical drift in the rotation is re-orthonormalised."""
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4):
        raise InputError(f"pose must be a 4x4 matrix, got shape {T.shape}")
    if not np.isfinite(T).all():
        raise InputError("pose has non-finite values (NaN or inf)")
    if not np.allclose(T[3], [0, 0, 0, 1], atol=1e-6):
        raise InputError(f"pose last row must be [0 0 0 1], got {T[3].tolist()}")
    R = T[:3, :3]
    err = np.abs(R.T @ R - np.eye(3)).max()
    if err > _ROTATION_TOLERANCE or np.linalg.det(R) <= 0:
        raise InputError(
            f"pose is not rigid: rotation deviates from orthonormal by {err:.3g} (det {np.linalg.det(R):.3g})"
        )
    if err > 1e-9:
        u, _, vt = np.linalg.svd(R)
        T = T.copy()
        T[:3, :3] = u @ vt
    return T


def validate_mask(m: Mask2D, depth_hw, rgb_hw) -> Optional[Mask2D]:
    """Check one mask; resize it when it was made on the rgb image. Empty masks are returned as None."""
    mask = np.asarray(m.mask)
    if mask.ndim != 2:
        raise InputError(f"mask must be HxW, got shape {mask.shape}")
    if mask.shape != tuple(depth_hw):
        if mask.shape == tuple(rgb_hw) or _same_aspect(mask.shape, depth_hw):
            mask = resize_image(mask.astype(bool), depth_hw, nearest=True)
        else:
            raise InputError(f"mask of shape {mask.shape} does not fit the {depth_hw[1]}x{depth_hw[0]} image")
    mask = mask.astype(bool, copy=False)
    rows = np.flatnonzero(mask.any(axis=1))  # one pass over the image answers "empty?" and half the box
    if len(rows) == 0:
        return None
    if m.box is None:
        cols = np.flatnonzero(mask[rows[0] : rows[-1] + 1].any(axis=0))  # only the rows that hold the mask
        box = np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float32)
    else:
        box = np.asarray(m.box, dtype=np.float32)
    return Mask2D(mask=mask, box=box, score=float(m.score), label=m.label, source_id=m.source_id)


def validate_masks(masks, depth_hw, rgb_hw, where: str = "frame") -> Tuple[List[Mask2D], Dict[str, int]]:
    """Each mask checked on its own (validate_mask): a bad one drops only itself. Returns the good masks and
    the drop counts by reason (bad_mask, empty_mask)."""
    kept: List[Mask2D] = []
    drops: Dict[str, int] = {}
    for m in masks:
        try:
            ok = validate_mask(m, depth_hw, rgb_hw)
        except (InputError, TypeError, ValueError, AttributeError) as exc:
            log.warning("%s: mask dropped: %s", where, exc)
            drops["bad_mask"] = drops.get("bad_mask", 0) + 1
            continue
        if ok is None:
            drops["empty_mask"] = drops.get("empty_mask", 0) + 1
        else:
            kept.append(ok)
    return kept, drops


def _same_aspect(a, b) -> bool:
    return abs(a[0] * b[1] - a[1] * b[0]) <= max(a[0], b[0])
