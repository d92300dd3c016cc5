"""Changed scenes (changes.py): an object taken from one table to another is reported moved at its old place
within removed_after_keyframes keyframes of the camera seeing that place empty, the new place has it (linked by
moved_from) and queries answer it first; an object only occluded, or only missed by the detector while its
surface is in view, stays present. Exact ray-cast box scenes (no noise), every frame a keyframe."""

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _core_scene import core_config, cube, make_frame, orbit  # noqa: E402

from ros2_opentrack import geometry  # noqa: E402
from ros2_opentrack.io.writers import read_outputs, write_outputs  # noqa: E402
from ros2_opentrack.pipeline import Pipeline  # noqa: E402
from ros2_opentrack.query import answer_query  # noqa: E402
from ros2_opentrack.synthetic import box_intrinsics  # noqa: E402
from ros2_opentrack.types import Presence  # noqa: E402

HW = (240, 320)
TABLE_A, TABLE_B = cube((0, 0, 0.35), (1.0, 0.8, 0.7)), cube((3, 0, 0.35), (1.0, 0.8, 0.7))
ON_A, ON_B = cube((0, 0, 0.85), 0.3), cube((3, 0, 0.85), 0.3)
COLOURS = [(140, 90, 40), (60, 120, 170), (210, 30, 30), (90, 90, 90)]
LABELS = ["table", "table", "box", None]
CENTRE = (1.5, 0, 0.7)


def config(**overrides):
    return core_config(every_n=1, refine_every=5, min_observations=2, **overrides)


def frame(boxes, T, index, drop=(), hide=()):
    """Box index i -> label LABELS[i]; masks of boxes in ``drop`` (detector misses) and ``hide`` (unknown
    things, e.g. an occluder) are left out."""
    key = np.concatenate([np.ravel(b) for box in boxes for b in box] + [np.ravel(T), [index]]).tobytes()
    if key not in _RENDERED:  # the tests share renders (the ray-caster is most of their time)
        _RENDERED[key] = make_frame(
            boxes, COLOURS[: len(boxes)], T, hw=HW, index=index, stamp=float(index), rng=np.random.default_rng(index)
        )
    f = _RENDERED[key]
    masks = [
        dataclasses.replace(m, label=LABELS[m.source_id]) for m in f.masks if m.source_id not in set(drop) | set(hide)
    ]
    return dataclasses.replace(f, masks=masks)


_RENDERED = {}


def poses(n, start_deg=0.0, step_deg=6.0):
    return orbit(CENTRE, 3.5, 2.0, start_deg + step_deg * np.arange(n))


def place_seen_empty(T, place, depth, margin=0.1) -> bool:
    """Does the camera see behind the (now empty) box ``place``: its centre in view, observed depth behind it?"""
    c = (np.asarray(place[0]) + place[1]) / 2
    uv, z = geometry.project(c[None].astype(np.float32), T, box_intrinsics(HW))
    if not geometry.in_view(uv, z, HW, 0.1, 8.0)[0]:
        return False
    u, v = int(uv[0, 0]), int(uv[0, 1])
    return depth[v, u] > z[0] + margin


def by_source(pipe):
    """Detector source id -> the tracks opened for it (tracks keep the first mask's source id)."""
    out = {}
    for t in pipe.tracker.tracks.values():
        out.setdefault(t.source_id, []).append(t)
    return out


def test_an_object_moved_to_another_table_is_moved_at_the_old_place_and_found_at_the_new(tmp_path):
    pipe = Pipeline(config(tracking__tau_dorm=20, perception__text_matcher__name="none"))
    n_before, n_after = 30, 45  # after: longer than dormant_after + tau_dorm, the old place seen empty throughout
    Ts = poses(n_before + n_after)
    for i, T in enumerate(Ts[:n_before]):
        assert pipe.step(frame([TABLE_A, TABLE_B, ON_A], T, i)).error is None
    (old,) = by_source(pipe)[2]
    assert old.presence == Presence.PRESENT and old.observations >= 20
    first_empty, changed_at = None, None
    for i, T in enumerate(Ts[n_before:], start=n_before):
        f = frame([TABLE_A, TABLE_B, ON_B], T, i)
        pipe.step(f)
        if first_empty is None and place_seen_empty(T, ON_A, f.depth):
            first_empty = i
        if changed_at is None and old.presence != Presence.PRESENT:
            changed_at = i
    # within 3 keyframes of the camera first seeing the old place empty (that keyframe counts as the first)
    assert first_empty is not None and changed_at is not None
    print(
        f"moved object: old place first seen empty at keyframe {first_empty}, reported {old.presence.value} at "
        f"keyframe {changed_at} ({changed_at - first_empty + 1} keyframes)"
    )
    assert changed_at - first_empty + 1 <= 3
    assert old.id in pipe.tracker.tracks, "a removed track stays as a last-known place, never terminated"
    new = [t for t in by_source(pipe)[2] if t.id != old.id]
    assert len(new) == 1 and np.linalg.norm((new[0].box_min + new[0].box_max) / 2 - [3, 0, 0.85]) < 0.15
    assert old.presence == Presence.MOVED and new[0].moved_from == old.id and old.moved_to == new[0].id
    assert new[0].presence == Presence.PRESENT
    assert all(t.presence == Presence.PRESENT for s in (0, 1) for t in by_source(pipe)[s])  # the tables stay
    instances = pipe.finalize()
    by_id = {i.id: i for i in instances}
    assert by_id[old.id].presence == "moved" and by_id[old.id].presence_since == float(changed_at)
    assert by_id[new[0].id].moved_from == old.id and by_id[new[0].id].presence == "present"
    matches = [m for m in pipe.query("box") if m.label == "box"]
    assert [m.instance_id for m in matches] == [new[0].id, old.id]  # the new place first
    assert not matches[0].last_known and matches[1].last_known and matches[1].presence == "moved"
    # instances.json carries presence; the CLI's query path (read back) ranks the same way
    write_outputs(instances, tmp_path / "run")
    records = {r["id"]: r for r in json.loads((tmp_path / "run" / "instances.json").read_text())["instances"]}
    assert records[old.id]["presence"] == "moved" and records[new[0].id]["moved_from"] == old.id
    again = answer_query("box", read_outputs(tmp_path / "run").to_instances())  # word matching: boxes only
    assert [m.instance_id for m in again] == [new[0].id, old.id]


def test_presence_survives_a_save_and_an_old_state_without_it_loads_present(tmp_path):
    pipe = Pipeline(config())
    Ts = poses(50)
    for i, T in enumerate(Ts):
        pipe.step(frame([TABLE_A, TABLE_B, ON_A if i < 20 else ON_B], T, i))
    (old, new) = sorted(by_source(pipe)[2], key=lambda t: t.id)
    assert old.presence == Presence.MOVED
    pipe.save_state(tmp_path / "map")
    back = Pipeline(config())
    back.load_state(tmp_path / "map")
    o, n = back.tracker.tracks[old.id], back.tracker.tracks[new.id]
    assert (o.presence, o.presence_since, o.moved_to, n.moved_from) == (
        Presence.MOVED,
        old.presence_since,
        new.id,
        old.id,
    )
    for i, T in enumerate(poses(10, start_deg=300.0), start=50):  # it continues: the old place stays set aside
        back.step(frame([TABLE_A, TABLE_B, ON_B], T, i))
    assert back.tracker.tracks[old.id].presence == Presence.MOVED
    assert len(by_source(back)[2]) == 2
    meta = json.loads((tmp_path / "map" / "state.json").read_text())  # a state written before presence existed
    for tm in meta["tracks"]:
        for key in ("presence", "presence_since", "moved_from", "moved_to", "empty_count", "there_count"):
            del tm[key]
    del meta["rng"], meta["counters"]["last_frame_index"]
    (tmp_path / "map" / "state.json").write_text(json.dumps(meta))
    old_format = Pipeline(config())
    old_format.load_state(tmp_path / "map")
    assert all(t.presence == Presence.PRESENT for t in old_format.tracker.tracks.values())
    assert old_format.last_frame_index == -1


def assert_stays_present(pipe, when):
    """The object's first track is never terminated and it (and any later track of it) stays present."""
    tracks = sorted(by_source(pipe)[2], key=lambda t: t.id)
    assert tracks[0].id == 3, f"keyframe {when}: the object's first track is gone"  # tables are tracks 1 and 2
    assert all(t.presence == Presence.PRESENT for t in tracks), f"keyframe {when}"
    if when == "end":
        assert 3 in {i.id for i in pipe.finalize()}


def test_an_object_only_occluded_for_50_keyframes_stays_present():
    pipe = Pipeline(config())
    Ts = poses(70, step_deg=2.0)
    target = (np.asarray(ON_A[0]) + ON_A[1]) / 2
    for i, T in enumerate(Ts):
        boxes = [TABLE_A, TABLE_B, ON_A]
        if 10 <= i < 60:  # a person between the camera and the object, 40% of the way to it
            at = T[:3, 3] + 0.4 * (target - T[:3, 3])
            boxes.append(cube(at, 0.7))
        f = frame(boxes, T, i, hide=(3,))
        if 10 <= i < 60:
            assert not any(m.source_id == 2 for m in f.masks), "the occluder must hide the object"
        pipe.step(f)
        assert_stays_present(pipe, i)
    assert_stays_present(pipe, "end")


def test_an_object_the_detector_misses_for_50_keyframes_stays_present():
    pipe = Pipeline(config())
    Ts = poses(70, step_deg=2.0)
    for i, T in enumerate(Ts):
        f = frame([TABLE_A, TABLE_B, ON_A], T, i, drop=(2,) if 10 <= i < 60 else ())
        pipe.step(f)
        assert_stays_present(pipe, i)
    assert_stays_present(pipe, "end")


def test_a_removed_place_filled_again_by_the_same_object_is_present_again():
    pipe = Pipeline(config())
    Ts = poses(90)
    for i, T in enumerate(Ts):
        pipe.step(frame([TABLE_A, TABLE_B, ON_B if 20 <= i < 50 else ON_A], T, i))
    tracks = by_source(pipe)[2]
    first = min(tracks, key=lambda t: t.id)
    assert first.presence == Presence.PRESENT  # back on table A: the old identity is present again
    instances = pipe.finalize()
    on_a = [i for i in instances if i.label == "box" and np.linalg.norm(i.centroid[:2]) < 0.2]
    assert [i.presence for i in on_a] == ["present"]
    assert answer_query("box", instances)[0].instance_id == on_a[0].id


def test_change_detection_off_keeps_every_track_present():
    pipe = Pipeline(config(tracking__removed_after_keyframes=0))
    for i, T in enumerate(poses(50)):
        pipe.step(frame([TABLE_A, TABLE_B, ON_A if i < 20 else ON_B], T, i))
    assert all(t.presence == Presence.PRESENT for t in pipe.tracker.tracks.values())


@pytest.mark.parametrize("cap", [0, 1])
def test_removed_tracks_are_capped(cap):
    pipe = Pipeline(config(tracking__max_removed_tracks=cap))
    for i, T in enumerate(poses(50)):
        pipe.step(frame([TABLE_A, TABLE_B, ON_A if i < 20 else ON_B], T, i))
    away = [t for t in pipe.tracker.tracks.values() if t.presence != Presence.PRESENT]
    assert len(away) == cap


def test_the_map_state_bench_runs(capsys):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import bench_map_state

    assert bench_map_state.main(["--tracks", "20", "--repeat", "1", "--frames", "300", "--move-every", "100"]) == 0
    out = capsys.readouterr().out
    assert "map of 20 tracks" in out and "frame    300" in out and "RSS growth" in out
