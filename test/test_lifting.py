import numpy as np
import pytest

from ros2_opentrack.config import OpenTrackConfig
from ros2_opentrack.errors import BackendUnavailable, ConfigError
from ros2_opentrack.lifting import cluster_labels, grid_dbscan, lift_masks, main_cluster
from ros2_opentrack.types import Frame, Mask2D


def planted(seed=0):
    """Three masks: each a dense 40x40 cm patch, a smaller second blob 1 m away and scattered noise."""
    rng = np.random.default_rng(seed)
    pts, grp, truth = [], [], []
    for gi in range(3):
        c = np.array([gi * 0.3, 0.0, 2.0])  # groups overlap in space: clusters must stay per group
        patch = c + rng.uniform(-0.2, 0.2, (1500, 3)) * [1, 1, 0.05]
        blob = c + [1.0, 0, 0] + rng.uniform(-0.05, 0.05, (200, 3))
        noise = c + rng.uniform(-1.5, 1.5, (30, 3))
        pts += [patch, blob, noise]
        grp.append(np.full(1730, gi))
        truth += [np.ones(1500, bool), np.zeros(230, bool)]
    return np.concatenate(pts).astype(np.float32), np.concatenate(grp), np.concatenate(truth)


def backends():
    out = ["grid", "sklearn"]
    try:
        from ros2_opentrack.lifting import import_open3d

        import_open3d()
        out.append("open3d")
    except BackendUnavailable:
        pass
    return out


@pytest.mark.parametrize("backend", backends())
def test_backends_keep_the_main_cluster_of_each_mask(backend):
    pts, grp, truth = planted()
    keep = main_cluster(pts, grp, 0.05, 10, backend)
    # the patch survives whole; the blob and the scattered noise go (a noise point may fall on the patch)
    assert keep[truth].all()
    assert keep[~truth].mean() < 0.05


def test_grid_and_exact_backends_agree():
    pts, grp, _ = planted(1)
    a = main_cluster(pts, grp, 0.05, 10, "grid")
    b = main_cluster(pts, grp, 0.05, 10, "sklearn")
    assert (a == b).mean() > 0.99


def test_clusters_never_span_groups():
    pts = np.zeros((40, 3), np.float32) + np.random.default_rng(0).normal(0, 0.001, (40, 3)).astype(np.float32)
    grp = np.repeat([0, 1], 20)
    for backend in ("grid", "sklearn"):
        labels = cluster_labels(pts, grp, 0.05, 5, backend)
        assert set(labels[:20]).isdisjoint(labels[20:])


def test_unknown_backend_is_a_config_error():
    with pytest.raises(ConfigError, match="dbscan.backend"):
        cluster_labels(np.zeros((3, 3)), np.zeros(3, int), 0.05, 2, "magic")


def _frame(depth_value=2.0, hw=(60, 80)):
    K = np.array([[80.0, 0, 40], [0, 80.0, 30], [0, 0, 1]])
    depth = np.full(hw, depth_value, np.float32)
    rgb = np.zeros(hw + (3,), np.uint8)
    rgb[..., 0] = 200
    return Frame(rgb=rgb, depth=depth, K=K, T_world_cam=np.eye(4), index=0)


def _mask(hw, rows, cols, sid=None):
    m = np.zeros(hw, bool)
    m[rows, cols] = True
    return Mask2D(mask=m, box=np.array([cols.start, rows.start, cols.stop, rows.stop], np.float32), source_id=sid)


def test_lift_masks_places_points_and_drops_small_masks():
    cfg = OpenTrackConfig()
    cfg.lift.min_mask_pixels = 50
    cfg.lift.pixel_stride = 1
    frame = _frame()
    masks = [_mask((60, 80), slice(20, 40), slice(30, 50), sid=7), _mask((60, 80), slice(0, 5), slice(0, 5))]
    obs, dropped = lift_masks(frame, masks, cfg.lift, cfg.dbscan, 0.05, np.random.default_rng(0))
    assert dropped == {"small_mask": 1}
    assert len(obs) == 1 and obs[0].source_id == 7 and obs[0].pixel_count == 400 and obs[0].mask_index == 0
    # pixels 30..49 at depth 2 with fx 80, cx 40: x from -0.25 to 0.225
    np.testing.assert_allclose(obs[0].points[:, 2], 2.0)
    assert obs[0].points[:, 0].min() == pytest.approx(-0.25) and obs[0].points[:, 0].max() == pytest.approx(0.225)
    assert (obs[0].colors[:, 0] == 200).all()
    assert len(obs[0].voxels) == len(np.unique(obs[0].voxels))


def test_lift_caps_points_per_mask_and_erodes():
    cfg = OpenTrackConfig()
    cfg.lift.pixel_stride = 1
    cfg.lift.max_points = 100
    cfg.dbscan.enabled = False
    frame = _frame()
    masks = [_mask((60, 80), slice(20, 40), slice(30, 50))]
    obs, _ = lift_masks(frame, masks, cfg.lift, cfg.dbscan, 0.05, np.random.default_rng(0))
    assert len(obs[0].points) == 100
    cfg.lift.max_points = 4000
    cfg.lift.erode_px = 2
    obs, _ = lift_masks(frame, masks, cfg.lift, cfg.dbscan, 0.05, np.random.default_rng(0))
    assert obs[0].pixel_count == 16 * 16


def test_lift_ignores_invalid_depth_under_the_mask():
    cfg = OpenTrackConfig()
    cfg.lift.pixel_stride = 1
    cfg.lift.min_mask_pixels = 10
    frame = _frame()
    frame.depth[20:30, :] = 0.0
    frame.depth[30:40, :] = 9.0  # beyond depth_max
    masks = [_mask((60, 80), slice(20, 40), slice(30, 50))]
    obs, dropped = lift_masks(frame, masks, cfg.lift, cfg.dbscan, 0.05, np.random.default_rng(0))
    assert obs == [] and dropped == {"small_mask": 1}


def test_an_explicit_grid_backend_runs_the_grid_never_sklearn(monkeypatch):
    import ros2_opentrack.lifting as L

    def no_exact(*args):
        raise AssertionError("an exact backend ran although grid was asked for")

    monkeypatch.setattr(L, "_sklearn_labels", no_exact)
    monkeypatch.setattr(L, "_open3d_labels", no_exact)
    calls = []
    monkeypatch.setattr(L, "grid_dbscan", lambda *a: calls.append(1) or grid_dbscan(*a))
    pts, grp, _ = planted()
    assert main_cluster(pts, grp, 0.05, 10, "grid").any() and calls == [1]


def test_grid_that_cannot_hold_the_points_raises_naming_it_while_auto_falls_back(monkeypatch):
    import ros2_opentrack.lifting as L

    far = np.array([[0, 0, 0], [0.01, 0, 0], [5000.0, 0, 0]], np.float32)  # > 65534 cells of 2.5 cm
    grp = np.zeros(3, int)
    with pytest.raises(ConfigError, match="dbscan.backend 'grid'"):
        cluster_labels(far, grp, 0.05, 2, "grid")
    used = []
    real = L._sklearn_labels
    monkeypatch.setattr(L, "_sklearn_labels", lambda *a: used.append("sklearn") or real(*a))
    assert cluster_labels(far, grp, 0.05, 2, "auto").tolist() == [0, 0, -1] and used == ["sklearn"]


def _cap_by_sorting(group, rows, cols, n_groups, max_points, rng):
    """The cap as it was: sort every point by (mask, random draw), keep the first max_points of each mask."""
    sizes = np.bincount(group, minlength=n_groups)
    if max_points <= 0 or sizes.max(initial=0) <= max_points:
        return group, rows, cols
    order = np.lexsort((rng.random(len(group)), group))
    start = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rank = np.arange(len(group)) - start[group[order]]
    keep = np.sort(order[rank < max_points])
    return group[keep], rows[keep], cols[keep]


class _CoarseDraws:
    """A generator whose draws tie often (multiples of 1/8): ties must resolve as the stable sort did."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)

    def random(self, n):
        return np.floor(self.rng.random(n) * 8) / 8


@pytest.mark.parametrize("draws", ["uniform", "ties"])
def test_per_mask_cap_keeps_the_points_the_sort_kept_and_draws_the_same_stream(draws):
    from ros2_opentrack.lifting import _cap_per_group

    sizes = [5, 300, 40, 0, 1000, 120]
    group = np.repeat(np.arange(len(sizes), dtype=np.int32), sizes)
    rows, cols = np.arange(len(group)) * 2, np.arange(len(group)) * 3
    for seed in range(5):
        make = np.random.default_rng if draws == "uniform" else _CoarseDraws
        a, b = make(seed), make(seed)
        got = _cap_per_group(group, rows, cols, len(sizes), 100, a)
        want = _cap_by_sorting(group, rows, cols, len(sizes), 100, b)
        for x, y in zip(got, want):
            np.testing.assert_array_equal(x, y)
        assert a.random(3).tolist() == b.random(3).tolist()  # the seeded stream continues alike
