"""ROS 2 bags (MCAP or sqlite3) without ROS: read RGB-D + camera_info + pose as Frames, and write scenes as bags.

Uses the pure-Python ``rosbags`` library. A bag is either a rosbag2 folder (metadata.yaml + storage files) or a
single .mcap / .db3 file. Reading makes two passes: the first collects header stamps of the image topics and the
small topics (camera_info, poses, TF) whole; the second streams only the image messages that the synchronised
frame plan needs, so memory stays at a few frames whatever the length of the bag.
"""

from __future__ import annotations

import bisect
import logging
import os
import shutil
import struct
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np

from .. import geometry
from ..errors import InputError
from ..tf_tree import TfBuffer, TransformUnavailable
from ..types import Frame, Mask2D
from . import encodings as enc

log = logging.getLogger(__name__)

POSE_SOURCES = ("auto", "pose", "odom", "tf")
_IMAGE = "sensor_msgs/msg/Image"
_COMPRESSED = "sensor_msgs/msg/CompressedImage"
_CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
_POSE_STAMPED = "geometry_msgs/msg/PoseStamped"
_POSE_COV = "geometry_msgs/msg/PoseWithCovarianceStamped"
_ODOM = "nav_msgs/msg/Odometry"
_TF = "tf2_msgs/msg/TFMessage"
_MAX_DROP_WARNINGS = 5  # per reason; the rest are only counted


@dataclass
class BagTopics:
    """Topic names and frames of a bag (RealSense-style defaults, all overridable).

    camera_info must describe the depth image's pixels: with an unregistered depth stream use the aligned one
    (/camera/aligned_depth_to_color/image_raw). K is rescaled when camera_info's size differs from the depth
    image's (same field of view assumed)."""

    rgb: str = "/camera/color/image_raw"
    depth: str = "/camera/depth/image_raw"
    camera_info: str = "/camera/color/camera_info"
    pose: str = "/camera/pose"  # geometry_msgs/PoseStamped (or PoseWithCovarianceStamped): T_world_cam
    odom: str = "/odom"  # nav_msgs/Odometry of child_frame_id; /tf_static links it to camera_frame if it can
    tf: str = "/tf"
    tf_static: str = "/tf_static"
    masks: Optional[str] = "/camera/masks/image_raw"  # label image (16UC1/32SC1/8UC1/mono8/mono16), pixel = id
    world_frame: str = "map"
    camera_frame: str = "camera_color_optical_frame"  # "" = the rgb header's frame_id
    pose_source: str = "auto"  # auto: pose topic if present, else odom, else tf


# ---------------------------------------------------------------------------------------------------------
# Opening bags: a rosbag2 folder through AnyReader, a lone .mcap / .db3 file through its storage plugin.


class _Bag:
    """Uniform access to a bag folder or a single storage file; every library error becomes InputError."""

    def __init__(self, path: Path):
        from rosbags.typesys import Stores, get_typestore

        self.path = path
        self.typestore = get_typestore(Stores.ROS2_KILTED)
        self._reader = None
        self._storage = None
        try:
            self._open()
        except InputError:
            raise
        except Exception as exc:  # rosbags / sqlite / struct errors: name the file, not the library internals
            self.close()
            raise InputError(_corrupt_message(path, exc)) from None

    def _open(self) -> None:
        if self.path.is_dir() and self.path.suffix.lower() == ".bag":
            # AnyReader takes any '*.bag' for a ROS 1 bag; a rosbag2 folder of that name is read directly
            from rosbags.rosbag2 import Reader

            self._storage = Reader(self.path)
            self._storage.open()
            self.connections = list(self._storage.connections)
            self._register_missing_types()
            return
        if self.path.is_dir():
            from rosbags.highlevel import AnyReader

            self._reader = AnyReader([self.path], default_typestore=self.typestore)
            self._reader.open()
            self.connections = list(self._reader.connections)
            return
        if self.path.suffix == ".mcap":
            from rosbags.rosbag2.storage_mcap import McapReader as Storage
        elif self.path.suffix == ".db3":
            from rosbags.rosbag2.storage_sqlite3 import Sqlite3Reader as Storage
        else:
            raise InputError(
                f"'{self.path}' is not a ROS 2 bag: expected a .mcap or .db3 file or a bag folder with metadata.yaml"
            )
        self._storage = Storage(self.path)
        self._storage.open()
        self.connections = list(self._storage.connections)
        self._register_missing_types()

    def _register_missing_types(self) -> None:
        """Custom message types in a lone file: learn them from the definitions the file carries."""
        from rosbags.typesys import get_types_from_msg

        for conn in self.connections:
            if conn.msgtype in self.typestore.types or not conn.msgdef.data:
                continue
            try:
                self.typestore.register(get_types_from_msg(conn.msgdef.data, conn.msgtype))
            except Exception as exc:  # an unparsable custom type only matters if we need that topic
                log.debug("%s: cannot register %s: %s", self.path, conn.msgtype, exc)

    def topics(self) -> Dict[str, str]:
        return {c.topic: c.msgtype for c in self.connections}

    def counts(self) -> Dict[str, int]:
        counts: Dict[str, int] = Counter()
        for c in self.connections:
            counts[c.topic] += int(c.msgcount)
        return counts

    def messages(self, topics: Iterable[str]) -> Iterator[Tuple[object, int, bytes]]:
        wanted = set(topics)
        conns = [c for c in self.connections if c.topic in wanted]
        if not conns:
            return
        source = self._reader if self._reader is not None else self._storage
        try:
            yield from source.messages(connections=conns)
        except InputError:
            raise
        except Exception as exc:
            raise InputError(_corrupt_message(self.path, exc)) from None

    def deserialize(self, raw: bytes, msgtype: str):
        if self._reader is not None:
            return self._reader.deserialize(raw, msgtype)
        return self.typestore.deserialize_cdr(raw, msgtype)

    def close(self) -> None:
        for obj in (self._reader, self._storage):
            if obj is not None:
                try:
                    obj.close()
                except Exception:  # closing a half-opened reader of a corrupt file
                    pass
        self._reader = self._storage = None


def _corrupt_message(path: Path, exc: Exception) -> str:
    detail = (str(exc) or type(exc).__name__).rstrip(".")
    msg = f"ROS 2 bag '{path}' cannot be read (truncated or corrupt?): {detail}"
    if path.is_dir():
        mcap = next(iter(sorted(path.glob("*.mcap"))), None)
    else:
        mcap = path if path.suffix == ".mcap" else None
    if mcap is not None and mcap.is_file():
        msg += "; " + _mcap_readable_prefix(mcap)
    return msg


def _mcap_readable_prefix(path: Path) -> str:
    """How much of a damaged MCAP file is intact: complete messages and the byte where reading stopped."""
    from mcap.records import Message
    from mcap.stream_reader import StreamReader

    size = path.stat().st_size
    count, last = 0, None
    with path.open("rb") as f:
        try:
            for record in StreamReader(f).records:
                if isinstance(record, Message):
                    count, last = count + 1, record.log_time
        except Exception:  # the damage itself; we only report where it starts
            pass
        stopped = f.tell()
    until = f" (last log time {last / 1e9:.3f} s)" if last is not None else ""
    return f"{count} complete messages readable{until}, stopped at byte {stopped} of {size} in {path.name}"


# ---------------------------------------------------------------------------------------------------------
# Poses: TF topics and pose / odometry topics (one timed edge world <- camera) go into the core TF buffer.

_SERIES_PARENT, _SERIES_CHILD = "world", "pose"  # the edge a pose / odometry topic is stored as


def _add_tf_message(buffer: TfBuffer, msg, static: bool) -> None:
    for tr in msg.transforms:
        T = geometry.pose_to_matrix(_xyz(tr.transform.translation), _xyzw(tr.transform.rotation))
        buffer.set_transform(tr.header.frame_id, tr.child_frame_id, T, _stamp(tr.header), static=static)


def _frame(name: str) -> str:
    return str(name).lstrip("/")


def _stamp(header) -> float:
    return header.stamp.sec + header.stamp.nanosec * 1e-9


def _xyz(v) -> Tuple[float, float, float]:
    return v.x, v.y, v.z


def _xyzw(q) -> Tuple[float, float, float, float]:
    return q.x, q.y, q.z, q.w


def _cdr_stamp(raw) -> float:
    """Header stamp straight from serialised bytes (every stamped message starts with its Header): avoids
    deserialising megabyte images in the planning pass."""
    order = "<" if raw[1] == 1 else ">"
    sec, nanosec = struct.unpack_from(order + "iI", bytes(raw[4:12]))
    return sec + nanosec * 1e-9


# ---------------------------------------------------------------------------------------------------------
# Reader


class RosbagReader:
    """SceneReader over a ROS 2 bag: synchronised RGB + depth (+ masks) + camera_info + pose as Frames.

    Depth is matched to each rgb message by nearest header stamp within ``sync_tolerance_s``; the pose is
    looked up at the rgb stamp within ``pose_tolerance_s`` (slerp between the samples around it when
    ``interpolate``). Frames that cannot be assembled are counted in ``dropped`` by reason and logged."""

    SUFFIXES = (".mcap", ".db3")

    @classmethod
    def claims(cls, path: Path) -> bool:
        """A bag file, a rosbag2 folder (metadata.yaml, whatever its name), or a folder a killed recorder left
        without metadata.yaml."""
        if path.is_file():
            return path.suffix.lower() in cls.SUFFIXES
        if (path / "metadata.yaml").is_file():
            return True
        return path.is_dir() and any(p.suffix.lower() in cls.SUFFIXES for p in path.iterdir() if p.is_file())

    def __init__(
        self,
        path,
        stride: int = 1,
        max_frames: Optional[int] = None,
        topics: Optional[BagTopics] = None,
        with_masks: bool = False,
        sync_tolerance_s: float = 0.02,
        pose_tolerance_s: float = 0.05,
        interpolate: bool = True,
    ):
        self.path = _resolve_bag_path(Path(path))
        self.name = self.path.stem if self.path.is_file() else self.path.name
        if stride < 1:
            raise InputError(f"stride must be >= 1, got {stride}")
        if max_frames is not None and max_frames < 1:
            raise InputError(f"max_frames must be >= 1 or None, got {max_frames}")
        self.topics = topics if topics is not None else BagTopics()
        if self.topics.pose_source not in POSE_SOURCES:
            raise InputError(f"pose_source '{self.topics.pose_source}' is unknown; expected one of {POSE_SOURCES}")
        if with_masks and not self.topics.masks:
            raise InputError("with_masks needs BagTopics.masks: the label image topic of the bag")
        self.stride, self.max_frames = int(stride), max_frames
        self.with_masks = with_masks
        self.sync_tolerance_s, self.pose_tolerance_s = float(sync_tolerance_s), float(pose_tolerance_s)
        self.interpolate = interpolate
        self.dropped: Dict[str, int] = Counter()
        self.first_reasons: Dict[str, str] = {}  # reason -> the first skip's message
        self._warned: Dict[str, int] = Counter()
        self.mask_ids_dropped: Dict[str, int] = Counter()  # too_small / over_cap ids of the label images
        with self._open() as bag:
            self._check_topics(bag)
            self._plan(bag)

    # -- setup -------------------------------------------------------------------------------------------

    def _open(self):
        bag = _Bag(self.path)
        return _Closing(bag)

    def _check_topics(self, bag: _Bag) -> None:
        t = self.topics
        have, counts = bag.topics(), bag.counts()
        present = {name for name in have if counts.get(name, 1) > 0}
        required = [t.rgb, t.depth, t.camera_info] + ([t.masks] if self.with_masks else [])
        self.pose_source = self._pick_pose_source(present)
        if self.pose_source == "pose":
            required.append(t.pose)
        elif self.pose_source == "odom":
            required.append(t.odom)
        missing = [name for name in required if name not in present]
        if self.pose_source is None:
            missing.append(f"a pose ({t.pose} or {t.odom} or {t.tf}/{t.tf_static})")
        if missing:
            listing = ", ".join(f"{name} [{have[name]}, {counts.get(name, '?')} msgs]" for name in sorted(have))
            raise InputError(
                f"ROS 2 bag '{self.path}' lacks topic(s) {', '.join(missing)}; it has: "
                f"{listing or 'no topics'}. Set the topic names (BagTopics / --topic options)."
            )
        for name, allowed in (
            (t.rgb, (_IMAGE, _COMPRESSED)),
            (t.depth, (_IMAGE, _COMPRESSED)),
            (t.camera_info, (_CAMERA_INFO,)),
        ):
            if have[name] not in allowed:
                raise InputError(
                    f"topic {name} of '{self.path}' has type {have[name]}; expected {' or '.join(allowed)}"
                )
        self._types = have

    def _pick_pose_source(self, present) -> Optional[str]:
        t = self.topics
        available = {
            "pose": t.pose in present,
            "odom": t.odom in present,
            "tf": t.tf in present or t.tf_static in present,
        }
        if t.pose_source != "auto":
            return t.pose_source if available[t.pose_source] else (None if t.pose_source == "tf" else t.pose_source)
        return next((s for s in ("pose", "odom", "tf") if available[s]), None)

    def _plan(self, bag: _Bag) -> None:
        """Pass 1: stamps of image messages, and camera_info / poses / TF in full."""
        t = self.topics
        image_topics = [t.rgb, t.depth] + ([t.masks] if self.with_masks else [])
        small = [t.camera_info, t.tf, t.tf_static] + [t.pose if self.pose_source == "pose" else t.odom]
        stamps: Dict[str, List[float]] = {name: [] for name in image_topics}
        self._infos: List[Tuple[float, object]] = []
        tol = self.pose_tolerance_s  # bags keep all samples and never interpolate across a longer gap
        self._tf = TfBuffer(cache_s=float("inf"), tolerance=tol, interpolate=self.interpolate, interp_reach_s=tol)
        self._poses = TfBuffer(cache_s=float("inf"), tolerance=tol, interpolate=self.interpolate, interp_reach_s=tol)
        self._odom_child: Optional[str] = None
        for conn, _, raw in bag.messages(image_topics + small):
            if conn.topic in stamps:
                stamps[conn.topic].append(_cdr_stamp(raw))
            else:
                self._add_small(bag, conn, raw)
        self._infos.sort(key=lambda item: item[0])
        self._info_stamps = [s for s, _ in self._infos]
        rgb_order = np.argsort(np.asarray(stamps[t.rgb]), kind="stable")
        chosen = rgb_order[:: self.stride]
        self._rgb_indices = [int(i) for i in (chosen[: self.max_frames] if self.max_frames else chosen)]
        self._rgb_stamps = stamps[t.rgb]
        self._partner = {name: self._match(stamps[t.rgb], stamps[name]) for name in image_topics[1:]}

    def _add_small(self, bag: _Bag, conn, raw) -> None:
        t = self.topics
        try:
            msg = bag.deserialize(raw, conn.msgtype)
            if conn.topic == t.camera_info:
                self._infos.append((_stamp(msg.header), msg))
            elif conn.topic in (t.tf, t.tf_static) and conn.msgtype == _TF:
                _add_tf_message(self._tf, msg, static=conn.topic == t.tf_static)
            elif conn.topic in (t.pose, t.odom):
                self._add_pose(msg, conn.msgtype)
        except InputError as exc:  # NaN quaternion and the like: that sample is unusable, the rest is fine
            self._drop("invalid_pose_message", f"{conn.topic}: {exc}", count=False)
        except Exception as exc:
            self._drop("corrupt_message", f"{conn.topic}: cannot deserialise {conn.msgtype}: {exc}", count=False)

    def _add_pose(self, msg, msgtype: str) -> None:
        if msgtype == _POSE_STAMPED:
            pose = msg.pose
        elif msgtype in (_ODOM, _POSE_COV):
            pose = msg.pose.pose
            if msgtype == _ODOM:
                self._odom_child = _frame(msg.child_frame_id)
        else:
            raise InputError(f"pose topic has type {msgtype}; expected {_POSE_STAMPED}, {_POSE_COV} or {_ODOM}")
        T = geometry.pose_to_matrix(_xyz(pose.position), _xyzw(pose.orientation))
        self._poses.set_transform(_SERIES_PARENT, _SERIES_CHILD, T, _stamp(msg.header))

    def _match(self, ref: List[float], other: List[float]) -> Dict[int, int]:
        """rgb message index -> index of the other topic's message nearest in stamp, within tolerance."""
        if not other:
            return {}
        order = np.argsort(other, kind="stable")
        sorted_other = np.asarray(other)[order]
        out = {}
        for i in self._rgb_indices:
            j = int(np.searchsorted(sorted_other, ref[i]))
            cands = [k for k in (j - 1, j) if 0 <= k < len(sorted_other)]
            k = min(cands, key=lambda c: abs(sorted_other[c] - ref[i]))
            if abs(sorted_other[k] - ref[i]) <= self.sync_tolerance_s:
                out[i] = int(order[k])
        return out

    # -- SceneReader -------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._rgb_indices)

    def __iter__(self) -> Iterator[Frame]:
        """Pass 2: stream the image messages the plan needs; yield frames in rgb stamp order."""
        t = self.topics
        image_topics = [t.rgb, t.depth] + ([t.masks] if self.with_masks else [])
        wanted = {t.rgb: {i: i for i in self._rgb_indices}}
        for name in image_topics[1:]:
            wanted[name] = {}
            for i, j in self._partner[name].items():
                wanted[name].setdefault(j, []).append(i)
        got: Dict[int, Dict[str, Tuple[object, bytes]]] = {i: {} for i in self._rgb_indices}
        position = {name: 0 for name in image_topics}
        queue = list(self._rgb_indices)  # emission order = rgb stamp order
        with self._open() as bag:
            for conn, _, raw in bag.messages(image_topics):
                j = position[conn.topic]
                position[conn.topic] += 1
                owners = wanted[conn.topic].get(j)
                if owners is None:
                    continue
                for i in owners if isinstance(owners, list) else [owners]:
                    got[i][conn.topic] = (conn, raw)
                while queue and self._complete(queue[0], got[queue[0]]):
                    head = queue.pop(0)
                    frame = self._assemble(bag, head, got.pop(head))
                    if frame is not None:
                        yield frame
            for i in queue:  # whatever is left lacks a partner message
                frame = self._assemble(bag, i, got.pop(i))
                if frame is not None:
                    yield frame

    def _complete(self, i: int, parts: Dict[str, Tuple[object, bytes]]) -> bool:
        return all(name in parts for name in [self.topics.rgb] + [n for n, m in self._partner.items() if i in m])

    def _assemble(self, bag: _Bag, i: int, parts) -> Optional[Frame]:
        t = self.topics
        stamp = self._rgb_stamps[i]
        try:
            if t.depth not in parts:
                raise _Drop(
                    "no_depth_within_tolerance",
                    f"no {t.depth} message within {self.sync_tolerance_s} s of t={stamp:.3f}",
                )
            rgb_msg = self._deserialize(bag, *parts[t.rgb])
            depth_msg = self._deserialize(bag, *parts[t.depth])
            rgb = self._decode(rgb_msg, colour=True)
            depth = self._decode(depth_msg, colour=False)
            K = self._intrinsics(stamp, depth.shape)
            T = self._pose(stamp, _frame(rgb_msg.header.frame_id))
            masks = self._masks(bag, parts, stamp) if self.with_masks else None
            return Frame(
                rgb=rgb,
                depth=depth,
                K=K,
                T_world_cam=T,
                stamp=stamp,
                index=i,
                masks=masks,
                frame_id=_frame(rgb_msg.header.frame_id) or "camera",
                source=f"{self.path.name} {t.rgb} t={stamp:.3f}",
            )
        except _Drop as drop:
            self._drop(drop.reason, f"frame {i} (t={stamp:.3f}): {drop}")
            return None

    def _deserialize(self, bag: _Bag, conn, raw):
        try:
            return bag.deserialize(raw, conn.msgtype)
        except Exception as exc:
            raise _Drop("corrupt_message", f"{conn.topic}: cannot deserialise {conn.msgtype}: {exc}") from None

    def _decode(self, msg, colour: bool) -> np.ndarray:
        try:
            if hasattr(msg, "format"):  # CompressedImage
                image = enc.decode_compressed(msg.format, msg.data)
            else:
                image = enc.image_to_numpy(msg.encoding, msg.height, msg.width, msg.step, msg.data, msg.is_bigendian)
            if colour:
                if image.ndim != 3 or image.dtype != np.uint8:
                    raise InputError(
                        f"rgb topic carries a {image.dtype} {'x'.join(map(str, image.shape))} "
                        f"image; expected a colour encoding (rgb8, bgr8, rgba8, bgra8, mono8)"
                    )
                return image
            if image.ndim != 2:
                raise InputError("depth topic carries a colour image; expected 16UC1 / mono16 (mm) or 32FC1 (m)")
            return enc.depth_to_metres(image)
        except InputError as exc:
            raise _Drop("bad_encoding", str(exc)) from None

    def _intrinsics(self, stamp: float, depth_hw) -> np.ndarray:
        """K of the latest camera_info at or before the frame (else the first), scaled to the depth image."""
        k = max(bisect.bisect_right(self._info_stamps, stamp) - 1, 0)
        info = self._infos[k][1] if self._infos else None
        if info is None:
            raise _Drop("no_camera_info", f"no {self.topics.camera_info} message could be read")
        try:
            return enc.camera_info_intrinsics(info.k, (info.height, info.width), depth_hw)
        except InputError as exc:
            raise _Drop("camera_info_invalid", f"{self.topics.camera_info}: {exc}") from None

    def _pose(self, stamp: float, image_frame: str) -> np.ndarray:
        t = self.topics
        if self.pose_source == "tf":
            camera = _frame(t.camera_frame) or image_frame
            try:
                return self._tf.lookup(t.world_frame, camera, stamp)
            except TransformUnavailable as exc:
                raise _Drop("no_pose_within_tolerance", f"TF {t.world_frame} <- {camera}: {exc}") from None
        try:
            T = self._poses.lookup(_SERIES_PARENT, _SERIES_CHILD, stamp)
        except TransformUnavailable:
            topic = t.pose if self.pose_source == "pose" else t.odom
            raise _Drop(
                "no_pose_within_tolerance", f"no {topic} message within {self.pose_tolerance_s} s of t={stamp:.3f}"
            ) from None
        if self.pose_source == "odom":
            T = T @ self._odom_to_camera(image_frame)
        return T

    def _odom_to_camera(self, image_frame: str) -> np.ndarray:
        """Odometry gives the pose of its child frame (a base link): add the static child -> camera mount."""
        camera = _frame(self.topics.camera_frame) or image_frame
        if not self._odom_child or self._odom_child == camera:
            return np.eye(4)
        try:
            return self._tf.lookup(self._odom_child, camera)  # the mount: static, or else its latest sample
        except TransformUnavailable:
            if not self._warned["odom_mount"]:
                log.warning(
                    "%s: no static TF %s -> %s: using the odometry pose as the camera pose",
                    self.path,
                    self._odom_child,
                    camera,
                )
            self._warned["odom_mount"] += 1
            return np.eye(4)

    def _masks(self, bag: _Bag, parts, stamp: float) -> List[Mask2D]:
        name = self.topics.masks
        if name not in parts:
            raise _Drop("no_masks_within_tolerance", f"no {name} message within {self.sync_tolerance_s} s")
        msg = self._deserialize(bag, *parts[name])
        try:
            labels = enc.image_to_numpy(msg.encoding, msg.height, msg.width, msg.step, msg.data, msg.is_bigendian)
        except InputError as exc:
            raise _Drop("bad_encoding", f"{name}: {exc}") from None
        decoded = enc.label_image_to_masks(labels)
        self.mask_ids_dropped.update(too_small=decoded.too_small, over_cap=decoded.over_cap)
        return decoded.masks

    def _drop(self, reason: str, message: str, count: bool = True) -> None:
        if count:
            self.dropped[reason] += 1
            self.first_reasons.setdefault(reason, f"{self.path.name}: {message}")
        if self._warned[reason] < _MAX_DROP_WARNINGS:
            log.warning(
                "%s: skipping %s%s",
                self.path,
                message,
                " (further ones only counted)" if self._warned[reason] == _MAX_DROP_WARNINGS - 1 else "",
            )
        self._warned[reason] += 1


class _Drop(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class _Closing:
    def __init__(self, bag: _Bag):
        self.bag = bag

    def __enter__(self) -> _Bag:
        return self.bag

    def __exit__(self, *exc) -> None:
        self.bag.close()


def _resolve_bag_path(path: Path) -> Path:
    """A storage file inside a rosbag2 folder is read through the folder (split bags, compression)."""
    if not path.exists():
        raise InputError(f"ROS 2 bag '{path}' does not exist")
    if path.is_file() and (path.parent / "metadata.yaml").is_file():
        return path.parent
    if path.is_dir() and not (path / "metadata.yaml").is_file():  # a recording that never wrote its metadata
        files = sorted(p for p in path.iterdir() if p.suffix in (".mcap", ".db3"))
        if len(files) != 1:
            raise InputError(
                f"'{path}' is not a ROS 2 bag folder: no metadata.yaml and {len(files)} .mcap/.db3 "
                f"files (expected one; `ros2 bag reindex` rebuilds the metadata of a split bag)"
            )
        return files[0]
    return path


# ---------------------------------------------------------------------------------------------------------
# Writer


def convert_scene_to_bag(
    scene,
    out,
    stride: int = 1,
    max_frames: Optional[int] = None,
    topics: Optional[BagTopics] = None,
    progress: bool = True,
    **reader_kwargs,
) -> dict:
    """Write any scene open_scene can read as a ROS 2 bag; returns a summary (messages per topic, frames, ...)."""
    from . import open_scene

    scene = Path(scene)
    with_masks = scene.is_dir() and (scene / "instance").is_dir()
    reader = open_scene(scene, stride=stride, max_frames=max_frames, with_masks=with_masks, **reader_kwargs)
    summary = convert_frames_to_bag(
        reader,
        out,
        topics=topics,
        progress=progress,
        total=len(reader),
        desc=f"{getattr(reader, 'name', scene.name)} -> {Path(out).name}",
    )
    summary["source"] = str(scene)
    summary["dropped"] = dict(getattr(reader, "dropped", {}))
    return summary


def convert_frames_to_bag(
    frames: Iterable[Frame],
    out,
    topics: Optional[BagTopics] = None,
    progress: bool = False,
    total: Optional[int] = None,
    fps: float = 30.0,
    version: int = 9,
    desc: str = "bag",
    write_pose: bool = True,
    write_tf: bool = True,
) -> dict:
    """Write frames as a ROS 2 bag: rgb8 Image, 16UC1 mm depth, CameraInfo, PoseStamped, /tf, masks (16UC1).

    ``out`` ending in .mcap / .db3 becomes that single storage file (what ``ros2 bag play`` and Foxglove open);
    any other name becomes a rosbag2 folder (metadata.yaml + MCAP storage). Never overwrites. ``write_pose`` /
    ``write_tf`` choose how the pose is published (PoseStamped on topics.pose, world -> camera on topics.tf)."""
    out = Path(out)
    topics = topics if topics is not None else BagTopics()
    if out.exists():
        raise InputError(f"'{out}' exists already; choose a new bag path (bags are never overwritten)")
    if version not in (8, 9):
        raise InputError(f"rosbag2 version must be 8 or 9, got {version}")
    storage = "sqlite3" if out.suffix == ".db3" else "mcap"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    folder = tmp / (out.stem if out.suffix in (".mcap", ".db3") else out.name)
    try:
        kinds = {"pose": write_pose, "tf": write_tf}
        counts, n_frames, span = _write_bag(frames, folder, topics, storage, version, progress, total, fps, desc, kinds)
        if out.suffix in (".mcap", ".db3"):
            os.replace(folder / f"{folder.name}{out.suffix}", out)
        else:
            os.replace(folder, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    size = out.stat().st_size if out.is_file() else sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {
        "path": str(out),
        "storage": storage,
        "frames": n_frames,
        "messages": counts,
        "duration_s": span[1] - span[0] if n_frames else 0.0,
        "size_bytes": size,
    }


def _write_bag(
    frames,
    folder: Path,
    topics: BagTopics,
    storage: str,
    version: int,
    progress: bool,
    total: Optional[int],
    fps: float,
    desc: str,
    kinds: Dict[str, bool],
):
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_KILTED)
    plugin = StoragePlugin.SQLITE3 if storage == "sqlite3" else StoragePlugin.MCAP
    counts: Dict[str, int] = Counter()
    n_frames, first, last = 0, None, None
    iterator = frames
    if progress:
        from tqdm import tqdm

        iterator = tqdm(frames, total=total, desc=desc, unit="frame")
    writer = Writer(folder, version=version, storage_plugin=plugin)
    writer.open()
    try:
        conns: Dict[str, object] = {}

        def emit(topic: str, msgtype: str, msg, stamp_ns: int) -> None:
            if topic not in conns:
                conns[topic] = writer.add_connection(topic, msgtype, typestore=ts)
            writer.write(conns[topic], stamp_ns, ts.serialize_cdr(msg, msgtype))
            counts[topic] += 1

        for frame in iterator:
            stamp = _frame_stamp(frame, last, fps)
            for topic, msgtype, msg in _frame_messages(ts, frame, stamp, topics, kinds):
                emit(topic, msgtype, msg, int(round(stamp * 1e9)))
            first = stamp if first is None else first
            last = stamp
            n_frames += 1
    finally:
        writer.close()
    return dict(counts), n_frames, (first or 0.0, last or 0.0)


def _frame_stamp(frame: Frame, last: Optional[float], fps: float) -> float:
    """The frame's stamp; index / fps where it has none; always strictly increasing."""
    stamp = float(frame.stamp)
    if not np.isfinite(stamp) or (stamp <= 0 and frame.index > 0):
        stamp = max(frame.index, 0) / fps
    if last is not None and stamp <= last:
        stamp = last + 1.0 / fps
    return stamp


def _frame_messages(ts, frame: Frame, stamp: float, topics: BagTopics, kinds: Dict[str, bool]):
    """(topic, msgtype, message) for one frame."""
    T = ts.types
    sec = int(np.floor(stamp))
    nanosec = min(int(round((stamp - sec) * 1e9)), 999_999_999)
    time = T["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec)
    camera, world = _frame(topics.camera_frame) or "camera", _frame(topics.world_frame)
    cam_header = T["std_msgs/msg/Header"](stamp=time, frame_id=camera)
    world_header = T["std_msgs/msg/Header"](stamp=time, frame_id=world)

    def image(array, encoding):
        h, w, step, data = enc.numpy_to_image(array, encoding)
        return T[_IMAGE](
            header=cam_header,
            height=h,
            width=w,
            encoding=encoding,
            is_bigendian=0,
            step=step,
            data=np.frombuffer(data, np.uint8),
        )

    h, w = frame.depth.shape[:2]
    info = enc.camera_info_fields(frame.K, h, w)
    roi = T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    camera_info = T[_CAMERA_INFO](
        header=cam_header,
        height=h,
        width=w,
        distortion_model=info["distortion_model"],
        d=info["d"],
        k=info["k"],
        r=info["r"],
        p=info["p"],
        binning_x=0,
        binning_y=0,
        roi=roi,
    )
    t, q = geometry.matrix_to_pose(frame.T_world_cam)
    point = T["geometry_msgs/msg/Point"](x=t[0], y=t[1], z=t[2])
    vector = T["geometry_msgs/msg/Vector3"](x=t[0], y=t[1], z=t[2])
    quat = T["geometry_msgs/msg/Quaternion"](x=q[0], y=q[1], z=q[2], w=q[3])
    pose = T[_POSE_STAMPED](header=world_header, pose=T["geometry_msgs/msg/Pose"](position=point, orientation=quat))
    transform = T["geometry_msgs/msg/TransformStamped"](
        header=world_header,
        child_frame_id=camera,
        transform=T["geometry_msgs/msg/Transform"](translation=vector, rotation=quat),
    )
    yield topics.rgb, _IMAGE, image(frame.rgb, "rgb8")
    yield topics.depth, _IMAGE, image(enc.depth_to_millimetres(frame.depth), "16UC1")
    yield topics.camera_info, _CAMERA_INFO, camera_info
    if kinds["pose"]:
        yield topics.pose, _POSE_STAMPED, pose
    if kinds["tf"]:
        yield topics.tf, _TF, T[_TF](transforms=[transform])
    if frame.masks is not None and topics.masks:
        yield topics.masks, _IMAGE, image(enc.masks_to_label_image(frame.masks, (h, w)), "16UC1")
