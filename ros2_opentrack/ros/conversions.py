"""ROS message <-> numpy / core types. Decoding is numpy (ros2_opentrack.io.encodings): no cv_bridge needed.

Every decoder raises InputError naming the message and what was expected; the node counts and throttles them.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Point, Pose, Quaternion, Transform, Vector3
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2, PointField
from std_msgs.msg import Header

from .. import geometry
from ..errors import InputError
from ..io import encodings
from ..io.writers import instance_color
from ..types import Instance, TrackState

_DEPTH_ENCODINGS = ("16UC1", "mono16", "32FC1")
_LABEL_ENCODINGS = ("16UC1", "mono16", "32SC1", "mono8", "8UC1")
_STATE_CODES = {TrackState.ACTIVE: 0, TrackState.DORMANT: 1, TrackState.TERMINATED: 2}


# ---------------------------------------------------------------------------------------------------------
# time


def stamp_to_sec(stamp) -> float:
    return float(stamp.sec) + float(stamp.nanosec) * 1e-9


def sec_to_stamp(t: float) -> Time:
    t = max(0.0, float(t))
    sec = int(np.floor(t))
    nanosec = int(round((t - sec) * 1e9))
    if nanosec >= 1_000_000_000:
        sec, nanosec = sec + 1, nanosec - 1_000_000_000
    return Time(sec=sec, nanosec=nanosec)


# ---------------------------------------------------------------------------------------------------------
# images


def image_to_array(msg: Image) -> np.ndarray:
    return encodings.image_to_numpy(msg.encoding, msg.height, msg.width, msg.step, msg.data, msg.is_bigendian)


def rgb_from_msg(msg: Image) -> np.ndarray:
    """uint8 HxWx3 RGB from any colour (or mono8) encoding."""
    if not encodings.is_colour_encoding(msg.encoding):
        raise InputError(f"rgb image has encoding '{msg.encoding}'; expected rgb8, bgr8, rgba8, bgra8 or mono8")
    return image_to_array(msg)


def depth_from_msg(msg: Image) -> np.ndarray:
    """float32 HxW metres from 16UC1 / mono16 (mm) or 32FC1 (m); invalid pixels are 0."""
    if encodings.canonical_encoding(msg.encoding) not in _DEPTH_ENCODINGS:
        raise InputError(f"depth image has encoding '{msg.encoding}'; expected 16UC1 (mm) or 32FC1 (m)")
    return encodings.depth_to_metres(image_to_array(msg), msg.encoding)


def masks_from_label_image(msg: Image, max_ids: Optional[int] = encodings.MAX_LABEL_IDS) -> encodings.LabelMasks:
    """A label image (16UC1 / 32SC1 / mono8 / mono16) -> one anonymous Mask2D per positive id, at most the
    ``max_ids`` largest (the rest are counted in ``over_cap``).

    The id is kept as ``source_id`` (used for association only when masks.oracle_ids is set)."""
    if encodings.canonical_encoding(msg.encoding) not in _LABEL_ENCODINGS:
        raise InputError(
            f"mask image has encoding '{msg.encoding}'; expected a label image (16UC1, 32SC1, mono8 or mono16)"
        )
    return encodings.label_image_to_masks(image_to_array(msg), max_ids=max_ids)


# sensor_msgs/CompressedImage (image_transport 'compressed' / 'compressedDepth'), decoded with numpy + OpenCV


def _decode(msg: CompressedImage, what: str) -> np.ndarray:
    try:
        return encodings.decode_compressed(msg.format, msg.data)
    except InputError as exc:
        raise InputError(f"{what}: {exc}") from None


def rgb_from_compressed(msg: CompressedImage) -> np.ndarray:
    image = _decode(msg, "compressed rgb")
    if image.ndim != 3 or image.dtype != np.uint8:
        raise InputError(
            f"compressed rgb ('{msg.format}') decoded to {image.dtype} {image.shape}; expected 8-bit "
            f"colour (jpeg / png)"
        )
    return image


def depth_from_compressed(msg: CompressedImage) -> np.ndarray:
    """float32 metres from compressedDepth (16UC1 mm / 32FC1 m) or a 16-bit png in mm."""
    image = _decode(msg, "compressed depth")
    if image.ndim != 2 or image.dtype not in (np.uint16, np.float32):
        raise InputError(
            f"compressed depth ('{msg.format}') decoded to {image.dtype} {image.shape}; expected "
            f"16-bit millimetres or 32-bit metres (compressedDepth, 16-bit png)"
        )
    return encodings.depth_to_metres(image, "32FC1" if image.dtype == np.float32 else "16UC1")


def masks_from_compressed(msg: CompressedImage, max_ids: Optional[int] = encodings.MAX_LABEL_IDS):
    """A png label image (16-bit, or 8-bit grey) -> masks, as masks_from_label_image."""
    image = _decode(msg, "compressed masks")
    if image.ndim == 3:  # an 8-bit png comes back as grey repeated to RGB
        image = image[..., 0]
    if image.dtype not in (np.uint8, np.uint16):
        raise InputError(f"compressed masks ('{msg.format}') decoded to {image.dtype}; expected a png label image")
    return encodings.label_image_to_masks(image, max_ids=max_ids)


def rgb_from_any(msg) -> np.ndarray:
    return rgb_from_compressed(msg) if isinstance(msg, CompressedImage) else rgb_from_msg(msg)


def depth_from_any(msg) -> np.ndarray:
    return depth_from_compressed(msg) if isinstance(msg, CompressedImage) else depth_from_msg(msg)


def masks_from_any(msg, max_ids: Optional[int] = encodings.MAX_LABEL_IDS):
    decode = masks_from_compressed if isinstance(msg, CompressedImage) else masks_from_label_image
    return decode(msg, max_ids)


def image_msg(array: np.ndarray, encoding: str, header: Header) -> Image:
    h, w, step, data = encodings.numpy_to_image(array, encoding)
    return Image(header=header, height=h, width=w, encoding=encoding, is_bigendian=0, step=step, data=data)


def intrinsics_from_camera_info(msg: CameraInfo, hw: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """3x3 K for an image of size hw; InputError for an uncalibrated (all-zero) camera_info or one of another
    aspect ratio (one of another size with the same aspect is rescaled, as for bags)."""
    if hw is None:
        return encodings.intrinsics_from_k(msg.k)
    return encodings.camera_info_intrinsics(msg.k, (msg.height, msg.width), tuple(hw))


# ---------------------------------------------------------------------------------------------------------
# poses


def pose_to_matrix(pose: Pose) -> np.ndarray:
    p, q = pose.position, pose.orientation
    return geometry.pose_to_matrix((p.x, p.y, p.z), (q.x, q.y, q.z, q.w))


def transform_to_matrix(tf: Transform) -> np.ndarray:
    t, q = tf.translation, tf.rotation
    return geometry.pose_to_matrix((t.x, t.y, t.z), (q.x, q.y, q.z, q.w))


# ---------------------------------------------------------------------------------------------------------
# instances


def instance_to_msg(inst: Instance):
    from ros2_opentrack.msg import Instance3D

    lo, hi = inst.bounds
    centre = (lo + hi) / 2.0
    c = inst.centroid
    return Instance3D(
        id=int(inst.id),
        label=inst.label or "",
        confidence=float(inst.score),
        centroid=Point(x=float(c[0]), y=float(c[1]), z=float(c[2])),
        box_pose=Pose(
            position=Point(x=float(centre[0]), y=float(centre[1]), z=float(centre[2])), orientation=Quaternion(w=1.0)
        ),
        box_size=Vector3(x=float(hi[0] - lo[0]), y=float(hi[1] - lo[1]), z=float(hi[2] - lo[2])),
        point_count=int(len(inst.points)),
        observation_count=int(inst.observations),
        first_seen=sec_to_stamp(inst.first_seen),
        last_seen=sec_to_stamp(inst.last_seen),
        state=_STATE_CODES.get(TrackState(getattr(inst.state, "value", inst.state)), 0),
        presence=str(getattr(inst.presence, "value", inst.presence) or "present"),
        presence_since=sec_to_stamp(inst.presence_since),
        moved_from=-1 if inst.moved_from is None else int(inst.moved_from),
    )


def instances_to_msg(instances: Sequence[Instance], header: Header):
    from ros2_opentrack.msg import Instance3DArray

    return Instance3DArray(header=header, instances=[instance_to_msg(i) for i in instances])


def detections_msg(instances: Sequence[Instance], header: Header):
    """vision_msgs/Detection3DArray: per instance id (as text), one hypothesis (class_id = label, '' while
    unlabelled; score = confidence) with the box centre as its pose, and the axis-aligned box (the same box as
    Instance3D's box_pose / box_size)."""
    from geometry_msgs.msg import PoseWithCovariance
    from vision_msgs.msg import BoundingBox3D, Detection3D, Detection3DArray, ObjectHypothesis, ObjectHypothesisWithPose

    out = []
    for inst in instances:
        m = instance_to_msg(inst)
        hyp = ObjectHypothesisWithPose(
            hypothesis=ObjectHypothesis(class_id=m.label, score=float(m.confidence)),
            pose=PoseWithCovariance(pose=m.box_pose),
        )
        out.append(
            Detection3D(
                header=header, results=[hyp], bbox=BoundingBox3D(center=m.box_pose, size=m.box_size), id=str(m.id)
            )
        )
    return Detection3DArray(header=header, detections=out)


# ---------------------------------------------------------------------------------------------------------
# PointCloud2: x, y, z float32, rgb packed as float32 (the PCL / RViz convention), instance uint32

CLOUD_DTYPE = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("rgb", "<u4"), ("instance", "<u4")])
_FIELDS = [
    PointField(name="x", offset=0, datatype=PointField.FLOAT32, count=1),
    PointField(name="y", offset=4, datatype=PointField.FLOAT32, count=1),
    PointField(name="z", offset=8, datatype=PointField.FLOAT32, count=1),
    PointField(name="rgb", offset=12, datatype=PointField.FLOAT32, count=1),
    PointField(name="instance", offset=16, datatype=PointField.UINT32, count=1),
]


def cloud_msg(points: np.ndarray, colors: np.ndarray, instance: np.ndarray, header: Header) -> PointCloud2:
    """An unorganised little-endian PointCloud2 from (N,3) points, (N,3) uint8 colours and (N,) ids."""
    points = np.asarray(points, np.float32).reshape(-1, 3)
    colors = np.asarray(colors, np.uint8).reshape(-1, 3)
    instance = np.asarray(instance).reshape(-1)
    if not (len(points) == len(colors) == len(instance)):
        raise InputError(
            f"cloud arrays differ in length: {len(points)} points, {len(colors)} colours, {len(instance)} ids"
        )
    rec = np.empty(len(points), CLOUD_DTYPE)
    rec["x"], rec["y"], rec["z"] = points[:, 0], points[:, 1], points[:, 2]
    c = colors.astype(np.uint32)
    rec["rgb"] = (c[:, 0] << 16) | (c[:, 1] << 8) | c[:, 2]
    rec["instance"] = instance.astype(np.uint32)
    return PointCloud2(
        header=header,
        height=1,
        width=len(rec),
        fields=list(_FIELDS),
        is_bigendian=False,
        point_step=CLOUD_DTYPE.itemsize,
        row_step=CLOUD_DTYPE.itemsize * len(rec),
        data=rec.tobytes(),
        is_dense=True,
    )


def instance_cloud(
    instances: Sequence[Instance], header: Header, max_points: int = 200000, seed: int = 0
) -> PointCloud2:
    """All instances' points, each coloured by its stable instance colour; subsampled to ``max_points``."""
    if not instances:
        return cloud_msg(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0), header)
    points = np.concatenate([np.asarray(i.points, np.float32).reshape(-1, 3) for i in instances])
    ids = np.concatenate([np.full(len(i.points), i.id, np.int64) for i in instances])
    if len(points) > max_points > 0:
        keep = np.sort(np.random.default_rng(seed).choice(len(points), max_points, replace=False))
        points, ids = points[keep], ids[keep]
    uniq, inverse = np.unique(ids, return_inverse=True)
    colors = instance_color(uniq).reshape(-1, 3)[inverse]
    return cloud_msg(points, colors, ids, header)
