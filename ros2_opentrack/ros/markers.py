"""RViz markers of the instances: a translucent box, a text label and (subsampled) points per instance, in a
stable colour per id; DELETE markers for instances that disappeared (merged / terminated / not reported)."""

from __future__ import annotations

from typing import Iterable, List, Sequence, Set

import numpy as np
from builtin_interfaces.msg import Duration
from geometry_msgs.msg import Point, Pose, Quaternion, Vector3
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

from ..io.writers import instance_color
from ..types import Instance

NS_BOX, NS_TEXT, NS_POINTS, NS_QUERY = "instance_boxes", "instance_labels", "instance_points", "query_highlight"
INSTANCE_NAMESPACES = (NS_BOX, NS_TEXT, NS_POINTS)


def colour_of(instance_id: int, alpha: float = 1.0) -> ColorRGBA:
    r, g, b = (float(v) / 255.0 for v in instance_color(int(instance_id)))
    return ColorRGBA(r=r, g=g, b=b, a=float(alpha))


def _box(inst: Instance):
    lo, hi = inst.bounds
    return (lo + hi) / 2.0, np.maximum(hi - lo, 0.01)


def _point(xyz) -> Point:
    return Point(x=float(xyz[0]), y=float(xyz[1]), z=float(xyz[2]))


def _add_marker(header: Header, ns: str, inst: Instance, kind: int, scale: Vector3, color: ColorRGBA, **fields):
    """An ADD marker of one instance (id = the instance id) in namespace ns; pose defaults to the identity."""
    fields.setdefault("pose", Pose(orientation=Quaternion(w=1.0)))
    return Marker(
        header=header, ns=ns, id=int(inst.id), type=kind, action=Marker.ADD, scale=scale, color=color, **fields
    )


def instance_markers(inst: Instance, header: Header, max_points: int = 400) -> List[Marker]:
    centre, size = _box(inst)
    box = _add_marker(
        header,
        NS_BOX,
        inst,
        Marker.CUBE,
        Vector3(x=float(size[0]), y=float(size[1]), z=float(size[2])),
        colour_of(inst.id, 0.35),
        pose=Pose(position=_point(centre), orientation=Quaternion(w=1.0)),
    )
    text_pose = Pose(
        position=_point((centre[0], centre[1], centre[2] + size[2] / 2 + 0.08)), orientation=Quaternion(w=1.0)
    )
    label = f"{inst.id}: {inst.label}" if inst.label else f"{inst.id}"
    text = _add_marker(
        header,
        NS_TEXT,
        inst,
        Marker.TEXT_VIEW_FACING,
        Vector3(z=0.1),
        colour_of(inst.id, 1.0),
        pose=text_pose,
        text=label,
    )
    pts = np.asarray(inst.points, np.float32).reshape(-1, 3)
    if len(pts) > max_points:
        pts = pts[np.linspace(0, len(pts) - 1, max_points).astype(int)]
    points = _add_marker(
        header,
        NS_POINTS,
        inst,
        Marker.POINTS,
        Vector3(x=0.015, y=0.015),
        colour_of(inst.id, 1.0),
        points=[_point(p) for p in pts],
    )
    return [box, text, points]


def delete_markers(ids: Iterable[int], header: Header, namespaces: Sequence[str] = INSTANCE_NAMESPACES) -> List[Marker]:
    return [Marker(header=header, ns=ns, id=int(i), action=Marker.DELETE) for i in sorted(ids) for ns in namespaces]


class MarkerBook:
    """Remembers which instance ids have markers, so ids that vanish get a DELETE in the next array."""

    def __init__(self, max_points: int = 400):
        self.shown: Set[int] = set()
        self.highlighted: Set[int] = set()
        self.max_points = max_points

    def update(self, instances: Sequence[Instance], header: Header) -> MarkerArray:
        current = {int(i.id) for i in instances}
        markers = delete_markers(self.shown - current, header)
        for inst in instances:
            markers.extend(instance_markers(inst, header, self.max_points))
        self.shown = current
        return MarkerArray(markers=markers)

    def highlight(self, instances: Sequence[Instance], header: Header, lifetime_s: float = 30.0) -> MarkerArray:
        """Yellow wire boxes around query matches (previous highlights are deleted)."""
        markers = delete_markers(self.highlighted, header, (NS_QUERY,))
        for rank, inst in enumerate(instances):
            markers.append(_wire_box(inst, header, rank, lifetime_s))
        self.highlighted = {int(i.id) for i in instances}
        return MarkerArray(markers=markers)

    def clear(self, header: Header) -> MarkerArray:
        markers = delete_markers(self.shown, header) + delete_markers(self.highlighted, header, (NS_QUERY,))
        self.shown, self.highlighted = set(), set()
        return MarkerArray(markers=markers)


_EDGES = [(0, 1), (1, 3), (3, 2), (2, 0), (4, 5), (5, 7), (7, 6), (6, 4), (0, 4), (1, 5), (2, 6), (3, 7)]


def _wire_box(inst: Instance, header: Header, rank: int, lifetime_s: float) -> Marker:
    centre, size = _box(inst)
    half = size / 2 + 0.02
    corners = [centre + half * np.array([sx, sy, sz]) for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)]
    points = [_point(c) for a, b in _EDGES for c in (corners[a], corners[b])]
    alpha = 1.0 if rank == 0 else 0.5  # the best match stands out
    secs = int(lifetime_s)
    return _add_marker(
        header,
        NS_QUERY,
        inst,
        Marker.LINE_LIST,
        Vector3(x=0.02 if rank == 0 else 0.01),
        ColorRGBA(r=1.0, g=0.9, b=0.0, a=alpha),
        points=points,
        lifetime=Duration(sec=secs, nanosec=int((lifetime_s - secs) * 1e9)),
    )
