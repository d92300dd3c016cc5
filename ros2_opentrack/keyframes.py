"""Which frames run the expensive 2D stage (DESIGN step 1): every n-th frame, or after enough motion, capped
in rate. Any enabled trigger makes a keyframe; the first frame always is one."""

from __future__ import annotations

from typing import Optional

import numpy as np

from . import geometry
from .types import Frame


class KeyframeSelector:
    def __init__(self, keyframe_cfg):
        self.cfg = keyframe_cfg
        self.reset()

    def reset(self) -> None:
        self._since_last = 0
        self._last_pose: Optional[np.ndarray] = None
        self._last_stamp: Optional[float] = None

    def __call__(self, frame: Frame) -> bool:
        """Whether ``frame`` is a keyframe; a keyframe becomes the reference for the next decision."""
        if self._is_keyframe(frame):
            self._since_last = 1
            self._last_pose, self._last_stamp = frame.T_world_cam, frame.stamp
            return True
        self._since_last += 1
        return False

    def _is_keyframe(self, frame: Frame) -> bool:
        kc = self.cfg
        if self._last_pose is None:
            return True
        if kc.max_rate_hz > 0 and 0 <= frame.stamp - self._last_stamp < 1.0 / kc.max_rate_hz:  # < 0: time jumped back
            return False
        motion_on = kc.min_translation_m > 0 or kc.min_rotation_deg > 0
        if kc.every_n <= 0 and not motion_on:
            return True
        if kc.every_n > 0 and self._since_last >= kc.every_n:
            return True
        delta = geometry.invert(self._last_pose) @ frame.T_world_cam
        if kc.min_translation_m > 0 and np.linalg.norm(delta[:3, 3]) >= kc.min_translation_m:
            return True
        if kc.min_rotation_deg > 0:
            angle = np.degrees(np.arccos(np.clip((np.trace(delta[:3, :3]) - 1) / 2, -1, 1)))
            if angle >= kc.min_rotation_deg:
                return True
        return False
