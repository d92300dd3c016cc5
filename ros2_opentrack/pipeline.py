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

from . import geometry
from .config import OpenTrackConfig
from .errors import InputError
from .labeling import LabelJob, LabelWorker
from .lifting import lift_masks
from .tracker import Track, Tracker
from .types import Frame, Instance, Mask2D, TrackState, View, validate_frame, validate_mask
from .views import ImageStore, draw_red_box, keep_top_k, would_keep

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


class Pipeline:
    def __init__(self, config: OpenTrackConfig, mask_source=None, features=None, labeler=None, text_matcher=None):
        from .perception import registry

        self.cfg = config.validate()
        p = self.cfg.perception
        self.mask_source = mask_source
        if mask_source is None and self.cfg.masks.source == "model":
            from .perception.model_source import ModelMaskSource

            self.mask_source = ModelMaskSource.from_config(p)
        self.features = features if features is not None else registry.build("features", p.features, p)
        self.labeler = labeler if labeler is not None else registry.build("labeler", p.labeler, p)
        self._text_matcher = text_matcher
        self._share_text_matcher()  # a given matcher serves the labeller too (no second model load)
        self.vocabulary: List[str] = list(p.detector.vocabulary)
        self.worker = LabelWorker(self.labeler, p.labeler.max_batch, box_thickness=self.cfg.views.box_thickness_px) \
            if self.labeler is not None else None
        self.images = ImageStore(self.cfg.views.jpeg_quality)
        self.tracker = Tracker(self.cfg.tracking, self.cfg.refine, self.cfg.lift, oracle_ids=self.cfg.masks.oracle_ids)
        self._reset_state()

    @classmethod
    def from_config(cls, config: OpenTrackConfig) -> "Pipeline":
        return cls(config)

    def _reset_state(self) -> None:
        self.rng = np.random.default_rng(self.cfg.seed)
        self._frames = 0
        self._keyframes = 0
        self._dropped: Dict[str, int] = {}
        self._merged = 0
        self._since_kf = 0
        self._last_kf_pose: Optional[np.ndarray] = None
        self._last_kf_stamp: Optional[float] = None

    # ---------------------------------------------------------------------------------------------
    def step(self, frame: Frame) -> StepResult:
        """Process one frame. Bad input is counted, logged and returned as StepResult(error=...)."""
        t_start = time.perf_counter()
        self._frames += 1
        try:
            frame, mask_errors = self._validate(frame)
        except InputError as exc:
            return self._reject(frame, str(exc))
        if not self._is_keyframe(frame):
            self._since_kf += 1
            return StepResult(keyframe=False, timings_ms={"total": _ms(t_start)})
        self._since_kf = 1
        self._keyframes += 1
        self._last_kf_pose, self._last_kf_stamp = frame.T_world_cam, frame.stamp
        result = StepResult(keyframe=True, dropped=dict(mask_errors))
        timer = _Timer(result.timings_ms)
        try:
            masks = self._masks(frame)
        except InputError as exc:
            return self._reject(frame, str(exc))
        timer.lap("masks")
        self._keyframe(frame, masks, result, timer)
        for k, v in result.dropped.items():
            self._dropped[k] = self._dropped.get(k, 0) + v
        result.timings_ms["total"] = _ms(t_start)
        return result

    def _validate(self, frame: Frame):
        """validate_frame without the masks, then each mask on its own: one bad mask drops only itself."""
        if not isinstance(frame, Frame):
            raise InputError(f"step() expects a Frame, got {type(frame).__name__}")
        raw_masks = frame.masks
        checked = validate_frame(Frame(rgb=frame.rgb, depth=frame.depth, K=frame.K, T_world_cam=frame.T_world_cam,
                                       stamp=frame.stamp, index=frame.index, masks=None, frame_id=frame.frame_id))
        errors: Dict[str, int] = {}
        if raw_masks is not None:
            masks = []
            for m in raw_masks:
                try:
                    ok = validate_mask(m, checked.depth.shape, np.asarray(frame.rgb).shape[:2])
                except InputError as exc:
                    log.warning("frame %s: mask dropped: %s", frame.index, exc)
                    errors["bad_mask"] = errors.get("bad_mask", 0) + 1
                    continue
                except (TypeError, ValueError) as exc:
                    log.warning("frame %s: mask dropped: not a mask (%s)", frame.index, exc)
                    errors["bad_mask"] = errors.get("bad_mask", 0) + 1
                    continue
                if ok is None:
                    errors["empty_mask"] = errors.get("empty_mask", 0) + 1
                else:
                    masks.append(ok)
            checked.masks = masks
        return checked, errors

    def _reject(self, frame, message: str) -> StepResult:
        index = getattr(frame, "index", "?")
        log.warning("frame %s dropped: %s", index, message)
        self._dropped["bad_frame"] = self._dropped.get("bad_frame", 0) + 1
        return StepResult(keyframe=False, error=message, dropped={"bad_frame": 1})

    def _is_keyframe(self, frame: Frame) -> bool:
        kc = self.cfg.keyframes
        if self._last_kf_pose is None:
            return True
        if kc.max_rate_hz > 0 and frame.stamp - self._last_kf_stamp < 1.0 / kc.max_rate_hz:
            return False
        motion_on = kc.min_translation_m > 0 or kc.min_rotation_deg > 0
        if kc.every_n <= 0 and not motion_on:
            return True
        if kc.every_n > 0 and self._since_kf >= kc.every_n:
            return True
        delta = geometry.invert(self._last_kf_pose) @ frame.T_world_cam
        if kc.min_translation_m > 0 and np.linalg.norm(delta[:3, 3]) >= kc.min_translation_m:
            return True
        if kc.min_rotation_deg > 0:
            angle = np.degrees(np.arccos(np.clip((np.trace(delta[:3, :3]) - 1) / 2, -1, 1)))
            if angle >= kc.min_rotation_deg:
                return True
        return False

    def _masks(self, frame: Frame) -> List[Mask2D]:
        if self.cfg.masks.source == "model" and frame.masks is None:
            h, w = frame.depth.shape
            masks = []
            for m in self.mask_source.masks(frame):
                ok = validate_mask(m, (h, w), frame.rgb.shape[:2])
                if ok is not None:
                    masks.append(ok)
            return masks
        if frame.masks is None:
            raise InputError(f"frame {frame.index} carries no masks (masks.source={self.cfg.masks.source} "
                             "expects Frame.masks)")
        return frame.masks

    def _keyframe(self, frame: Frame, masks: List[Mask2D], result: StepResult, timer: "_Timer") -> None:
        result.n_masks = len(masks)
        feats = None
        if self.features is not None and masks:
            boxes = np.asarray([m.box for m in masks], np.float32).reshape(-1, 4)
            feats = self.features.extract(frame.rgb, [m.mask for m in masks], boxes)
        timer.lap("features")
        observations, dropped = lift_masks(frame, masks, self.cfg.lift, self.cfg.dbscan,
                                           self.cfg.tracking.voxel_size_m, self.rng, feats)
        for k, v in dropped.items():
            result.dropped[k] = result.dropped.get(k, 0) + v
        result.n_observations = len(observations)
        timer.lap("lift")
        if self.cfg.refine.tau_exp > 0:
            self._add_to_scene_map(frame)
            timer.lap("map")
        outcome = self.tracker.step(frame, observations, [m.mask for m in masks])
        result.created = outcome.created
        result.matched = len(outcome.matched) - len(outcome.created)
        result.terminated = outcome.terminated
        timer.lap("track")
        self._update_views(frame, outcome, observations)
        timer.lap("views")
        every = self.cfg.refine.every_n_keyframes
        if every > 0 and self._keyframes % every == 0:
            result.merged = self._refine_and_merge(only_dirty=True)
            timer.lap("refine")
        self._release_removed()
        self._labels(outcome)
        timer.lap("label")

    def map_points(self) -> Optional[Tuple[np.ndarray, np.ndarray]]:
        """(points, colours) of the scene map for map.ply; None before any keyframe (writers then use the
        instances' points)."""
        points, colors = self.tracker.scene.points()
        return (points, colors) if len(points) else None

    def _add_to_scene_map(self, frame: Frame) -> None:
        pts, px = geometry.backproject(frame.depth, frame.K, stride=_MAP_STRIDE, depth_min=self.cfg.lift.depth_min_m,
                                       depth_max=self.cfg.lift.depth_max_m)
        self.tracker.scene.add(geometry.transform(frame.T_world_cam, pts), frame.rgb[px[:, 1], px[:, 0]])

    # ---------------------------------------------------------------------------------------------
    def _update_views(self, frame: Frame, outcome, observations) -> None:
        key = self.images.reserve()
        refs = 0
        top_k = self.cfg.views.top_k
        for obs_i, tid in outcome.matched:
            t = self.tracker.tracks.get(tid)
            if t is None:
                continue
            obs = observations[obs_i]
            view = View(image_key=key, frame_index=frame.index, stamp=frame.stamp, box=obs.box.copy(),
                        visible_fraction=outcome.in_frustum.get(tid, 1.0), mask_area=obs.pixel_count)
            if not would_keep(t.views, view, top_k):
                continue
            refs += 1
            t.views, dropped = keep_top_k(t.views + [view], top_k)
            for v in dropped:
                self.images.release(v.image_key)
        if refs:
            self.images.put(key, frame.rgb, refs)

    def _trim_views(self, t: Track) -> None:
        t.views, dropped = keep_top_k(t.views, self.cfg.views.top_k)
        for v in dropped:
            self.images.release(v.image_key)

    def _release_removed(self) -> None:
        for t in self.tracker.removed:
            for v in t.views:
                self.images.release(v.image_key)
            t.views = []
        self.tracker.removed.clear()

    def _refine_and_merge(self, only_dirty: bool) -> Dict[int, int]:
        self.tracker.refine(only_dirty=only_dirty)
        merged = self.tracker.merge_duplicates(only_dirty=only_dirty)
        for kept in set(merged.values()):
            if kept in self.tracker.tracks:
                self._trim_views(self.tracker.tracks[kept])
        self.tracker.mark_clean()
        self._merged += len(merged)
        return merged

    # ---------------------------------------------------------------------------------------------
    def _labels(self, outcome=None) -> None:
        if self.worker is None:
            return
        self._collect_labels()
        lc = self.cfg.perception.labeler
        ids = [tid for _, tid in outcome.matched] if outcome is not None else list(self.tracker.tracks)
        for tid in ids:
            t = self.tracker.tracks.get(tid)
            if t is None or t.label_pending or not t.views or t.observations < lc.min_observations:
                continue
            if t.labelled_size and len(t.voxels) < lc.relabel_growth * t.labelled_size:
                continue
            views = [(self.images.jpeg(v.image_key), v.box) for v in t.views if v.image_key in self.images]
            if views and self.worker.submit(LabelJob(t.id, views, list(self.vocabulary), lc.mode)):
                t.label_pending = True
                t.labelled_size = len(t.voxels)

    def _collect_labels(self) -> None:
        for r in self.worker.poll():
            t = self.tracker.tracks.get(r.track_id)
            if t is None:  # merged or terminated meanwhile
                continue
            t.label_pending = False
            if r.error:
                log.warning("labelling track %d failed: %s", r.track_id, r.error)
                continue
            t.label, t.label_score = r.label, float(r.score)

    # ---------------------------------------------------------------------------------------------
    def instances(self) -> List[Instance]:
        rc = self.cfg.refine
        out = []
        for t in self.tracker.tracks.values():
            if t.observations < rc.min_observations:
                continue
            keep = t.store.kept(rc.tau_vis, rc.min_visible)
            if keep.sum() < rc.min_points:
                continue
            label = t.label if t.label is not None else t.det_label
            score = t.label_score if t.label is not None else t.det_score_sum / max(1, t.observations)
            score *= objectness(t.observations, rc.objectness_half_obs)
            out.append(Instance(id=t.id, points=t.store.centers()[keep], colors=t.store.colors[keep], label=label,
                                score=float(score), observations=t.observations, state=t.state,
                                first_seen=t.first_seen, last_seen=t.last_seen, views=list(t.views),
                                feature=t.feature, extra={"first_frame": t.first_frame, "last_frame": t.last_frame,
                                                          "misses": t.misses, "detector_label": t.det_label}))
        return sorted(out, key=lambda i: i.id)

    def finalize(self, wait_s: float = 10.0) -> List[Instance]:
        """Last refinement and merging over all tracks; label what is eligible and wait briefly for it."""
        self._refine_and_merge(only_dirty=False)
        self._release_removed()
        if self.worker is not None:
            self._labels(None)
            self.worker.wait(wait_s)
            self._collect_labels()
        return self.instances()

    def reset(self) -> None:
        """Forget every track and image; track ids keep counting up so late labels cannot hit new tracks."""
        self.tracker.reset()
        self.images.clear()
        if self.worker is not None:
            self.worker.poll()
        self._reset_state()

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()

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
        return answer_query(text, self.instances(), text_matcher=self.text_matcher, labeler=self.labeler,
                            view_image=self.view_image, shortlist=tm.shortlist, min_similarity=tm.min_similarity)

    def view_image(self, view: View, boxed: bool = True) -> np.ndarray:
        """The stored keyframe image of a view (decoded), with the track's box drawn in red by default."""
        if view.image_key not in self.images:
            raise InputError(f"view of frame {view.frame_index}: its image is no longer stored (view dropped)")
        rgb = self.images.decode(view.image_key)
        return draw_red_box(rgb, view.box, self.cfg.views.box_thickness_px) if boxed else rgb

    @property
    def stats(self) -> PipelineStats:
        states = [t.state for t in self.tracker.tracks.values()]
        return PipelineStats(frames=self._frames, keyframes=self._keyframes, dropped=dict(self._dropped),
                             active=states.count(TrackState.ACTIVE), dormant=states.count(TrackState.DORMANT),
                             terminated=self.tracker.terminated_total, merged=self._merged,
                             labelled=sum(t.label is not None for t in self.tracker.tracks.values()),
                             images_stored=len(self.images), image_bytes=self.images.nbytes)


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
