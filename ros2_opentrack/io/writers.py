"""Output writers of a run: instances.json, instances.npz, instances.ply (coloured by instance) and map.ply.

instances.json  {"instances": [{id, label, score, observations, state, centroid, extent, n_points,
                 first_seen, last_seen, presence (present | moved | removed), presence_since, moved_from,
                 best_views: [{frame_index, stamp, box, visible_fraction}]}], ...}
instances.npz   points (M,3) f32, colors (M,3) u8, instance (M,) i32, ids (K,) i32, scores (K,) f32,
                 labels (K,) str ('' = unlabelled), observations (K,) i32
instances.ply   the instance points, each instance in its own stable colour, plus an 'instance' column
map.ply         the scene map (or the union of instance points in their own colours)
preview.png     top-down picture of the map and instances + each instance's best view (io/preview.py)
"""

from __future__ import annotations

import json
import os
import uuid
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError
from ..types import Instance
from .ply import read_ply, write_ply


def instance_color(instance_id) -> np.ndarray:
    """A stable, saturated RGB colour per id (the same id gets the same colour in every run and tool)."""
    ids = np.atleast_1d(np.asarray(instance_id, dtype=np.uint64))
    h = (ids * np.uint64(2654435761)) % np.uint64(2**32)  # Knuth multiplicative hash
    hue = (h % np.uint64(360)).astype(np.float64) / 60.0
    sat = 0.65 + 0.35 * ((h >> np.uint64(9)) % np.uint64(100)).astype(np.float64) / 100.0
    val = 0.75 + 0.25 * ((h >> np.uint64(17)) % np.uint64(100)).astype(np.float64) / 100.0
    c = val * sat
    x = c * (1 - np.abs(hue % 2 - 1))
    zeros = np.zeros_like(c)
    sector = np.floor(hue).astype(int) % 6
    table = np.stack(
        [
            np.stack([c, x, zeros], 1),
            np.stack([x, c, zeros], 1),
            np.stack([zeros, c, x], 1),
            np.stack([zeros, x, c], 1),
            np.stack([x, zeros, c], 1),
            np.stack([c, zeros, x], 1),
        ],
        0,
    )
    rgb = table[sector, np.arange(len(ids))] + (val - c)[:, None]
    out = np.clip(np.round(rgb * 255), 0, 255).astype(np.uint8)
    return out[0] if np.ndim(instance_id) == 0 else out


def instance_record(inst: Instance) -> dict:
    return {
        "id": int(inst.id),
        "label": inst.label,
        "score": round(float(inst.score), 6),
        "observations": int(inst.observations),
        "state": getattr(inst.state, "value", str(inst.state)),
        "n_points": int(len(inst.points)),
        "centroid": [round(float(v), 5) for v in inst.centroid],
        "extent": [round(float(v), 5) for v in inst.extent],
        "first_seen": float(inst.first_seen),
        "last_seen": float(inst.last_seen),
        "presence": getattr(inst.presence, "value", str(inst.presence)),
        "presence_since": float(inst.presence_since),
        "moved_from": None if inst.moved_from is None else int(inst.moved_from),
        "best_views": [
            {
                "frame_index": int(v.frame_index),
                "stamp": float(v.stamp),
                "box": [round(float(b), 2) for b in np.asarray(v.box).reshape(-1)],
                "visible_fraction": round(float(v.visible_fraction), 5),
            }
            for v in inst.views
        ],
    }


OUTPUT_FILES = ("instances.json", "instances.npz", "instances.ply", "map.ply")


def check_output_dir(out_dir) -> Path:
    """Raise InputError (one line naming the path) when the outputs cannot be written into ``out_dir``: a file
    where the folder or one of its parents should be, a folder where an output file should go, no write
    permission. Creates nothing; run it before the first frame so a run is not lost at its end."""
    out = Path(out_dir)
    for p in (out, *out.parents):
        if p.exists():
            if not p.is_dir():
                what = "is a file" if p == out else f"cannot be created: '{p}' is a file"
                raise InputError(f"output folder '{out}' {what}")
            if not os.access(p, os.W_OK | os.X_OK):
                raise InputError(f"output folder '{out}' is not writable ('{p}' denies writing)")
            break
    for name in OUTPUT_FILES:
        if (out / name).is_dir():
            raise InputError(f"output '{out / name}' is a directory: remove it or choose another output folder")
    return out


@contextmanager
def atomic_path(path) -> Iterator[Path]:
    """A temporary path beside ``path``; when the block succeeds it replaces ``path`` in one step (os.replace),
    else it is removed. An interrupted write never leaves a half-written output behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise


def write_outputs(
    instances: Sequence[Instance],
    out_dir,
    scene_map: Optional[Tuple[np.ndarray, np.ndarray]] = None,
    meta: Optional[dict] = None,
    view_image=None,
) -> Dict[str, Path]:
    """Write all four outputs and preview.png (io/preview.py; ``view_image``, e.g. Pipeline.view_image, adds
    the strip of best views) into out_dir, each atomically; returns {kind: path}."""
    out = check_output_dir(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": write_instances_json(instances, out / "instances.json", meta),
        "npz": write_instances_npz(instances, out / "instances.npz"),
        "ply": write_instances_ply(instances, out / "instances.ply"),
    }
    if scene_map is None:
        pts, cols, _ = _stack(instances)
        scene_map = (pts, cols)
    with atomic_path(out / "map.ply") as tmp:
        write_ply(tmp, scene_map[0], scene_map[1])
    paths["map"] = out / "map.ply"
    from .preview import write_preview

    paths["preview"] = write_preview(out / "preview.png", instances, scene_map, view_image)
    return paths


def write_instances_json(instances: Sequence[Instance], path, meta: Optional[dict] = None) -> Path:
    path = Path(path)
    doc = {
        "format": "ros2_opentrack.instances/1",
        "meta": meta or {},
        "instances": [instance_record(i) for i in instances],
    }
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(doc, indent=1))
    return path


def write_instances_npz(instances: Sequence[Instance], path) -> Path:
    path = Path(path)
    points, colors, inst = _stack(instances)
    labels = np.array([i.label or "" for i in instances], dtype=str) if instances else np.zeros(0, dtype="<U1")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: numpy adds no '.npz' to the name
        np.savez_compressed(
            f,
            points=points,
            colors=colors,
            instance=inst,
            ids=np.array([i.id for i in instances], dtype=np.int32),
            scores=np.array([i.score for i in instances], dtype=np.float32),
            labels=labels,
            observations=np.array([i.observations for i in instances], dtype=np.int32),
        )
    return path


def write_instances_ply(instances: Sequence[Instance], path) -> Path:
    points, _, inst = _stack(instances)
    with atomic_path(path) as tmp:
        write_ply(
            tmp, points, instance_color(inst) if len(inst) else np.zeros((0, 3), np.uint8), extra={"instance": inst}
        )
    return Path(path)


def _stack(instances: Sequence[Instance]):
    if not instances:
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8), np.zeros(0, np.int32)
    points = np.concatenate([np.asarray(i.points, np.float32).reshape(-1, 3) for i in instances])
    colors = np.concatenate(
        [
            np.asarray(i.colors, np.uint8).reshape(-1, 3)
            if i.colors is not None and len(i.colors) == len(i.points)
            else np.tile(instance_color(i.id), (len(i.points), 1))
            for i in instances
        ]
    )
    inst = np.concatenate([np.full(len(i.points), i.id, np.int32) for i in instances])
    return points, colors, inst


@dataclass
class SavedInstances:
    """What ``read_outputs`` gives back: per-point arrays and per-instance arrays, plus the JSON records."""

    points: np.ndarray
    colors: np.ndarray
    instance: np.ndarray
    ids: np.ndarray
    scores: np.ndarray
    labels: List[Optional[str]]
    observations: np.ndarray
    records: List[dict]

    def to_instances(self) -> List[Instance]:
        """Rebuild Instance objects (points, colours, label, score, observations) for query / eval tools."""
        out = []
        by_id = {r["id"]: r for r in self.records}
        order = np.argsort(self.instance, kind="stable")
        sorted_inst = self.instance[order]
        for k, iid in enumerate(self.ids):
            lo, hi = np.searchsorted(sorted_inst, [iid, iid + 1])
            sel = order[lo:hi]
            rec = by_id.get(int(iid), {})
            out.append(
                Instance(
                    id=int(iid),
                    points=self.points[sel],
                    colors=self.colors[sel],
                    label=self.labels[k],
                    score=float(self.scores[k]),
                    observations=int(self.observations[k]),
                    first_seen=float(rec.get("first_seen", 0.0)),
                    last_seen=float(rec.get("last_seen", 0.0)),
                    presence=str(rec.get("presence", "present")),
                    presence_since=float(rec.get("presence_since", 0.0)),
                    moved_from=rec.get("moved_from"),
                    extra={"best_views": rec.get("best_views", [])},
                )
            )
        return out


def read_outputs(out_dir) -> SavedInstances:
    """Load a run's instances.npz (+ instances.json when present). Raises InputError when it is not a run."""
    out = Path(out_dir)
    npz_path = out / "instances.npz" if out.is_dir() else out
    if not npz_path.is_file():
        raise InputError(f"'{out}' holds no instances.npz: expected the output folder of `opentrack run`")
    try:
        with np.load(npz_path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:  # truncated, not a zip
        raise InputError(
            f"'{npz_path}' is not a readable instances.npz (truncated or corrupt?): {str(exc) or type(exc).__name__}"
        ) from None
    for key in ("points", "instance", "ids", "scores"):
        if key not in data:
            raise InputError(f"'{npz_path}' lacks the '{key}' array")
    n = len(data["ids"])
    records = []
    json_path = npz_path.with_suffix(".json")
    if json_path.is_file():
        try:
            records = json.loads(json_path.read_text()).get("instances", [])
        except ValueError:
            records = []
    labels = [str(s) or None for s in data.get("labels", np.array([""] * n))]
    colors = data.get("colors", np.zeros((len(data["points"]), 3), np.uint8))
    return SavedInstances(
        points=data["points"].astype(np.float32),
        colors=colors.astype(np.uint8),
        instance=data["instance"].astype(np.int64),
        ids=data["ids"].astype(np.int64),
        scores=data["scores"].astype(np.float32),
        labels=labels,
        observations=data.get("observations", np.zeros(n, np.int32)),
        records=records,
    )


def read_instances_ply(path):
    """(points, colors, instance ids) of an instances.ply."""
    cols = read_ply(path)
    pts = np.stack([cols["x"], cols["y"], cols["z"]], 1)
    rgb = np.stack([cols["red"], cols["green"], cols["blue"]], 1)
    return pts, rgb, cols.get("instance")
