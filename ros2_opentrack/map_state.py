"""The resumable map state: everything tracking needs to continue after a restart, as plain arrays.

A state folder holds two files, written into a temporary folder and renamed into place (an interrupted save
never leaves a half-written state):

    state.json   {"format": "ros2_opentrack.map_state", "version": 1, "config": {...the whole config tree...},
                  "counters": {next_id, terminated_total, frames, keyframes, merged, last_frame_index (highest
                               frame index stepped), tracker_keyframes (Tracker.keyframes); the last two
                               absent in older states}, "vocabulary": [...],
                  "tracks": [{id, first_seen, last_seen, first_frame, last_frame, first_keyframe, last_keyframe
                              (absent in older states: -1, unknown), born_near, born_beside (absent: 0, none),
                              observations, state, misses,
                              source_id, det_label, det_score_sum, label, label_score, labelled_size,
                              presence, presence_since, moved_from, moved_to, empty_count, there_count
                              (changes.py; absent in older states: present),
                              views: [{image_key, frame_index, stamp, box, visible_fraction, mask_area}]}],
                  "images": {"next_key": k, "keys": [...], "refs": [...]},
                  "rng": the random generator's state (numpy bit_generator.state; optional)}
    arrays.npz   per track, concatenated in track order with "<name>_len" giving each track's share:
                 voxels (int64 coarse keys), feature (float32, dim per track in feature_dim), store_keys
                 (int64 fine keys), store_colors (uint8 Nx3), store_visible / store_in_mask (uint16 counters);
                 the scene map: map_block_ids, map_block_len, map_keys, map_colors (blocks oldest first);
                 the kept keyframe images: image_bytes (uint8, JPEG streams concatenated), image_len;
                 the view consensus of touching tracks: consensus_pairs (int64 Kx2 track ids),
                 consensus_counts (int64 Kx4 joint / apart / born-apart views / keyframes
                 both took a mask of their own; Kx3 and Kx2 from earlier states; both optional).

No pickle: np.load(allow_pickle=False) reads it. Its size grows with the explored volume (tracks are capped in
voxels, views are top-K, the scene map is capped), not with the length of the run. Loading checks the format,
the version and the parameters the arrays depend on (voxel sizes, descriptor dimension) and builds new state
objects, which the caller swaps in only when everything loaded.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from .config import to_dict
from .errors import InputError
from .labeling import LabelState
from .tracker import Track, Tracker
from .types import Presence, TrackState, View
from .voxel_store import PointStore

FORMAT = "ros2_opentrack.map_state"
VERSION = 1
# Parameters the stored arrays are expressed in: a state made with other values cannot continue.
_MUST_MATCH = ("tracking.voxel_size_m", "refine.map_voxel_m")
_TRACK_ARRAYS = ("voxels", "feature", "store_keys", "store_colors", "store_visible", "store_in_mask")


class MapStateError(InputError):
    """A map state that cannot be loaded: missing, corrupt, another version, or made with other parameters."""


@dataclass
class LoadedState:
    """Fully built state objects, ready to be swapped into a pipeline."""

    tracker: Tracker
    views: Dict[int, List[View]]
    images: List[tuple]  # (key, jpeg bytes, refs)
    next_image_key: int
    labels: Dict[int, LabelState]
    counters: Dict[str, int]
    vocabulary: List[str]
    rng: Optional[dict] = None  # the pipeline's random generator state (absent in older states)


# ------------------------------------------------------------------------------------------------------------
def save(pipeline, folder) -> Path:
    """Write the pipeline's map state to ``folder`` (created; replaced atomically when it exists)."""
    folder = Path(folder)
    tracks = list(pipeline.tracker.tracks.values())
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "config": to_dict(pipeline.cfg),
        "counters": _counters(pipeline),
        "vocabulary": list(pipeline.vocabulary),
        "tracks": [_track_meta(t, pipeline) for t in tracks],
        "images": _images_meta(pipeline.views.images),
    }
    if getattr(pipeline, "rng", None) is not None:
        meta["rng"] = pipeline.rng.bit_generator.state  # a resumed run draws the numbers the whole run would
    arrays = _track_arrays(tracks)
    arrays.update(_scene_arrays(pipeline.tracker.scene))
    arrays.update(_image_arrays(pipeline.views.images))
    arrays["consensus_pairs"], arrays["consensus_counts"] = pipeline.tracker.consensus.to_arrays()
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        np.savez(tmp / "arrays.npz", **arrays)
        (tmp / "state.json").write_text(json.dumps(meta, indent=1))
        _replace_folder(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _replace_folder(new: Path, target: Path) -> None:
    """Swap ``new`` into ``target``: an existing state is moved aside first and removed after the rename."""
    old = None
    if target.exists():
        if not target.is_dir():
            raise MapStateError(f"map state path '{target}' exists and is not a folder")
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _counters(pipeline) -> Dict[str, int]:
    return {
        "next_id": pipeline.tracker.next_id,
        "terminated_total": pipeline.tracker.terminated_total,
        "frames": pipeline._frames,
        "keyframes": pipeline._keyframes,
        "merged": pipeline._merged,
        "last_frame_index": getattr(pipeline, "_last_index", -1),
        "tracker_keyframes": pipeline.tracker.keyframes,
    }


def _track_meta(t: Track, pipeline) -> dict:
    named = pipeline.labels.get(t.id)
    return {
        "id": t.id,
        "first_seen": t.first_seen,
        "last_seen": t.last_seen,
        "first_frame": t.first_frame,
        "last_frame": t.last_frame,
        "first_keyframe": t.first_keyframe,
        "last_keyframe": t.last_keyframe,
        "born_near": t.born_near,
        "born_beside": t.born_beside,
        "observations": t.observations,
        "state": t.state.value,
        "misses": t.misses,
        "source_id": t.source_id,
        "det_label": t.det_label,
        "det_score_sum": t.det_score_sum,
        "label": named.label,
        "label_score": named.score,
        "labelled_size": named.labelled_size,
        "store_cap": t.store.cap,
        "presence": t.presence.value,
        "presence_since": t.presence_since,
        "moved_from": t.moved_from,
        "moved_to": t.moved_to,
        "empty_count": t.empty_count,
        "there_count": t.there_count,
        "views": [
            {
                "image_key": v.image_key,
                "frame_index": v.frame_index,
                "stamp": v.stamp,
                "box": [float(x) for x in v.box],
                "visible_fraction": v.visible_fraction,
                "mask_area": int(v.mask_area),
            }
            for v in pipeline.views.of(t.id)
        ],
    }


def _track_arrays(tracks: List[Track]) -> Dict[str, np.ndarray]:
    parts = {name: [] for name in _TRACK_ARRAYS}
    for t in tracks:
        parts["voxels"].append(t.voxels.astype(np.int64))
        parts["feature"].append(np.asarray(t.feature, np.float32))
        parts["store_keys"].append(t.store.keys)
        parts["store_colors"].append(t.store.colors)
        parts["store_visible"].append(t.store.visible)
        parts["store_in_mask"].append(t.store.in_mask)
    empty = {
        "voxels": np.zeros(0, np.int64),
        "feature": np.zeros(0, np.float32),
        "store_keys": np.zeros(0, np.int64),
        "store_colors": np.zeros((0, 3), np.uint8),
        "store_visible": np.zeros(0, np.uint16),
        "store_in_mask": np.zeros(0, np.uint16),
    }
    out = {}
    for name, arrays in parts.items():
        out[name] = np.concatenate(arrays) if arrays else empty[name]
        out[name + "_len"] = np.array([len(a) for a in arrays], np.int64)
    return out


def _scene_arrays(scene) -> Dict[str, np.ndarray]:
    blocks = list(scene.blocks.items())
    return {
        "map_block_ids": np.array([b for b, _ in blocks], np.int64),
        "map_block_len": np.array([len(k) for _, (k, _) in blocks], np.int64),
        "map_keys": np.concatenate([k for _, (k, _) in blocks]) if blocks else np.zeros(0, np.int64),
        "map_colors": np.concatenate([c for _, (_, c) in blocks]) if blocks else np.zeros((0, 3), np.uint8),
    }


def _images_meta(images) -> dict:
    entries = images.entries()
    return {"next_key": images.next_key, "keys": [k for k, _, _ in entries], "refs": [r for _, _, r in entries]}


def _image_arrays(images) -> Dict[str, np.ndarray]:
    streams = [np.frombuffer(data, np.uint8) for _, data, _ in images.entries()]
    return {
        "image_bytes": np.concatenate(streams) if streams else np.zeros(0, np.uint8),
        "image_len": np.array([len(s) for s in streams], np.int64),
    }


# ------------------------------------------------------------------------------------------------------------
def load(folder, cfg) -> LoadedState:
    """Read a state folder written by ``save`` for a pipeline configured with ``cfg``. Raises MapStateError
    naming the folder and what is wrong; never returns a partly built state."""
    folder = Path(folder)
    meta = _read_meta(folder)
    _check_compatible(meta, cfg, folder)
    try:
        with np.load(folder / "arrays.npz", allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        return _build(meta, arrays, cfg)
    except MapStateError as exc:  # a check inside the arrays: name the folder too
        if str(folder) in str(exc):
            raise
        raise MapStateError(f"map state '{folder}': {exc}") from None
    except (OSError, ValueError, KeyError, TypeError, IndexError, EOFError, zipfile.BadZipFile) as exc:
        raise MapStateError(f"map state '{folder}' is corrupt or truncated: {type(exc).__name__}: {exc}") from None


def peek(folder) -> dict:
    """state.json of a state folder, checked (format, version) without reading the arrays: a caller can reject
    a bad state before it builds a pipeline (models). Raises MapStateError."""
    return _read_meta(Path(folder))


def _read_meta(folder: Path) -> dict:
    path = folder / "state.json"
    if not path.is_file():
        raise MapStateError(
            f"map state '{folder}': no state.json (expected a folder written by a save, e.g. <out>/map)"
        )
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MapStateError(f"map state '{path}' is corrupt: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise MapStateError(f"map state '{path}' is not a ros2_opentrack map state")
    if meta.get("version") != VERSION:
        raise MapStateError(
            f"map state '{path}' has version {meta.get('version')!r}; this build reads version {VERSION}"
        )
    return meta


def _check_compatible(meta: dict, cfg, folder: Path) -> None:
    from .config import flatten, from_dict

    try:
        saved = flatten(from_dict(meta["config"]))
    except Exception as exc:  # a config this build no longer knows: say which key
        raise MapStateError(f"map state '{folder}': its config cannot be read ({exc})") from None
    now = flatten(cfg)
    for name in _MUST_MATCH:
        if saved[name] != now[name]:
            raise MapStateError(
                f"map state '{folder}' was built with {name}={saved[name]}, this run has "
                f"{now[name]}: the stored voxels cannot be reused (set it to {saved[name]})"
            )


def _split(arrays: Dict[str, np.ndarray], name: str) -> List[np.ndarray]:
    lengths = arrays[name + "_len"]
    data = arrays[name]
    if int(lengths.sum()) != len(data):
        raise MapStateError(f"array '{name}' holds {len(data)} rows, its lengths say {int(lengths.sum())}")
    return np.split(data, np.cumsum(lengths)[:-1]) if len(lengths) else []


def _build(meta: dict, arrays: Dict[str, np.ndarray], cfg) -> LoadedState:
    tracker = Tracker(cfg.tracking, cfg.refine, cfg.lift, oracle_ids=cfg.masks.oracle_ids)
    per_track = {name: _split(arrays, name) for name in _TRACK_ARRAYS}
    if any(len(v) != len(meta["tracks"]) for v in per_track.values()):
        raise MapStateError("the arrays and state.json disagree on the number of tracks")
    views: Dict[int, List[View]] = {}
    labels: Dict[int, LabelState] = {}
    dims = {len(f) for f in per_track["feature"]}
    if len(dims) > 1:
        raise MapStateError(f"tracks hold descriptors of different sizes {sorted(dims)}")
    for k, tm in enumerate(meta["tracks"]):
        t = _track(tm, {name: per_track[name][k] for name in _TRACK_ARRAYS}, cfg)
        tracker.tracks[t.id] = t
        tracker.index.insert(t.id, t.box_min, t.box_max)
        views[t.id] = [
            View(
                image_key=int(v["image_key"]),
                frame_index=int(v["frame_index"]),
                stamp=float(v["stamp"]),
                box=np.asarray(v["box"], np.float32),
                visible_fraction=float(v["visible_fraction"]),
                mask_area=int(v["mask_area"]),
            )
            for v in tm["views"]
        ]
        labels[t.id] = LabelState(
            label=tm["label"], score=float(tm["label_score"]), labelled_size=int(tm["labelled_size"])
        )
    _fill_scene(tracker.scene, arrays)
    if "consensus_pairs" in arrays:  # view consensus counts (consensus.py); absent in states saved before them
        pairs, counts = arrays["consensus_pairs"], arrays["consensus_counts"]
        if pairs.size % 2 or counts.size not in [pairs.size // 2 * n for n in (2, 3, 4)]:
            raise MapStateError(
                f"consensus_counts holds {counts.size} values for {pairs.size // 2} track pairs; "
                "expected 2, 3 or 4 per pair"
            )
        tracker.consensus.restore(pairs, counts, tracker.tracks)
    counters = {k: int(v) for k, v in meta["counters"].items()}
    tracker.next_id, tracker.terminated_total = counters["next_id"], counters["terminated_total"]
    tracker.keyframes = counters.get("tracker_keyframes", counters["keyframes"])
    if tracker.tracks and max(tracker.tracks) >= tracker.next_id:
        raise MapStateError("a track id is not below the stored id counter")
    return LoadedState(
        tracker=tracker,
        views=views,
        images=_images(meta["images"], arrays),
        next_image_key=int(meta["images"]["next_key"]),
        labels=labels,
        counters=counters,
        vocabulary=[str(c) for c in meta.get("vocabulary", [])],
        rng=_rng_state(meta.get("rng")),
    )


def _rng_state(state) -> Optional[dict]:
    """A stored generator state that this numpy can set, else None (the pipeline keeps its seeded one)."""
    if not isinstance(state, dict):
        return None
    try:
        gen = getattr(np.random, str(state.get("bit_generator")))()
        gen.state = state
    except (AttributeError, TypeError, ValueError, KeyError):
        return None
    return state


def _track(tm: dict, a: Dict[str, np.ndarray], cfg) -> Track:
    store = PointStore(cfg.refine.map_voxel_m, int(tm["store_cap"]))
    n = len(a["store_keys"])
    if not (len(a["store_colors"]) == len(a["store_visible"]) == len(a["store_in_mask"]) == n):
        raise MapStateError(f"track {tm['id']}: its point arrays have different lengths")
    if n > 1 and not (np.diff(a["store_keys"]) > 0).all():
        raise MapStateError(f"track {tm['id']}: its point keys are not sorted")
    store.keys, store.colors = a["store_keys"].astype(np.int64), a["store_colors"].astype(np.uint8).reshape(-1, 3)
    store.visible, store.in_mask = a["store_visible"].astype(np.uint16), a["store_in_mask"].astype(np.uint16)
    t = Track(
        id=int(tm["id"]),
        voxels=np.unique(a["voxels"].astype(np.int64)),
        feature=a["feature"].astype(np.float32),
        store=store,
        first_seen=float(tm["first_seen"]),
        last_seen=float(tm["last_seen"]),
        first_frame=int(tm["first_frame"]),
        last_frame=int(tm["last_frame"]),
        first_keyframe=int(tm.get("first_keyframe", -1)),
        last_keyframe=int(tm.get("last_keyframe", -1)),
        born_near=int(tm.get("born_near", 0)),
        born_beside=int(tm.get("born_beside", 0)),
        observations=int(tm["observations"]),
        state=TrackState(tm["state"]),
        misses=int(tm["misses"]),
        source_id=tm["source_id"],
        det_label=tm["det_label"],
        det_score_sum=float(tm["det_score_sum"]),
        presence=Presence(tm.get("presence", "present")),
        presence_since=float(tm.get("presence_since", 0.0)),
        moved_from=_opt_int(tm.get("moved_from")),
        moved_to=_opt_int(tm.get("moved_to")),
        empty_count=int(tm.get("empty_count", 0)),
        there_count=int(tm.get("there_count", 0)),
    )
    t.update_box()
    return t


def _opt_int(value) -> Optional[int]:
    return None if value is None else int(value)


def _fill_scene(scene, arrays: Dict[str, np.ndarray]) -> None:
    sizes = arrays["map_block_len"]
    if int(sizes.sum()) != len(arrays["map_keys"]) or len(arrays["map_colors"]) != len(arrays["map_keys"]):
        raise MapStateError("the scene map arrays have inconsistent lengths")
    bounds = np.r_[0, np.cumsum(sizes)]
    scene.blocks = OrderedDict()
    for i, block in enumerate(arrays["map_block_ids"]):
        s = slice(bounds[i], bounds[i + 1])
        scene.blocks[int(block)] = (arrays["map_keys"][s].astype(np.int64), arrays["map_colors"][s].astype(np.uint8))
    scene.n_points = int(sizes.sum())


def _images(meta: dict, arrays: Dict[str, np.ndarray]) -> List[tuple]:
    """(key, jpeg bytes, refs) of the stored keyframe images."""
    lengths = arrays["image_len"]
    if len(lengths) != len(meta["keys"]) or int(lengths.sum()) != len(arrays["image_bytes"]):
        raise MapStateError("the stored images and their index disagree")
    bounds = np.r_[0, np.cumsum(lengths)]
    return [
        (int(k), arrays["image_bytes"][bounds[i] : bounds[i + 1]].tobytes(), int(r))
        for i, (k, r) in enumerate(zip(meta["keys"], meta["refs"]))
    ]
