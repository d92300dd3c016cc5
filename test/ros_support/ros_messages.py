"""ROS message builders and readers that only the tests and benchmarks need (the node never publishes these):
a core Frame as the messages a camera driver + localisation would publish, images, poses, clouds, boxes."""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
from geometry_msgs.msg import Point, Pose, PoseStamped, Quaternion, Transform, TransformStamped, Vector3
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField
from std_msgs.msg import Header

from ros2_opentrack import geometry
from ros2_opentrack.errors import InputError
from ros2_opentrack.io import encodings
from ros2_opentrack.ros.conversions import sec_to_stamp


def image_msg(array: np.ndarray, encoding: str, header: Header) -> Image:
    h, w, step, data = encodings.numpy_to_image(array, encoding)
    return Image(header=header, height=h, width=w, encoding=encoding, is_bigendian=0, step=step, data=data)


def matrix_to_pose(T) -> Pose:
    t, q = geometry.matrix_to_pose(T)
    return Pose(
        position=Point(x=float(t[0]), y=float(t[1]), z=float(t[2])),
        orientation=Quaternion(x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3])),
    )


def matrix_to_transform(T) -> Transform:
    t, q = geometry.matrix_to_pose(T)
    return Transform(
        translation=Vector3(x=float(t[0]), y=float(t[1]), z=float(t[2])),
        rotation=Quaternion(x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3])),
    )


def box_of_msg(msg) -> Tuple[np.ndarray, np.ndarray]:
    """(min corner, max corner) of an Instance3D's axis-aligned box."""
    c = np.array([msg.box_pose.position.x, msg.box_pose.position.y, msg.box_pose.position.z])
    s = np.array([msg.box_size.x, msg.box_size.y, msg.box_size.z])
    return c - s / 2, c + s / 2


def cloud_from_msg(msg: PointCloud2) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """(points (N,3) f32, colours (N,3) u8 or zeros, instance ids (N,) or None) of any little-endian cloud with
    float32 x, y, z fields (rgb / instance optional)."""
    types = {
        PointField.FLOAT32: "<f4",
        PointField.UINT32: "<u4",
        PointField.INT32: "<i4",
        PointField.FLOAT64: "<f8",
        PointField.UINT16: "<u2",
        PointField.UINT8: "u1",
    }
    if msg.is_bigendian:
        raise InputError("PointCloud2 is big-endian; expected little-endian")
    fields = {f.name: f for f in msg.fields}
    if not {"x", "y", "z"} <= set(fields):
        raise InputError(f"PointCloud2 has fields {sorted(fields)}; expected at least x, y, z")
    dtype = np.dtype(
        {
            "names": [f.name for f in msg.fields],
            "formats": [types[f.datatype] if f.name != "rgb" else "<u4" for f in msg.fields],
            "offsets": [f.offset for f in msg.fields],
            "itemsize": msg.point_step,
        }
    )
    n = msg.width * msg.height
    rec = np.frombuffer(bytes(msg.data), dtype=dtype, count=n)
    points = np.stack([rec["x"], rec["y"], rec["z"]], axis=1).astype(np.float32)
    colors = np.zeros((n, 3), np.uint8)
    if "rgb" in fields:
        packed = rec["rgb"].astype(np.uint32)
        colors = np.stack([(packed >> 16) & 255, (packed >> 8) & 255, packed & 255], axis=1).astype(np.uint8)
    ids = rec["instance"].astype(np.int64) if "instance" in fields else None
    return points, colors, ids


def frame_messages(
    frame, stamp: float, camera_frame: str = "camera_optical", world_frame: str = "map", depth_encoding: str = "16UC1"
) -> dict:
    """rgb (rgb8), depth (16UC1 mm or 32FC1 m), camera_info, masks (16UC1 label image, when the frame has masks),
    tf (TransformStamped world -> camera) and pose (PoseStamped) messages of one Frame, all at ``stamp``."""
    header = Header(stamp=sec_to_stamp(stamp), frame_id=camera_frame)
    depth = np.asarray(frame.depth, np.float32)
    h, w = depth.shape
    depth_arr = encodings.depth_to_millimetres(depth) if depth_encoding == "16UC1" else depth
    info = CameraInfo(header=header, **encodings.camera_info_fields(frame.K, h, w))
    out = {
        "rgb": image_msg(np.asarray(frame.rgb, np.uint8), "rgb8", header),
        "depth": image_msg(depth_arr, depth_encoding, header),
        "camera_info": info,
        "tf": TransformStamped(
            header=Header(stamp=header.stamp, frame_id=world_frame),
            child_frame_id=camera_frame,
            transform=matrix_to_transform(frame.T_world_cam),
        ),
        "pose": PoseStamped(
            header=Header(stamp=header.stamp, frame_id=world_frame), pose=matrix_to_pose(frame.T_world_cam)
        ),
    }
    if frame.masks is not None:
        out["masks"] = image_msg(encodings.masks_to_label_image(frame.masks, (h, w)), "16UC1", header)
    return out


def depth_band_labels(depth_m: np.ndarray, min_px: int = 1500) -> np.ndarray:
    """A stand-in 2D instance source for real frames (no model weights here): connected regions of 0.4 m depth
    bands, as a label image."""
    import cv2

    labels = np.zeros(depth_m.shape, np.uint16)
    band = np.where(depth_m > 0, np.floor(depth_m / 0.4).astype(int) + 1, 0)
    next_id = 1
    for b in np.unique(band[band > 0]):
        n, comp, stats, _ = cv2.connectedComponentsWithStats((band == b).astype(np.uint8), connectivity=4)
        for c in range(1, n):
            if stats[c, cv2.CC_STAT_AREA] >= min_px:
                labels[comp == c] = next_id
                next_id += 1
    return labels
