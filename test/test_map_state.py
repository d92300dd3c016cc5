"""The resumable map state: save -> new pipeline -> load continues as if never stopped; bad states never
replace the live map."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _core_scene import core_config, cube, make_frame, orbit  # noqa: E402

from ros2_opentrack.map_state import MapStateError  # noqa: E402
from ros2_opentrack.pipeline import Pipeline  # noqa: E402

HW = (240, 320)
BOXES = [cube((0, 0, 0.4), 0.6), cube((2.5, 0, 0.4), 0.6), cube((1.2, 1.8, 0.3), (0.4, 0.4, 0.6))]
COLOURS = [(200, 30, 30), (30, 30, 200), (30, 200, 30)]


def frames(n=16):
    rng = np.random.default_rng(0)
    return [
        make_frame(BOXES, COLOURS, T, hw=HW, index=i, stamp=float(i), rng=rng)
        for i, T in enumerate(orbit((1.2, 0.5, 0.3), 4.0, 1.5, np.linspace(0, 340, n)))
    ]


def config():
    return core_config(every_n=1, refine_every=4, min_observations=2)


def test_resume_continues_like_one_run(tmp_path):
    fs = frames()
    whole = Pipeline(config())
    for f in fs:
        whole.step(f)
    expected = whole.finalize()

    first = Pipeline(config())
    for f in fs[:8]:
        first.step(f)
    a, b = sorted(first.tracker.tracks)[:2]  # these boxes never touch: plant view-consensus counts to carry over
    first.tracker.consensus.restore(np.array([[a, b]]), np.array([[1, 2]]), first.tracker.tracks)
    some = min(first.tracker.tracks)
    first.tracker.tracks[max(first.tracker.tracks)].born_near = some  # a near miss (refine.fragment_adopters)
    first.tracker.tracks[max(first.tracker.tracks)].born_beside = some  # opened beside it (association.beside)
    first.save_state(tmp_path / "map")
    n_tracks, next_id = len(first.tracker.tracks), first.tracker.next_id
    lives = {t.id: (t.first_keyframe, t.last_keyframe) for t in first.tracker.tracks.values()}
    consensus = first.tracker.consensus.to_arrays()
    first.close()

    resumed = Pipeline(config())
    resumed.load_state(tmp_path / "map")
    assert len(resumed.tracker.tracks) == n_tracks and resumed.tracker.next_id == next_id
    assert resumed.tracker.keyframes == 8  # the clock of track lifetimes (refine.handover_*) goes on
    assert {t.id: (t.first_keyframe, t.last_keyframe) for t in resumed.tracker.tracks.values()} == lives
    assert resumed.tracker.tracks[max(resumed.tracker.tracks)].born_near == some
    assert resumed.tracker.tracks[max(resumed.tracker.tracks)].born_beside == some
    assert all(1 <= lo <= hi <= 8 for lo, hi in lives.values()) and min(lives.values())[0] == 1
    for saved, loaded in zip(consensus, resumed.tracker.consensus.to_arrays()):  # view consensus counts too
        np.testing.assert_array_equal(saved, loaded)
    assert resumed.stats.frames == 8 and resumed.stats.images_stored == first.stats.images_stored
    for f in fs[8:]:
        r = resumed.step(f)
        assert r.error is None
    got = resumed.finalize()
    assert [i.id for i in got] == [i.id for i in expected]  # same tracks continued, no new ones opened
    for a, b in zip(got, expected):
        assert np.linalg.norm(a.centroid - b.centroid) < 0.03
        assert abs(len(a.points) - len(b.points)) <= 0.1 * len(b.points)
        assert a.observations == b.observations
    view = got[0].views[0]  # kept views survive with their images
    assert resumed.view_image(view).shape == HW + (3,)


def test_state_files_are_plain_arrays_and_json(tmp_path):
    pipe = Pipeline(config())
    for f in frames(6):
        pipe.step(f)
    pipe.save_state(tmp_path / "map")
    meta = json.loads((tmp_path / "map" / "state.json").read_text())
    assert meta["format"] == "ros2_opentrack.map_state" and meta["version"] == 1
    assert len(meta["tracks"]) == len(pipe.tracker.tracks)
    with np.load(tmp_path / "map" / "arrays.npz", allow_pickle=False) as npz:  # no object arrays inside
        assert npz["store_keys_len"].sum() == sum(len(t.store) for t in pipe.tracker.tracks.values())
    pipe.save_state(tmp_path / "map")  # saving over an existing state replaces it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map"]


def test_a_state_saved_before_track_lifetimes_loads_with_them_unknown(tmp_path):
    pipe = Pipeline(config())
    for f in frames(6):
        pipe.step(f)
    pipe.save_state(tmp_path / "map")
    meta_path = tmp_path / "map" / "state.json"
    meta = json.loads(meta_path.read_text())
    del meta["counters"]["tracker_keyframes"]
    for tm in meta["tracks"]:
        del tm["first_keyframe"], tm["last_keyframe"], tm["born_near"], tm["born_beside"]
    meta_path.write_text(json.dumps(meta))
    resumed = Pipeline(config())
    resumed.load_state(tmp_path / "map")
    assert resumed.tracker.keyframes == 6  # from the pipeline's keyframe count
    assert {(t.first_keyframe, t.last_keyframe) for t in resumed.tracker.tracks.values()} == {(-1, -1)}
    assert (
        {t.born_near for t in resumed.tracker.tracks.values()}
        == {t.born_beside for t in resumed.tracker.tracks.values()}
        == {0}
    )
    resumed.step(frames(7)[6])
    assert all(t.last_keyframe in (-1, 7) for t in resumed.tracker.tracks.values())


def _live(pipe):
    return sorted(pipe.tracker.tracks), pipe.stats.frames


@pytest.mark.parametrize("damage", ["truncate", "version", "voxel_size", "missing", "garbage_json", "consensus"])
def test_a_bad_state_fails_clearly_and_leaves_the_live_map(tmp_path, damage):
    source = Pipeline(config())
    for f in frames(6):
        source.step(f)
    folder = tmp_path / "map"
    source.save_state(folder)
    cfg = config()
    if damage == "truncate":
        data = (folder / "arrays.npz").read_bytes()
        (folder / "arrays.npz").write_bytes(data[: len(data) // 2])
    elif damage == "version":
        meta = json.loads((folder / "state.json").read_text())
        meta["version"] = 99
        (folder / "state.json").write_text(json.dumps(meta))
    elif damage == "voxel_size":
        cfg.tracking.voxel_size_m = 0.1
    elif damage == "missing":
        folder = tmp_path / "nothing_here"
    elif damage == "garbage_json":
        (folder / "state.json").write_text("{not json")
    elif damage == "consensus":  # view-consensus counts that do not fit their pairs
        with np.load(folder / "arrays.npz", allow_pickle=False) as npz:
            arrays = dict(npz)
        arrays["consensus_pairs"], arrays["consensus_counts"] = np.array([[1, 2]]), np.array([1, 2, 3, 4, 5])
        np.savez(folder / "arrays.npz", **arrays)
    live = Pipeline(cfg)
    for f in frames(3):
        live.step(f)
    before = _live(live)
    with pytest.raises(MapStateError) as err:
        live.load_state(folder)
    assert str(folder) in str(err.value)
    expected_words = {
        "truncate": "corrupt",
        "version": "version 99",
        "voxel_size": "tracking.voxel_size_m",
        "missing": "no state.json",
        "garbage_json": "corrupt",
        "consensus": "consensus_counts",
    }[damage]
    assert expected_words in str(err.value)
    assert _live(live) == before
    assert live.step(frames(4)[3]).error is None  # and it keeps tracking
