"""The numba kernels (ros2_opentrack.compiled) return exactly what the numpy code they stand in for returns: on
random inputs built to hit their edge cases, and through a whole pipeline run on a rendered room."""

from __future__ import annotations

import numpy as np
import pytest

from ros2_opentrack import association, compiled, geometry, lifting, synthetic
from ros2_opentrack.pipeline import Pipeline

pytest.importorskip("numba")
pytestmark = pytest.mark.skipif(not compiled.ENABLED, reason="OPENTRACK_COMPILED=0 turns the kernels off")


@pytest.fixture
def numpy_only(monkeypatch):
    """Within the test, callers take their numpy code."""

    def off():
        monkeypatch.setattr(compiled, "ENABLED", False)

    return off


def _clustered_points(rng, n_groups):
    """Blobs, sheets and scattered noise per group, some groups far apart and some touching (shared cells)."""
    pts, group = [], []
    for g in range(n_groups):
        centre = rng.uniform(-2, 2, 3) if g % 3 else np.zeros(3)  # every third group sits on the first's place
        blob = centre + rng.normal(0, rng.uniform(0.02, 0.3), (int(rng.integers(1, 800)), 3))
        sheet = centre + np.c_[rng.uniform(-0.5, 0.5, (300, 2)), rng.normal(0, 0.005, 300)]
        noise = centre + rng.uniform(-1, 1, (int(rng.integers(0, 60)), 3))
        p = np.concatenate([blob, sheet, noise])
        pts.append(p)
        group.append(np.full(len(p), g))
    return np.concatenate(pts).astype(np.float32), np.concatenate(group)


@pytest.mark.parametrize("seed", range(12))
def test_grid_dbscan_kernel_matches_numpy(seed, numpy_only):
    rng = np.random.default_rng(seed)
    points, group = _clustered_points(rng, n_groups=int(rng.integers(1, 7)))
    eps, min_points = float(rng.choice([0.03, 0.05, 0.1])), int(rng.choice([3, 10, 20]))
    fast = lifting.grid_dbscan(points, group, eps, min_points)
    numpy_only()
    slow = lifting.grid_dbscan(points, group, eps, min_points)
    assert (slow == -1).any() and (slow >= 0).any()  # the case has clusters and noise to agree on
    np.testing.assert_array_equal(fast, slow)


def test_grid_cell_labels_kernel_matches_numpy_on_dense_and_lone_cells():
    """Packed cells along one z column (the z + 1 neighbour), across columns and groups, and lone cells."""
    rng = np.random.default_rng(3)
    x, y, z = rng.integers(1, 12, (3, 3000))
    g = rng.integers(0, 3, 3000)
    cells = np.unique((g << 48) | (x << 32) | (y << 16) | z)
    counts = rng.integers(1, 6, len(cells))
    for min_core in (1.0, 7.5, 20.0, 60.0):
        np.testing.assert_array_equal(
            compiled.grid_cell_labels(cells, counts, min_core), lifting.grid_cell_labels(cells, counts, min_core)
        )
    one = np.array([(1 << 32) | (1 << 16) | 1])
    assert compiled.grid_cell_labels(one, np.array([9]), 7.5).tolist() == [0]
    assert compiled.grid_cell_labels(one, np.array([2]), 7.5).tolist() == [-1]


@pytest.mark.parametrize("seed", range(8))
def test_visibility_kernel_matches_numpy(seed, numpy_only):
    """Points in front, behind, beside and at the edges of the image, occluded and not, over holes in depth."""
    rng = np.random.default_rng(seed)
    h, w = 48, 64
    K = np.array([[50.0, 0, w / 2 - 0.5], [0, 50.0, h / 2 + 0.25], [0, 0, 1]])
    T = geometry.look_at(rng.uniform(-1, 1, 3) + [0, -3, 1], rng.uniform(-0.5, 0.5, 3))
    depth = rng.uniform(0.5, 5.0, (h, w)).astype(np.float32)
    depth[rng.random((h, w)) < 0.2] = 0.0  # no reading
    points = rng.uniform(-4, 4, (5000, 3)).astype(np.float32)
    args = (points, T, K, depth, 0.1, 6.0, 0.05)
    fast = geometry.visibility(*args)
    numpy_only()
    slow = geometry.visibility(*args)
    assert slow[1].sum() > 100 and 0 < slow[0].sum() < slow[1].sum()
    for a, b in zip(fast, slow):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("seed", range(8))
def test_intersection_kernel_matches_sparse_product(seed, numpy_only):
    rng = np.random.default_rng(seed)

    def sets(n):  # sorted unique keys from a shared range, some empty, some far from the rest
        out = []
        for _ in range(n):
            k = np.unique(rng.integers(0, 400, int(rng.integers(0, 120))))
            out.append(k + (10_000 if rng.random() < 0.2 else 0))
        return out

    a, b = sets(int(rng.integers(1, 6))), sets(int(rng.integers(1, 9)))
    fast = association.pairwise_iou(a, b)
    numpy_only()
    slow = association.pairwise_iou(a, b)
    assert (slow > 0).any()
    np.testing.assert_array_equal(fast, slow)
    i, j = np.argwhere(slow > 0)[0]  # and against a count by hand
    shared = len(np.intersect1d(a[i], b[j]))
    assert slow[i, j] == shared / (len(a[i]) + len(b[j]) - shared)


def _run(cfg, frames):
    pipe = Pipeline(cfg)
    for f in frames:
        assert pipe.step(f).error is None
    insts = pipe.finalize()
    tracks = {
        tid: (t.voxels.copy(), t.store.keys.copy(), t.store.in_mask.copy()) for tid, t in pipe.tracker.tracks.items()
    }
    return insts, tracks


def test_pipeline_outputs_do_not_depend_on_the_kernels(numpy_only):
    """A rendered room with merged, split and eroded masks: the same tracks, votes and instances either way."""
    from _core_scene import core_config

    scene = synthetic.make_room(seed=1, n_objects=5)
    noise = synthetic.MaskNoise(p_merge=0.2, p_split=0.2)
    frames = synthetic.render_sequence(scene, n_frames=20, hw=(240, 320), seed=1, noise=noise)
    cfg = core_config(refine_every=5)
    fast_insts, fast_tracks = _run(cfg, frames)
    numpy_only()
    slow_insts, slow_tracks = _run(cfg, frames)
    assert len(slow_insts) >= 4 and fast_tracks.keys() == slow_tracks.keys()
    for tid, arrays in slow_tracks.items():
        for a, b in zip(fast_tracks[tid], arrays):
            np.testing.assert_array_equal(a, b)
    assert [i.id for i in fast_insts] == [i.id for i in slow_insts]
    for a, b in zip(fast_insts, slow_insts):
        np.testing.assert_array_equal(a.points, b.points)


def _store_state(store):
    return [store.keys, store.colors, store.visible, store.in_mask, store._centers]


@pytest.mark.parametrize("seed", range(8))
def test_point_store_insertion_kernels_match_numpy(seed, numpy_only):
    """Keys in runs and repeats, partly stored already, a cap that cuts the new ones, counters given or not,
    centres cached or not: the same store either way."""
    from ros2_opentrack.voxel_store import PointStore

    rng = np.random.default_rng(seed)

    def batches():
        for _ in range(6):
            keys = np.repeat(rng.integers(0, 3000, 400), rng.integers(1, 4, 400))  # runs of one voxel
            rng.shuffle(keys[: len(keys) // 2])
            colors = rng.integers(0, 255, (len(keys), 3)).astype(np.uint8)
            counts = rng.integers(0, 9, (2, len(keys))).astype(np.uint16) if rng.random() < 0.5 else (None, None)
            yield keys, colors, *counts

    data = list(batches())

    def fill():
        store = PointStore(0.02, cap=int(rng.integers(300, 2500)) if seed % 2 else 10**6)
        states = []
        for k, (keys, colors, visible, in_mask) in enumerate(data):
            if k == 2:
                store.centers()  # from here on the cached centres are merged too
            store.add_keys(keys, colors, visible, in_mask)
            states.append([None if a is None else a.copy() for a in _store_state(store)])
        return states

    state = rng.bit_generator.state
    fast = fill()
    numpy_only()
    rng.bit_generator.state = state
    slow = fill()
    assert len(slow[-1][0]) > len(slow[0][0]) > 0
    for a_state, b_state in zip(fast, slow):
        for a, b in zip(a_state, b_state):
            assert (a is None) == (b is None)
            if a is not None:
                assert a.dtype == b.dtype
                np.testing.assert_array_equal(a, b)


def test_point_store_keeps_the_first_colour_of_each_new_voxel():
    from ros2_opentrack.voxel_store import PointStore

    store = PointStore(0.02, cap=3)
    store.add_keys(np.array([7, 5]), np.array([[1, 1, 1], [2, 2, 2]], np.uint8))
    store.add_keys(
        np.array([9, 5, 9, 3, 1]), np.array([[3, 3, 3], [4, 4, 4], [5, 5, 5], [6, 6, 6], [8, 8, 8]], np.uint8)
    )
    assert store.keys.tolist() == [1, 5, 7]  # room for one more: the lowest new key
    assert store.colors[:, 0].tolist() == [8, 2, 1]


@pytest.mark.parametrize("seed", range(4))
def test_scene_map_block_merge_kernel_matches_numpy(seed, numpy_only):
    """Overlapping batches of points over a few blocks, with a bound that drops the oldest blocks."""
    from ros2_opentrack.voxel_store import SceneMap

    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(8):
        pts = rng.uniform(-0.4, 0.4, (1500, 3)).astype(np.float32) + rng.uniform(-0.3, 0.3, 3).astype(np.float32)
        batches.append((pts, rng.integers(0, 255, (1500, 3)).astype(np.uint8)))

    def fill():
        scene = SceneMap(0.02, max_points=6000)
        for pts, colors in batches:
            scene.add(pts, colors)
        return scene

    fast = fill()
    numpy_only()
    slow = fill()
    assert slow.n_points == fast.n_points <= 6000 and list(slow.blocks) == list(fast.blocks) and len(slow.blocks) >= 3
    for (ka, ca), (kb, cb) in zip(fast.blocks.values(), slow.blocks.values()):
        np.testing.assert_array_equal(ka, kb)
        np.testing.assert_array_equal(ca, cb)
    keys, colors = fast.in_box(np.full(3, -0.2), np.full(3, 0.2))
    assert len(keys) > 0 and len(keys) == len(colors)


def test_key_bounds_kernel_matches_numpy(numpy_only):
    rng = np.random.default_rng(0)
    keys = np.unique(geometry.pack_keys(rng.integers(-(1 << 20), 1 << 20, (500, 3))))
    fast = geometry.key_bounds(keys)
    numpy_only()
    slow = geometry.key_bounds(keys)
    np.testing.assert_array_equal(fast, slow)
    assert slow.dtype == fast.dtype and (slow[0] < slow[1]).all()


def test_nearest_depth_around_pixels_matches_the_erosion(numpy_only):
    """At pixels in the image's corners, edges and middle, over holes (0) and whole empty windows."""
    from ros2_opentrack import changes

    rng = np.random.default_rng(0)
    depth = rng.uniform(0.3, 6.0, (48, 64)).astype(np.float32)
    depth[rng.random(depth.shape) < 0.4] = 0.0
    depth[20:30, 30:40] = 0.0  # a hole wider than the window
    u = np.r_[0, 63, 0, 63, rng.integers(0, 64, 300), np.arange(30, 40)]
    v = np.r_[0, 0, 47, 47, rng.integers(0, 48, 300), np.full(10, 25)]
    fast = changes._nearest_around(depth, u, v)
    numpy_only()
    slow = changes._nearest_around(depth, u, v)
    assert fast.dtype == slow.dtype == np.float32
    np.testing.assert_array_equal(fast, slow)
    assert (slow[-6:-4] == np.float32(changes._FAR)).all()  # the hole's middle: nothing valid around


@pytest.mark.parametrize("seed", range(4))
def test_mask_coverage_kernel_matches_numpy(seed, numpy_only):
    """Masks near and far from each track's pixels, an empty mask, tracks under min_points (NaN) and over the
    sample size (strided): the same shares either way."""
    from ros2_opentrack.consensus import MaskSet, mask_coverage

    rng = np.random.default_rng(seed)
    h, w = 60, 80
    masks = []
    for _ in range(6):
        m = np.zeros((h, w), bool)
        x0, y0 = rng.integers(0, w - 10), rng.integers(0, h - 10)
        m[y0 : y0 + rng.integers(3, 30), x0 : x0 + rng.integers(3, 40)] = True
        m &= rng.random((h, w)) < 0.8
        masks.append(m)
    masks.append(np.zeros((h, w), bool))
    pixel_sets = [np.stack([rng.integers(0, w, n), rng.integers(0, h, n)], axis=1) for n in (0, 5, 40, 700, 1500, 12)]
    fast = [mask_coverage(masks, pixel_sets, 10), MaskSet(masks).coverage([0, 3, 6, 6], pixel_sets, 10)]
    numpy_only()
    slow = [mask_coverage(masks, pixel_sets, 10), MaskSet(masks).coverage([0, 3, 6, 6], pixel_sets, 10)]
    for a, b in zip(fast, slow):
        np.testing.assert_array_equal(a, b)  # NaN where NaN
    assert np.isnan(slow[0][:, [0, 1]]).all() and not np.isnan(slow[0][:, 2:5]).any()
    assert (slow[0][-1, 2:5] == 0).all() and (slow[0][:, 2:5] > 0).any()


def test_mask_coverage_kernel_refuses_pixels_outside_the_masks():
    """The kernel reads masks unchecked: pixels beyond them raise as numpy's indexing does, never read memory."""
    from ros2_opentrack.consensus import mask_coverage

    masks = [np.ones((10, 10), bool)]
    with pytest.raises(IndexError):
        mask_coverage(masks, [np.array([[2, 3]] * 20 + [[12, 3]])], 10)


@pytest.mark.parametrize("bins", [(12, 4, 4), (16, 8, 8)])  # a joint index in a byte, and one over it
def test_colour_histogram_bins_kernel_matches_numpy(bins, numpy_only):
    from ros2_opentrack.perception.color_hist import ColorHistogramFeatures

    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (37, 53, 3)).astype(np.uint8)
    rgb[0, :3] = [[0, 0, 0], [255, 255, 255], [255, 0, 0]]
    features = ColorHistogramFeatures(bins)
    fast = features.bin_image(rgb)
    masks, boxes = [rng.random((37, 53)) < 0.3], np.array([[0, 0, 53, 37]], np.float32)
    fast_desc = features.extract(rgb, masks, boxes)
    numpy_only()
    slow = features.bin_image(rgb)
    assert fast.dtype == slow.dtype == np.int32
    np.testing.assert_array_equal(fast, slow)
    np.testing.assert_array_equal(fast_desc, features.extract(rgb, masks, boxes))
    assert slow.max() < features.dim and len(np.unique(slow)) > features.dim // 4


@pytest.mark.parametrize("seed", range(3))
def test_seen_elsewhere_kernel_matches_numpy(seed, numpy_only):
    """Tracks half inside a box, wholly outside, too small to count, and one with no visible pixel."""
    from types import SimpleNamespace

    from ros2_opentrack.config import TrackingConfig

    rng = np.random.default_rng(seed)
    cfg = TrackingConfig()
    n_obs, n_tracks = 5, 6
    observations = [
        SimpleNamespace(voxels=np.arange(int(rng.integers(0, 40))), box=np.sort(rng.uniform(0, 80, 4)).tolist())
        for _ in range(n_obs)
    ]
    tracks = [SimpleNamespace(voxels=np.arange(int(rng.integers(1, 60)))) for _ in range(n_tracks)]
    pixels = [rng.integers(0, 80, (int(rng.integers(0, 50)), 2)) for _ in range(n_tracks - 1)] + [np.zeros((0, 2), int)]
    visible = [np.arange(len(p)) for p in pixels]
    iou = rng.uniform(0, 0.05, (n_obs, n_tracks))
    assoc = association.Associator(cfg, None)
    fast = assoc.seen_elsewhere(observations, tracks, visible, pixels, iou)
    numpy_only()
    slow = assoc.seen_elsewhere(observations, tracks, visible, pixels, iou)
    np.testing.assert_array_equal(fast, slow)
    assert slow.dtype == fast.dtype == bool


def test_depth_cleaning_kernel_matches_numpy(numpy_only):
    """NaN, +-inf, negative and zero depth read as no reading; a strided view is cleaned like a copy."""
    from ros2_opentrack.types import _clean_depth

    rng = np.random.default_rng(0)
    depth = rng.uniform(-1.0, 9.0, (48, 64)).astype(np.float32)
    for value, share in ((np.nan, 0.1), (np.inf, 0.05), (-np.inf, 0.05), (0.0, 0.1)):
        depth[rng.random(depth.shape) < share] = value
    views = (depth, depth[::2, 1::3], np.zeros((4, 4), np.float32))
    fast = [_clean_depth(d) for d in views]
    numpy_only()
    slow = [_clean_depth(d) for d in views]
    for (a, deep_a), (b, deep_b) in zip(fast, slow):
        assert a.dtype == b.dtype == np.float32 and deep_a == deep_b
        np.testing.assert_array_equal(a, b)
    assert slow[0][1] == np.nanmax(np.where(np.isinf(depth), 0, depth)) and slow[2][1] == 0.0
    assert (slow[0][0] >= 0).all() and np.isfinite(slow[0][0]).all()


@pytest.mark.parametrize("seed", range(4))
def test_shared_places_kernel_matches_intersect1d(seed, numpy_only):
    from ros2_opentrack.voxel_store import shared_places

    rng = np.random.default_rng(seed)
    a, b = (np.unique(rng.integers(0, 500, int(rng.integers(0, 300)))) for _ in range(2))
    fast = shared_places(a, b)
    numpy_only()
    slow = shared_places(a, b)
    for x, y in zip(fast, slow):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a[slow[0]], b[slow[1]])


def test_without_numba_the_numpy_code_runs_and_doctor_says_why():
    """A machine without numba (here: its import blocked) imports the package, runs a pipeline and says so."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['numba'] = None\n"
        "from ros2_opentrack import compiled, lifting\n"
        "import numpy as np\n"
        "assert not compiled.ENABLED and compiled.numba is None\n"
        "rng = np.random.default_rng(0)\n"
        "pts = rng.normal(0, 0.05, (500, 3)).astype(np.float32)\n"
        "print(int((lifting.grid_dbscan(pts, np.zeros(500, np.int64), 0.05, 10) >= 0).sum()))\n"
        "from ros2_opentrack.perception.doctor import _compiled_row\n"
        "print(_compiled_row().deps)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    clustered, why = out.stdout.splitlines()
    assert int(clustered) > 400 and why.startswith("numba does not import (ModuleNotFoundError")
