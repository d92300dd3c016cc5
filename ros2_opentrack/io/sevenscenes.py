"""Reader of a Microsoft 7-Scenes sequence folder:

    frame-XXXXXX.color.jpg|png  frame-XXXXXX.depth.png (uint16 mm, 65535 = invalid)  frame-XXXXXX.pose.txt
    camera-intrinsics.txt (3x3; when absent, the dataset's nominal 585 px focal at 640x480)

7-Scenes colour and depth are not registered; the colour image is only resized to the depth size, as the
Frame contract does for every source."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

from ..errors import InputError
from ..types import Frame, scale_intrinsics
from .scannet import FPS, FolderReader, FrameDropped, read_color, read_depth_mm, read_intrinsics, read_pose

SEVENSCENES_LAYOUT = "a 7-Scenes folder: frame-XXXXXX.color.jpg, frame-XXXXXX.depth.png, frame-XXXXXX.pose.txt"
INVALID_DEPTH = 65535
NOMINAL_K = np.array([[585.0, 0.0, 320.0], [0.0, 585.0, 240.0], [0.0, 0.0, 1.0]])
_FRAME_RE = re.compile(r"^frame-(\d+)\.(color|depth|pose)\.(jpg|png|txt)$")


class SevenScenesReader(FolderReader):
    name = "7scenes"

    @staticmethod
    def claims(path: Path) -> bool:
        return path.is_dir() and any(path.glob("frame-*.pose.txt"))

    def __init__(self, path, stride: int = 1, max_frames: Optional[int] = None, with_masks: bool = False):
        super().__init__(path, stride, max_frames)
        root = self.path
        if not root.is_dir():
            raise InputError(f"scene '{root}' is not a folder: expected {SEVENSCENES_LAYOUT}")
        if with_masks:
            raise InputError(
                f"scene '{root}' is a 7-Scenes folder, which has no instance masks (use masks.source=model)"
            )
        self._files: Dict[int, Dict[str, Path]] = {}
        for p in root.iterdir():
            m = _FRAME_RE.match(p.name)
            if m:
                self._files.setdefault(int(m.group(1)), {})[m.group(2)] = p
        if not self._files:
            raise InputError(f"scene '{root}' holds no frames: expected {SEVENSCENES_LAYOUT}")
        self.indices = self._select(sorted(self._files))
        K_path = root / "camera-intrinsics.txt"
        self._K = read_intrinsics(K_path) if K_path.is_file() else NOMINAL_K
        # The file gives no image size; a centred principal point tells it (7-Scenes: 320, 240 -> 640x480).
        self._K_hw: Tuple[int, int] = (int(round(2 * self._K[1, 2])), int(round(2 * self._K[0, 2])))

    def _load(self, index: int) -> Frame:
        files = self._files.get(index, {})
        stem = self.path / f"frame-{index:06d}"
        rgb = read_color(files.get("color", Path(f"{stem}.color.jpg")))
        depth = read_depth_mm(files.get("depth", Path(f"{stem}.depth.png")), invalid=INVALID_DEPTH)
        T = read_pose(files.get("pose", Path(f"{stem}.pose.txt")))
        return Frame(
            rgb=rgb,
            depth=depth,
            K=self._K_for(depth.shape, rgb.shape[:2]),
            T_world_cam=T,
            stamp=index / FPS,
            index=index,
            source=f"{stem}.*",
        )

    def _K_for(self, depth_hw, color_hw) -> np.ndarray:
        # camera-intrinsics.txt describes the depth camera; rescale when the depth image is clearly of another
        # size (a downsampled copy of the dataset), not for a principal point a few pixels off-centre.
        if abs(self._K_hw[0] / depth_hw[0] - 1) > 0.1 or abs(self._K_hw[1] / depth_hw[1] - 1) > 0.1:
            return scale_intrinsics(self._K, self._K_hw, depth_hw)
        return self._K


__all__ = ["SevenScenesReader", "FrameDropped"]
