"""A small TF buffer (no ROS imports): serves the ROS node (where tf2_ros, which has no PyPI wheel, is missing)
and the bag reader (TF topics, and pose / odometry topics as one timed edge world <- camera).

Stores parent <- child transforms (static and timed), answers ``lookup(target, source, stamp)`` -> the 4x4
transform mapping ``source`` coordinates into ``target`` (tf2's lookup_transform(target, source) convention),
walking the tree through the common ancestor. A timed edge at a stamp is: the sample at that stamp; else the
slerp between the two samples around it when ``interpolate`` and both lie within ``interp_reach_s`` of the stamp
(never across a longer gap: the motion in between is unknown); else the nearest sample within ``tolerance``
(no extrapolation, like tf2). ``wait_lookup`` blocks the calling (worker) thread up to a timeout for data that
has not arrived yet: a stamp newer than an edge's newest sample waits for a sample at or after it, since the
nearest older one (the previous camera pose, when tf lags the images by a frame) would lift the image from the
wrong place; only at the timeout does that nearest sample within the tolerance serve. ``cache_s`` bounds the
history per edge (``float('inf')`` keeps all, as a bag reader wants).
"""

from __future__ import annotations

import bisect
import threading
import time
from typing import Dict, List, Optional, Tuple

import numpy as np

from .errors import InputError
from .geometry import interpolate_pose
from .types import validate_pose


class TransformUnavailable(LookupError):
    """No transform between the frames at that time (missing edge, or no sample close enough to the stamp)."""


class TfBuffer:
    def __init__(
        self,
        cache_s: float = 10.0,
        tolerance: float = 0.05,
        interpolate: bool = True,
        interp_reach_s: Optional[float] = None,
        jump_back_s: Optional[float] = None,
    ):
        """``interp_reach_s``: the farthest a sample may lie from the stamp to be interpolated from (None: any
        distance, i.e. interpolation across gaps of any length). ``jump_back_s``: a timed sample this much older
        than its edge's newest means time jumped back (bag loop, sim reset): all timed history is cleared, as
        tf2 does, and counted in ``jumps_back`` (None: never; a bag reader wants all its history)."""
        self.jump_back_s = None if jump_back_s is None or jump_back_s <= 0 else float(jump_back_s)
        self.jumps_back = 0
        self.cache_s = float(cache_s)
        self.tolerance = float(tolerance)
        self.interpolate = bool(interpolate)
        self.interp_reach_s = float("inf") if interp_reach_s is None else float(interp_reach_s)
        self._static: Dict[str, Tuple[str, np.ndarray]] = {}  # child -> (parent, T_parent_child)
        self._timed: Dict[str, Tuple[str, List[float], List[np.ndarray]]] = {}  # child -> (parent, stamps, Ts)
        self._cond = threading.Condition()

    def set_transform(self, parent: str, child: str, T_parent_child, stamp: float, static: bool = False) -> None:
        """Store one edge. Non-rigid / non-finite transforms raise InputError (and are not stored)."""
        parent, child = _strip(parent), _strip(child)
        if not parent or not child or parent == child:
            raise InputError(f"transform needs two different frame ids, got parent '{parent}', child '{child}'")
        T = validate_pose(T_parent_child)
        with self._cond:
            if static:
                self._static[child] = (parent, T)
            else:
                self._insert_timed(parent, child, T, float(stamp))
            self._cond.notify_all()

    def _insert_timed(self, parent: str, child: str, T: np.ndarray, stamp: float) -> None:
        known = self._timed.get(child)
        if self.jump_back_s is not None and known and known[1] and stamp < known[1][-1] - self.jump_back_s:
            self._timed.clear()  # the old timeline's samples would shadow the new one (and be cut as stale)
            self.jumps_back += 1
        old_parent, stamps, Ts = self._timed.get(child, (parent, [], []))
        if old_parent != parent:  # re-parented: the old history no longer applies
            stamps, Ts = [], []
        i = bisect.bisect_left(stamps, stamp)
        if i < len(stamps) and stamps[i] == stamp:
            Ts[i] = T
        else:
            stamps.insert(i, stamp)
            Ts.insert(i, T)
        if self.cache_s != float("inf"):
            cut = bisect.bisect_left(stamps, stamps[-1] - self.cache_s)
            stamps, Ts = stamps[cut:], Ts[cut:]
        self._timed[child] = (parent, stamps, Ts)

    def lookup(self, target: str, source: str, stamp: Optional[float] = None, extrapolate: bool = True) -> np.ndarray:
        """T_target_source at ``stamp`` (None: the latest available). ``extrapolate`` False: a stamp past an
        edge's newest sample is unavailable, even within the tolerance. Raises TransformUnavailable."""
        target, source = _strip(target), _strip(source)
        with self._cond:
            if target == source:
                return np.eye(4)
            up_src = self._chain(source)
            up_tgt = self._chain(target)
            common = next((f for f in up_src if f in up_tgt), None)
            if common is None:
                raise TransformUnavailable(
                    f"no transform between '{target}' and '{source}' (frames known: {sorted(self.frames())})"
                )
            T_common_src = self._compose(source, common, stamp, extrapolate)
            T_common_tgt = self._compose(target, common, stamp, extrapolate)
            return np.linalg.inv(T_common_tgt) @ T_common_src

    def wait_lookup(self, target: str, source: str, stamp: Optional[float], timeout_s: float) -> np.ndarray:
        """Like ``lookup`` but waits up to ``timeout_s`` (wall time) for the transform to become available,
        preferring a sample at or after ``stamp`` to the older one the tolerance would allow at once."""
        deadline = time.monotonic() + max(0.0, timeout_s)
        while True:
            try:
                return self.lookup(target, source, stamp, extrapolate=False)
            except TransformUnavailable:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return self.lookup(target, source, stamp)
                with self._cond:
                    self._cond.wait(min(remaining, 0.05))

    def frames(self) -> set:
        return (
            set(self._static)
            | set(self._timed)
            | {p for p, *_ in self._static.values()}
            | {p for p, *_ in self._timed.values()}
        )

    def __bool__(self) -> bool:
        return bool(self._static or self._timed)

    def clear(self) -> None:
        with self._cond:
            self._timed.clear()  # static transforms stay, as in tf2 after a time jump

    def forget_after(self, stamp: float) -> int:
        """Drop the timed samples newer than ``stamp`` (the old timeline after time jumped back to it, or a
        wildly future sample); returns how many went. Static transforms stay."""
        dropped = 0
        with self._cond:
            for child, (parent, stamps, Ts) in list(self._timed.items()):
                cut = bisect.bisect_right(stamps, stamp)
                dropped += len(stamps) - cut
                if cut == 0:
                    del self._timed[child]
                elif cut < len(stamps):
                    self._timed[child] = (parent, stamps[:cut], Ts[:cut])
        return dropped

    def _parent(self, child: str) -> Optional[str]:
        if child in self._static:
            return self._static[child][0]
        if child in self._timed:
            return self._timed[child][0]
        return None

    def _chain(self, frame: str) -> List[str]:
        chain = [frame]
        while True:
            parent = self._parent(chain[-1])
            if parent is None or parent in chain or len(chain) > 64:
                return chain
            chain.append(parent)

    def _compose(self, frame: str, ancestor: str, stamp: Optional[float], extrapolate: bool = True) -> np.ndarray:
        T = np.eye(4)
        while frame != ancestor:
            parent = self._parent(frame)
            T = self._edge(frame, stamp, extrapolate) @ T
            frame = parent
        return T

    def _edge(self, child: str, stamp: Optional[float], extrapolate: bool = True) -> np.ndarray:
        if child in self._static:
            return self._static[child][1]
        parent, stamps, Ts = self._timed[child]
        if stamp is None:
            return Ts[-1]
        if not extrapolate and stamp > stamps[-1]:
            raise TransformUnavailable(
                f"transform '{parent}' -> '{child}' has no sample at or after t={stamp:.3f} yet "
                f"(newest {stamps[-1]:.3f})"
            )
        i = bisect.bisect_left(stamps, stamp)
        if i < len(stamps) and stamps[i] == stamp:
            return Ts[i]
        if (
            self.interpolate
            and 0 < i < len(stamps)
            and max(stamp - stamps[i - 1], stamps[i] - stamp) <= self.interp_reach_s
        ):
            alpha = (stamp - stamps[i - 1]) / (stamps[i] - stamps[i - 1])
            return interpolate_pose(Ts[i - 1], Ts[i], alpha)
        nearest = min((j for j in (i - 1, i) if 0 <= j < len(stamps)), key=lambda j: abs(stamps[j] - stamp))
        if abs(stamps[nearest] - stamp) <= self.tolerance:
            return Ts[nearest]
        if stamps[0] < stamp < stamps[-1]:
            raise TransformUnavailable(
                f"transform '{parent}' -> '{child}' has no sample within {self.tolerance} s of t={stamp:.3f} "
                f"(gap [{stamps[i - 1]:.3f}, {stamps[i]:.3f}])"
            )
        raise TransformUnavailable(
            f"transform '{parent}' -> '{child}' at t={stamp:.3f} is outside the buffered range "
            f"[{stamps[0]:.3f}, {stamps[-1]:.3f}] (no extrapolation beyond {self.tolerance} s)"
        )


def _strip(frame: str) -> str:
    return str(frame or "").lstrip("/")
