"""Reader of the ScanNet SensReader export layout (also what ``synthetic.write_scene_folder`` writes).

    color/<i>.jpg  depth/<i>.png (uint16 mm)  pose/<i>.txt (4x4 camera-to-world)
    intrinsic/intrinsic_depth.txt (4x4 or 3x3) [+ intrinsic_color.txt]
    optional: instance/<i>.png (uint16 ids, 0 = none), instance_labels.json ({"id": "label"}),
              points.ply + gt_instances.txt (per point label*1000+instance, 0 = ignore)

A frame that cannot be read (missing file, unreadable image, invalid pose such as ScanNet's -inf poses) is
skipped, counted in ``reader.dropped`` by reason and logged; the run goes on."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

from ..errors import InputError
from ..types import Frame, Mask2D, resize_image, scale_intrinsics, validate_intrinsics
from .encodings import label_image_to_masks, swap_red_blue

log = logging.getLogger(__name__)

SCANNET_LAYOUT = (
    "a ScanNet export folder: color/<i>.jpg, depth/<i>.png (uint16 mm), pose/<i>.txt (4x4 "
    "camera-to-world), intrinsic/intrinsic_depth.txt"
)
FPS = 30.0  # both ScanNet and 7-Scenes are recorded at 30 Hz; stamps are index / FPS


class FrameDropped(Exception):
    """One frame could not be read; ``reason`` is the key counted in ``reader.dropped``."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class FolderReader:
    """Shared logic of folder readers: index selection (stride, max_frames), drop counting, validation."""

    name = "folder"

    def __init__(self, path, stride: int = 1, max_frames: Optional[int] = None):
        self.path = Path(path)
        if stride < 1:
            raise InputError(f"stride must be >= 1, got {stride}")
        if max_frames is not None and max_frames < 1:
            raise InputError(f"max_frames must be >= 1 or None, got {max_frames}")
        self.stride = int(stride)
        self.max_frames = max_frames
        self.dropped: Dict[str, int] = Counter()
        self.first_reasons: Dict[str, str] = {}  # reason -> the first skip's message (names the file)
        self.indices: List[int] = []  # frame numbers that will be attempted, after stride / max_frames

    def _select(self, all_indices: List[int]) -> List[int]:
        chosen = sorted(all_indices)[:: self.stride]
        return chosen[: self.max_frames] if self.max_frames is not None else chosen

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[Frame]:
        for index in self.indices:
            try:
                yield self._load(index)
            except FrameDropped as drop:
                self.dropped[drop.reason] += 1
                self.first_reasons.setdefault(drop.reason, str(drop))
                log.warning("%s: skipping frame %d: %s", self.path, index, drop)

    def _load(self, index: int) -> Frame:
        raise NotImplementedError


def read_color(path: Path) -> np.ndarray:
    import cv2

    if not path.is_file():
        raise FrameDropped("missing_file", f"{path} is missing")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FrameDropped("unreadable_image", f"{path} cannot be read: {exc}") from None
    if data[:2] == b"\xff\xd8" and not data.rstrip(b"\x00\r\n\t ").endswith(b"\xff\xd9"):
        # libjpeg decodes a cut-off JPEG with its missing rows grey (a warning only): refuse it instead
        raise FrameDropped(
            "truncated_image", f"{path} is a truncated JPEG (no end-of-image marker after {len(data)} bytes)"
        )
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    if bgr is None:
        raise FrameDropped("unreadable_image", f"{path} is not a readable image")
    return swap_red_blue(bgr)


def read_depth_mm(path: Path, invalid: Optional[int] = None) -> np.ndarray:
    """uint16 millimetre PNG -> float32 metres, 0 where invalid."""
    import cv2

    if not path.is_file():
        raise FrameDropped("missing_file", f"{path} is missing")
    depth = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if depth is None or depth.ndim != 2 or depth.dtype != np.uint16:
        what = "not a readable image" if depth is None else f"not a uint16 single-channel PNG ({depth.dtype})"
        raise FrameDropped("unreadable_image", f"{path} is {what}")
    metres = depth.astype(np.float32) / 1000.0
    if invalid is not None:
        metres[depth == invalid] = 0.0
    return metres


def read_pose(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FrameDropped("missing_file", f"{path} is missing")
    try:
        T = np.loadtxt(path, dtype=np.float64)
    except ValueError as exc:
        raise FrameDropped("invalid_pose", f"{path} is not a 4x4 matrix of numbers ({exc})") from None
    if T.shape != (4, 4):
        raise FrameDropped("invalid_pose", f"{path} holds shape {T.shape}, expected a 4x4 matrix")
    if not np.isfinite(T).all():
        raise FrameDropped("invalid_pose", f"{path} has non-finite values (tracking lost)")
    return T


def read_intrinsics(path: Path) -> np.ndarray:
    """3x3 K from a 3x3 or 4x4 (ScanNet) text matrix."""
    try:
        M = np.loadtxt(path, dtype=np.float64)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read intrinsics '{path}': {exc}") from None
    if M.shape not in ((3, 3), (4, 4)):
        raise InputError(f"intrinsics '{path}' has shape {M.shape}, expected a 3x3 or 4x4 matrix")
    return M[:3, :3].copy()


def numeric_stems(folder: Path, suffix: str) -> Dict[int, Path]:
    out = {}
    if folder.is_dir():
        for p in folder.iterdir():
            if p.name.endswith(suffix) and p.name[: -len(suffix)].isdigit():
                out[int(p.name[: -len(suffix)])] = p
    return out


class ScanNetReader(FolderReader):
    name = "scannet"

    @staticmethod
    def claims(path: Path) -> bool:
        return path.is_dir() and (path / "color").is_dir()

    def __init__(
        self,
        path,
        stride: int = 1,
        max_frames: Optional[int] = None,
        with_masks: bool = False,
        min_mask_pixels: int = 1,
    ):
        super().__init__(path, stride, max_frames)
        self.with_masks = with_masks
        self.min_mask_pixels = int(min_mask_pixels)
        self.mask_ids_dropped: Dict[str, int] = Counter()  # too_small / over_cap ids of instance/<i>.png
        root = self.path
        if not root.is_dir():
            raise InputError(f"scene '{root}' is not a folder: expected {SCANNET_LAYOUT}")
        missing = [d for d in ("color", "depth", "pose") if not (root / d).is_dir()]
        if missing:
            raise InputError(f"scene '{root}' has no {', '.join(d + '/' for d in missing)}: expected {SCANNET_LAYOUT}")
        found = set()
        for sub, suffix in (("color", ".jpg"), ("depth", ".png"), ("pose", ".txt")):
            found |= set(numeric_stems(root / sub, suffix))
        if not found:
            raise InputError(f"scene '{root}' holds no frames: expected {SCANNET_LAYOUT}")
        self.indices = self._select(sorted(found))
        self._K_depth, self._K_color = self._load_intrinsics()
        self._K_cache: Dict[Tuple[int, int], np.ndarray] = {}
        self.labels = self._load_labels()
        if with_masks and not (root / "instance").is_dir():
            raise InputError(f"scene '{root}' has no instance/ folder of uint16 id PNGs, needed for dataset masks")

    def _load_intrinsics(self):
        folder = self.path / "intrinsic"
        depth_txt, color_txt = folder / "intrinsic_depth.txt", folder / "intrinsic_color.txt"
        K_depth = read_intrinsics(depth_txt) if depth_txt.is_file() else None
        K_color = read_intrinsics(color_txt) if color_txt.is_file() else None
        self._K_file = depth_txt if K_depth is not None else color_txt
        if K_depth is None and K_color is None:
            raise InputError(
                f"scene '{self.path}' has no intrinsic/intrinsic_depth.txt or intrinsic_color.txt: "
                f"expected {SCANNET_LAYOUT}"
            )
        return K_depth, K_color

    def _load_labels(self) -> Dict[int, str]:
        path = self.path / "instance_labels.json"
        if not path.is_file():
            return {}
        try:
            data = json.loads(path.read_text())
            return {int(k): str(v) for k, v in data.items()}
        except (ValueError, AttributeError) as exc:
            raise InputError(f'\'{path}\' must be a JSON object {{"<instance id>": "<label>"}}: {exc}') from None

    def K_for(self, depth_hw: Tuple[int, int], color_hw: Tuple[int, int]) -> np.ndarray:
        """Depth intrinsics; when only colour intrinsics exist, scaled from the colour size to the depth size."""
        key = (depth_hw, color_hw)
        if key not in self._K_cache:
            if self._K_depth is not None:
                K = self._K_depth
            else:
                K = scale_intrinsics(self._K_color, color_hw, depth_hw)
            self._K_cache[key] = K
        try:  # zeros / NaN: every frame's drop names the file, not the frame
            validate_intrinsics(self._K_cache[key])
        except InputError as exc:
            raise FrameDropped("bad_intrinsics", f"{self._K_file}: {exc}") from None
        return self._K_cache[key]

    def _load(self, index: int) -> Frame:
        root = self.path
        rgb = read_color(root / "color" / f"{index}.jpg")
        depth = read_depth_mm(root / "depth" / f"{index}.png")
        T = read_pose(root / "pose" / f"{index}.txt")
        K = self.K_for(depth.shape, rgb.shape[:2])
        masks = self._masks(index, depth.shape) if self.with_masks else None
        # not validated here: the pipeline's entry validates every frame once, whatever its reader
        return Frame(
            rgb=rgb,
            depth=depth,
            K=K,
            T_world_cam=T,
            stamp=index / FPS,
            index=index,
            masks=masks,
            source=str(root / "color" / f"{index}.jpg"),
        )

    def _masks(self, index: int, hw) -> List[Mask2D]:
        import cv2

        path = self.path / "instance" / f"{index}.png"
        if not path.is_file():
            raise FrameDropped("missing_file", f"{path} is missing")
        ids = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if ids is None or ids.ndim != 2:
            raise FrameDropped("unreadable_image", f"{path} is not a single-channel id image")
        if ids.shape != tuple(hw):
            ids = resize_image(ids, hw, nearest=True)
        decoded = label_image_to_masks(ids, self.min_mask_pixels, names=self.labels)
        self.mask_ids_dropped.update(too_small=decoded.too_small, over_cap=decoded.over_cap)
        return decoded.masks


def read_scene_gt(scene) -> Tuple[np.ndarray, np.ndarray, Dict[int, str]]:
    """(points (N,3), gt ids (N,) label*1000+instance with 0 = ignore, {label id: name}) of a scene folder."""
    from .ply import read_ply_points

    scene = Path(scene)
    ply, txt = scene / "points.ply", scene / "gt_instances.txt"
    if not ply.is_file() or not txt.is_file():
        raise InputError(
            f"ground truth '{scene}' needs points.ply and gt_instances.txt (per point label*1000+instance, 0 = ignore)"
        )
    points, _ = read_ply_points(ply)
    try:
        gt = np.loadtxt(txt, dtype=np.int64).reshape(-1)
    except ValueError as exc:
        raise InputError(f"'{txt}' must hold one integer per line: {exc}") from None
    if len(gt) != len(points):
        raise InputError(f"'{txt}' has {len(gt)} ids but points.ply has {len(points)} points")
    names: Dict[int, str] = {}
    names_path = scene / "gt_label_names.json"
    if names_path.is_file():
        try:
            names = {int(k): str(v) for k, v in json.loads(names_path.read_text()).items()}
        except (ValueError, AttributeError):
            names = {}
    return points, gt, names
