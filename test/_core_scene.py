"""Core test scenes: coloured boxes on a floor (ros2_opentrack.synthetic's ray-caster), camera orbits and the
core tests' config."""

from __future__ import annotations

import numpy as np

from ros2_opentrack.config import OpenTrackConfig, from_flat
from ros2_opentrack.geometry import look_at
from ros2_opentrack.synthetic import make_box_frame as make_frame

__all__ = ["core_config", "cube", "look_at", "make_frame", "orbit"]


def cube(center, size):
    c = np.asarray(center, float)
    s = np.asarray(size, float) / 2 if np.ndim(size) else np.full(3, size / 2.0)
    return (c - s, c + s)


def orbit(center, radius, height, angles_deg):
    """Poses on a circle around ``center`` looking at it."""
    out = []
    for a in np.radians(angles_deg):
        pos = np.asarray(center, float) + [radius * np.cos(a), radius * np.sin(a), 0]
        pos[2] = height
        out.append(look_at(pos, center))
    return out


def core_config(every_n=1, refine_every=None, min_observations=1, **overrides) -> OpenTrackConfig:
    """The core tests' config: dataset masks, colour-histogram features, every frame a keyframe, small masks
    allowed. ``refine_every`` sets refine.every_n_keyframes (None: the default); ``overrides`` are dotted
    names with the dots written as double underscores, e.g. tracking__alpha=0.0."""
    cfg = OpenTrackConfig()
    cfg.masks.source = "dataset"
    cfg.perception.features.name = "color_hist"
    cfg.perception.labeler.name = "none"  # the default is the MLLM (weights); core tests run without it
    cfg.keyframes.every_n = every_n
    cfg.lift.min_mask_pixels = 20
    cfg.refine.min_observations = min_observations
    if refine_every is not None:
        cfg.refine.every_n_keyframes = refine_every
    return from_flat({k.replace("__", "."): v for k, v in overrides.items()}, cfg) if overrides else cfg
