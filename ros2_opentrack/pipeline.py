"""The online pipeline: frames in, tracked and labelled 3D instances out (DESIGN.md "Algorithm, online").

pipe = Pipeline.from_config(cfg)
for frame in reader:
    result = pipe.step(frame)      # never raises for bad input; a bad frame comes back with .error set
instances = pipe.finalize()
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from . import compiled, geometry
from .config import OpenTrackConfig
from .errors import InputError
from .keyframes import KeyframeSelector
from .labeling import TrackLabels
from .lifting import lift_masks
from .refine import fragment_adopters
from .tracker import StepOutcome, Track, Tracker
from .types import Frame, Instance, Mask2D, Observation, TrackState, View, validate_frame, validate_masks
from .views import TrackViews
from .voxel_store import isin_sorted

log = logging.getLogger("ros2_opentrack")

_MAP_STRIDE = 8  # depth pixels sampled for the scene map (expansion source)


@dataclass
class StepResult:
    keyframe: bool = False
    n_masks: int = 0
    n_observations: int = 0
    matched: int = 0
    created: List[int] = field(default_factory=list)
    merged: Dict[int, int] = field(default_factory=dict)  # removed id -> kept id
    terminated: List[int] = field(default_factory=list)
    dropped: Dict[str, int] = field(default_factory=dict)
    error: Optional[str] = None
    timings_ms: Dict[str, float] = field(default_factory=dict)


@dataclass
class Admitted:
    """A frame on its way through the stages of Pipeline.step (admit -> perceive -> track)."""

    frame: Frame
    result: StepResult
    t_start: float
    keyframe_no: int = 0  # its number among keyframes (the refinement schedule), 0 for other frames
    masks: Optional[List[Mask2D]] = None
    features: Optional[np.ndarray] = None
    error: Optional[str] = None  # why it is rejected


@dataclass
class PipelineStats:
    frames: int = 0
    keyframes: int = 0
    dropped: Dict[str, int] = field(default_factory=dict)  # reason -> count (frames and masks)
    active: int = 0
    dormant: int = 0
    terminated: int = 0
    merged: int = 0
    labelled: int = 0
    images_stored: int = 0
    image_bytes: int = 0
    first_reasons: Dict[str, str] = field(default_factory=dict)  # drop reason -> its first message (names the input)


class Pipeline:
    """The per-keyframe path, in order (step -> _keyframe): validate, select keyframes, 2D masks, descriptors,
    lift, scene map, track, views, periodic refinement and merging, labels. Each stage is one named method;
    the state of each concern has one owner: tracks (Tracker), views and images (TrackViews), labels
    (TrackLabels)."""

    def __init__(self, config: OpenTrackConfig, mask_source=None, features=None, labeler=None, text_matcher=None):
        from .perception import registry

        self.cfg = config.validate()
        p = self.cfg.perception
        self.mask_source = mask_source if mask_source is not None else self._default_mask_source()
        self.features = features if features is not None else registry.build("features", p.features, p)
        self.labeler = labeler if labeler is not None else registry.build("labeler", p.labeler, p)
        self._text_matcher = text_matcher
        self._share_text_matcher()  # a given matcher serves the labeller too (no second model load)
        self.vocabulary: List[str] = list(p.detector.vocabulary)
        self.tracker = Tracker(self.cfg.tracking, self.cfg.refine, self.cfg.lift, oracle_ids=self.cfg.masks.oracle_ids)
        self.views = TrackViews(self.cfg.views)
        self.labels = TrackLabels(self.labeler, p.labeler, box_thickness=self.cfg.views.box_thickness_px)
        self.keyframes = KeyframeSelector(self.cfg.keyframes)
        self._reset_counters()
        seconds = compiled.warm_up()  # before the first keyframe, not in it
        if seconds > 0.5:
            log.info("compiled kernels (numba) ready in %.1f s; later runs load them from numba's cache", seconds)

    @classmethod
    def from_config(cls, config: OpenTrackConfig) -> "Pipeline":
        return cls(config)

    def _default_mask_source(self):
        if self.cfg.masks.source != "model":
            return None  # masks arrive with each frame (dataset, topic)
        from .perception.model_source import ModelMaskSource

        return ModelMaskSource.from_config(self.cfg.perception)

    def _reset_counters(self) -> None:
        self.rng = np.random.default_rng(self.cfg.seed)
        self._frames = 0
        self._keyframes = 0
        self._dropped: Dict[str, int] = {}
        self._first_reasons: Dict[str, str] = {}
        self._merged = 0
        self._last_index = -1  # highest frame index stepped (map state: where a resumed run continues)

    # ---------------------------------------------------------------------------------------------
    def step(self, frame: Frame) -> StepResult:
        """Process one frame. Bad input is counted, logged and returned as StepResult(error=...)."""
        return self.track(self.perceive(self.admit(frame)))

    # The three stages of step(), for callers that overlap consecutive keyframes (overlap.run_overlapped): admit
    # and track run in frame order on one thread and own every piece of state; perceive (the 2D models) touches
    # none of it, so the next keyframe's perceive can run while this one is tracked.

    def admit(self, frame: Frame) -> "Admitted":
        """Validate (the one check every frame passes) and decide whether it is a keyframe."""
        a = Admitted(frame=frame, result=StepResult(), t_start=time.perf_counter())
        try:
            a.frame = validate_frame(frame, a.result.dropped, self.cfg.validation)
        except InputError as exc:
            a.error = str(exc)
            return a
        if self.keyframes(a.frame):
            self._keyframes += 1
            a.result.keyframe, a.keyframe_no = True, self._keyframes
        a.result.timings_ms["admit"] = _ms(a.t_start)
        return a

    def perceive(self, a: "Admitted") -> "Admitted":
        """The 2D stage of a keyframe: masks (the frame's own or the models'), then their descriptors."""
        return self.describe(self.segment(a))

    def segment(self, a: "Admitted") -> "Admitted":
        """A keyframe's masks: the frame's own (dataset, topic) or detector + segmenter."""
        return _run_stage(a, "masks", lambda: self._masks(a.frame, a.result))

    def describe(self, a: "Admitted") -> "Admitted":
        """A keyframe's mask-averaged descriptors (one backend call)."""
        return _run_stage(a, "features", lambda: self._describe(a.frame, a.masks))

    def track(self, a: "Admitted") -> StepResult:
        """The 3D stage: lift, scene map, tracker, views, periodic refinement, labels; counts what was dropped."""
        self._frames += 1  # counted here: frames a run has fully processed (admit may run ahead)
        if isinstance(getattr(a.frame, "index", None), (int, np.integer)):
            self._last_index = max(self._last_index, int(a.frame.index))
        if a.error is not None:
            return self._reject(a.frame, a.error)
        result = a.result
        if not result.keyframe:
            return StepResult(keyframe=False, timings_ms={"total": result.timings_ms.get("admit", 0.0)})
        try:
            self._keyframe(a, _Timer(result.timings_ms))
        except InputError as exc:
            return self._reject(a.frame, str(exc))
        for k, v in result.dropped.items():
            self._dropped[k] = self._dropped.get(k, 0) + v
        # the work this frame cost, stage by stage (not the time it waited between overlapped stages)
        result.timings_ms["total"] = sum(result.timings_ms.values())
        return result

    def _keyframe(self, a: "Admitted", timer: "_Timer") -> None:
        frame, masks, result = a.frame, a.masks, a.result
        observations = self._lift(frame, masks, a.features, result)
        timer.lap("lift")
        self._add_to_scene_map(frame)
        timer.lap("map")
        outcome = self.tracker.step(frame, observations, [m.mask for m in masks])
        result.created, result.terminated = outcome.created, outcome.terminated
        result.matched = len(outcome.matched) - len(outcome.created)
        timer.lap("track")
        self._offer_views(frame, outcome, observations)
        timer.lap("views")
        every = self.cfg.refine.every_n_keyframes
        if every > 0 and a.keyframe_no % every == 0:
            result.merged = self._refine_and_merge(only_dirty=True)
            timer.lap("refine")
        self._forget(outcome.terminated)
        self.labels.request(
            [self.tracker.tracks[tid] for _, tid in outcome.matched if tid in self.tracker.tracks],
            self.views,
            self.vocabulary,
        )
        timer.lap("label")

    def _reject(self, frame, message: str) -> StepResult:
        source = getattr(frame, "source", "")
        log.warning("frame %s%s dropped: %s", getattr(frame, "index", "?"), f" ({source})" if source else "", message)
        self._dropped["bad_frame"] = self._dropped.get("bad_frame", 0) + 1
        self._first_reasons.setdefault(
            "bad_frame", f"{source or 'frame ' + str(getattr(frame, 'index', '?'))}: {message}"
        )
        return StepResult(keyframe=False, error=message, dropped={"bad_frame": 1})

    def _masks(self, frame: Frame, result: StepResult) -> List[Mask2D]:
        """The frame's own masks (dataset, topic), else the model mask source's, validated once."""
        if frame.masks is not None:
            masks = frame.masks
        elif self.mask_source is not None:
            masks, drops = validate_masks(
                self.mask_source.masks(frame), frame.depth.shape, frame.rgb.shape[:2], f"frame {frame.index}"
            )
            for reason, n in drops.items():
                result.dropped[reason] = result.dropped.get(reason, 0) + n
        else:
            raise InputError(
                f"frame {frame.index} carries no masks (masks.source={self.cfg.masks.source} expects Frame.masks)"
            )
        result.n_masks = len(masks)
        return masks

    def _describe(self, frame: Frame, masks: List[Mask2D]) -> Optional[np.ndarray]:
        """(N, D) mask-averaged descriptors, one backend call per keyframe."""
        if self.features is None or not masks:
            return None
        boxes = np.asarray([m.box for m in masks], np.float32).reshape(-1, 4)
        return self.features.extract(frame.rgb, [m.mask for m in masks], boxes)

    def _lift(self, frame: Frame, masks: List[Mask2D], features, result: StepResult) -> List[Observation]:
        observations, dropped = lift_masks(
            frame, masks, self.cfg.lift, self.cfg.dbscan, self.cfg.tracking.voxel_size_m, self.rng, features
        )
        for k, v in dropped.items():
            result.dropped[k] = result.dropped.get(k, 0) + v
        result.n_observations = len(observations)
        return observations

    def _add_to_scene_map(self, frame: Frame) -> None:
        """Sampled depth points of every keyframe: the source of expansion (tau_exp) and of map.ply."""
        if self.cfg.refine.tau_exp <= 0:
            return
        pts, px = geometry.backproject(
            frame.depth,
            frame.K,
            stride=_MAP_STRIDE,
            depth_min=self.cfg.lift.depth_min_m,
            depth_max=self.cfg.lift.depth_max_m,
        )
        self.tracker.scene.add(geometry.transform(frame.T_world_cam, pts), frame.rgb[px[:, 1], px[:, 0]])

    def _offer_views(self, frame: Frame, outcome: StepOutcome, observations: List[Observation]) -> None:
        self.views.offer(
            frame.rgb,
            [
                (
                    tid,
                    View(
                        image_key=0,
                        frame_index=frame.index,
                        stamp=frame.stamp,
                        box=observations[i].box.copy(),
                        visible_fraction=outcome.in_frustum.get(tid, 1.0),
                        mask_area=observations[i].pixel_count,
                    ),
                )
                for i, tid in outcome.matched
                if tid in self.tracker.tracks
            ],
        )

    def _refine_and_merge(self, only_dirty: bool, final: bool = False) -> Dict[int, int]:
        with self.tracker.changes.withheld(self.tracker):  # removed places: frozen, never merged (changes.py)
            self.tracker.refine(only_dirty=only_dirty)
            merged = self.tracker.merge_duplicates(only_dirty=only_dirty, final=final)
            self.tracker.resolve_contested(only_dirty=only_dirty)
        for removed, kept in merged.items():
            self.views.move(removed, kept)
            self.labels.move(removed, kept)
        self.tracker.mark_clean()
        self._merged += len(merged)
        return merged

    def _forget(self, track_ids) -> None:
        """Ended tracks: their views release their images, their label state goes."""
        self.views.forget(track_ids)
        self.labels.forget(track_ids)

    def map_points(self) -> Optional[Tuple[np.ndarray, np.ndarray]]:
        """(points, colours) of the scene map for map.ply; None before any keyframe (writers then use the
        instances' points)."""
        points, colors = self.tracker.scene.points()
        return (points, colors) if len(points) else None

    # ---------------------------------------------------------------------------------------------
    def instances(self) -> List[Instance]:
        return sorted(
            (i for i in map(self._instance, self.tracker.tracks.values()) if i is not None), key=lambda i: i.id
        )

    def _instance(self, t: Track) -> Optional[Instance]:
        """A track as a reported instance: its consistent points, once it is seen often enough."""
        rc = self.cfg.refine
        if t.observations < rc.min_observations:
            return None
        keep = self._consistent(t.store)
        if keep.sum() < rc.min_points:
            return None
        named = self.labels.get(t.id)
        label = named.label if named.label is not None else t.det_label
        score = named.score if named.label is not None else t.det_score_sum / max(1, t.observations)
        score *= objectness(t.observations, rc.objectness_half_obs)
        return Instance(
            id=t.id,
            points=t.store.centers()[keep],
            colors=t.store.colors[keep],
            label=label,
            score=float(score),
            observations=t.observations,
            state=t.state,
            first_seen=t.first_seen,
            last_seen=t.last_seen,
            views=self.views.of(t.id),
            feature=t.feature,
            presence=t.presence.value,
            presence_since=t.presence_since or t.first_seen,
            moved_from=t.moved_from,
            extra={
                "first_frame": t.first_frame,
                "last_frame": t.last_frame,
                "misses": t.misses,
                "detector_label": t.det_label,
                "moved_to": t.moved_to,
            },
        )

    def finalize(self, wait_s: float = 10.0) -> List[Instance]:
        """Last refinement and merging over all tracks; label what is eligible and wait briefly for it. Tracks too
        short to report lend their points to the instance they are a piece of (refine.fragment_adopters)."""
        self._refine_and_merge(only_dirty=False, final=True)
        self.labels.request(list(self.tracker.tracks.values()), self.views, self.vocabulary)
        self.labels.wait(wait_s)
        instances = self.instances()
        self._lend_fragments(instances)
        return instances

    def _consistent(self, store) -> np.ndarray:
        """Which of a track's points it reports: those the consistency vote keeps (refine.tau_vis)."""
        return store.kept(self.cfg.refine.tau_vis, self.cfg.refine.min_visible)

    def _lend_fragments(self, instances: List[Instance]) -> None:
        """Each fragment's consistent points the adopting instance does not hold yet join that instance. Removed or
        moved tracks neither lend nor adopt: a piece seen at an object's old place is not that object."""
        by_id, tracks = {i.id: i for i in instances}, self.tracker.tracks
        with self.tracker.changes.withheld(self.tracker):
            adopters = fragment_adopters(self.tracker)
        for fragment, adopter in adopters.items():
            inst, store = by_id.get(adopter), tracks[fragment].store
            if inst is not None:
                new = self._consistent(store) & ~isin_sorted(store.keys, tracks[adopter].store.keys)
                inst.points = np.concatenate([inst.points, store.centers()[new]])
                inst.colors = np.concatenate([inst.colors, store.colors[new]])

    def reset(self) -> None:
        """Forget every track and image; track ids keep counting up so late labels cannot hit new tracks."""
        self.tracker.reset()
        self.views.clear()
        self.labels.clear()
        self.keyframes.reset()
        self._reset_counters()
        release_memory()

    def close(self) -> None:
        self.labels.close()

    def save_state(self, folder) -> None:
        """Write the resumable map state (map_state.py) to ``folder``, replacing it atomically."""
        from . import map_state

        self.labels.collect()
        map_state.save(self, folder)

    def load_state(self, folder) -> None:
        """Continue from a saved map state. Everything is read and checked first; the live map is replaced
        only on success (a bad state raises map_state.MapStateError and leaves it untouched)."""
        from . import map_state

        loaded = map_state.load(folder, self.cfg)
        dims = {len(t.feature) for t in loaded.tracker.tracks.values()}
        want = getattr(self.features, "dim", None)
        if dims and want is not None and dims != {want}:
            raise map_state.MapStateError(
                f"map state '{folder}' holds {dims.pop()}-d descriptors, the configured "
                f"features backend gives {want}-d: use the backend it was built with"
            )
        self.labels.clear()
        self.tracker = loaded.tracker
        self.views.restore(loaded.views, loaded.images, loaded.next_image_key)
        self.labels.restore(loaded.labels)
        if loaded.vocabulary:
            self.set_vocabulary(loaded.vocabulary)
        self.keyframes.reset()
        c = loaded.counters
        self._frames, self._keyframes, self._merged = c["frames"], c["keyframes"], c["merged"]
        self._last_index = c.get("last_frame_index", -1)
        if loaded.rng is not None:
            self.rng.bit_generator.state = loaded.rng

    @property
    def last_frame_index(self) -> int:
        """The highest frame index this pipeline (or the map state it continues) has stepped; -1: none."""
        return self._last_index

    def set_vocabulary(self, classes: List[str]) -> None:
        classes = [str(c).strip() for c in classes if str(c).strip()]
        if not classes:
            raise InputError("vocabulary must hold at least one non-empty class name")
        self.vocabulary = classes
        if self.mask_source is not None:
            self.mask_source.set_vocabulary(classes)

    @property
    def text_matcher(self):
        """Built on first use; shared with a labeller that has a ``text_matcher`` slot (MllmLabeler), so the
        sentence model is loaded once: the labeller's own matcher is reused when it built one first."""
        if self._text_matcher is None and self.labeler is not None:
            self._text_matcher = self.labeler.text_matcher
        if self._text_matcher is None:
            from .perception import registry

            p = self.cfg.perception
            self._text_matcher = registry.build("text_matcher", p.text_matcher, p)
        self._share_text_matcher()
        return self._text_matcher

    def _share_text_matcher(self) -> None:
        if self._text_matcher is not None and self.labeler is not None and self.labeler.text_matcher is None:
            self.labeler.text_matcher = self._text_matcher

    def query(self, text: str):
        from .query import answer_query

        tm = self.cfg.perception.text_matcher
        return answer_query(
            text,
            self.instances(),
            text_matcher=self.text_matcher,
            labeler=self.labeler,
            view_image=self.view_image,
            shortlist=tm.shortlist,
            min_similarity=tm.min_similarity,
        )

    def view_image(self, view: View, boxed: bool = True) -> np.ndarray:
        """The stored keyframe image of a view (decoded), with the track's box drawn in red by default."""
        return self.views.image(view, boxed)

    @property
    def stats(self) -> PipelineStats:
        states = [t.state for t in self.tracker.tracks.values()]
        return PipelineStats(
            frames=self._frames,
            keyframes=self._keyframes,
            dropped=dict(self._dropped),
            active=states.count(TrackState.ACTIVE),
            dormant=states.count(TrackState.DORMANT),
            terminated=self.tracker.terminated_total,
            merged=self._merged,
            labelled=self.labels.labelled,
            images_stored=len(self.views.images),
            image_bytes=self.views.images.nbytes,
            first_reasons=dict(self._first_reasons),
        )


def release_memory() -> None:
    """Hand freed memory back to the system: collect cycles, then (glibc) trim the malloc arenas, which keep
    the pages of freed large images otherwise (hundreds of MiB after a burst of 12 MP frames)."""
    import gc

    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def _run_stage(a: "Admitted", name: str, compute) -> "Admitted":
    """One 2D stage of a keyframe: its output goes to ``a.<name>``, its time to the timings, bad input to
    ``a.error`` (track() rejects it). Frames that are not keyframes, or already rejected, pass through."""
    if a.error is None and a.result.keyframe:
        t0 = time.perf_counter()
        try:
            setattr(a, name, compute())
        except InputError as exc:
            a.error = str(exc)
        a.result.timings_ms[name] = _ms(t0)
    return a


def objectness(observations: int, half: float) -> float:
    """Track length as objectness (the paper's NMS order, 3.2.3): n / (n + half) grows with every keyframe
    that re-observes the object, so short partial tracks rank below objects seen all along."""
    return observations / (observations + half) if half > 0 else 1.0


class _Timer:
    def __init__(self, out: Dict[str, float]):
        self.out = out
        self.t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.out[name] = self.out.get(name, 0.0) + (now - self.t) * 1000.0
        self.t = now


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0
