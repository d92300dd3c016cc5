import numpy as np
import pytest

from ros2_opentrack import geometry as g
from ros2_opentrack.errors import InputError
from ros2_opentrack.types import validate_pose

K = np.array([[100.0, 0, 50], [0, 100.0, 40], [0, 0, 1]])
# camera at (1, 2, 3), rotated 90 degrees about z
T = np.array([[0, -1, 0, 1], [1, 0, 0, 2], [0, 0, 1, 3], [0, 0, 0, 1]], dtype=float)


def test_backproject_known_pixel_to_known_world_point():
    depth = np.zeros((80, 100), np.float32)
    depth[10, 30] = 2.0
    pts, px = g.backproject(depth, K)
    assert px.tolist() == [[30, 10]]
    np.testing.assert_allclose(pts[0], [-0.4, -0.6, 2.0], atol=1e-6)
    np.testing.assert_allclose(g.transform(T, pts)[0], [1.6, 1.6, 5.0], atol=1e-6)


def test_backproject_respects_mask_stride_and_range():
    depth = np.full((8, 8), 1.0, np.float32)
    depth[0, 0] = 10.0
    mask = np.zeros((8, 8), bool)
    mask[:4, :4] = True
    pts, px = g.backproject(depth, K, mask=mask, stride=2, depth_max=5.0)
    assert sorted(map(tuple, px.tolist())) == [(0, 2), (2, 0), (2, 2)]  # (0, 0) is beyond depth_max


def test_project_inverts_backprojection():
    uv, z = g.project(np.array([[1.6, 1.6, 5.0]]), T, K)
    np.testing.assert_allclose(uv[0], [30, 10], atol=1e-4)
    assert z[0] == pytest.approx(2.0)


def test_voxel_keys_round_trip_with_negative_indices():
    idx = np.array([[-1, 1, 2], [0, 0, 0], [-(2**20), 2**20 - 1, -5], [123456, -654321, 7]])
    np.testing.assert_array_equal(g.unpack_keys(g.pack_keys(idx)), idx)
    keys = g.voxel_keys(np.array([[-0.01, 0.06, 0.11]]), 0.05)
    np.testing.assert_array_equal(g.unpack_keys(keys), [[-1, 1, 2]])
    np.testing.assert_allclose(g.voxel_centers(keys, 0.05), [[-0.025, 0.075, 0.125]], atol=1e-7)


def test_key_neighbourhood_adds_offsets_exactly():
    deltas = g.key_neighbourhood(1)
    assert len(deltas) == 7  # the voxel and its 6 face neighbours
    base = g.pack_keys(np.array([[-3, 0, 5]]))[0]
    got = {tuple(x) for x in g.unpack_keys(base + deltas)}
    assert (-4, 0, 5) in got and (-3, -1, 5) in got and (-3, 0, 6) in got and len(got) == 7
    assert len(g.key_neighbourhood(1, spherical=False)) == 27


def test_visibility_in_image_range_and_occlusion():
    Tc = np.eye(4)
    depth = np.full((80, 100), 2.0, np.float32)
    pts = np.array(
        [
            [0.0, 0.0, 1.0],  # in front of the surface: visible
            [0.0, 0.0, 2.05],  # on the surface within the margin: visible
            [0.0, 0.0, 3.0],  # behind the surface: occluded
            [5.0, 0.0, 1.0],  # outside the image
            [0.0, 0.0, -1.0],
        ]
    )  # behind the camera
    vis, frustum, px = g.visibility(pts, Tc, K, depth, 0.1, 6.0, 0.1)
    assert vis.tolist() == [True, True, False, False, False]
    assert frustum.tolist() == [True, True, True, False, False]
    assert px[0].tolist() == [50, 40]


def test_frustum_box_test():
    planes = g.frustum_planes(K, np.eye(4), (80, 100), 0.1, 5.0)
    inside = g.boxes_in_frustum(np.array([[-0.1, -0.1, 1.0]]), np.array([[0.1, 0.1, 1.2]]), planes)
    behind = g.boxes_in_frustum(np.array([[-0.1, -0.1, -2.0]]), np.array([[0.1, 0.1, -1.0]]), planes)
    far = g.boxes_in_frustum(np.array([[-0.1, -0.1, 7.0]]), np.array([[0.1, 0.1, 8.0]]), planes)
    near_far = g.boxes_in_frustum(np.array([[-0.1, -0.1, 5.2]]), np.array([[0.1, 0.1, 5.3]]), planes, margin=0.5)
    assert inside.tolist() == [True] and behind.tolist() == [False] and far.tolist() == [False]
    assert near_far.tolist() == [True]


def test_box_gap():
    gap = g.box_gap(np.zeros(3), np.ones(3), np.array([4.0, 1.0, 0.0]), np.array([5.0, 2.0, 1.0]))
    assert float(gap) == pytest.approx(3.0)


# -- poses -------------------------------------------------------------------------------------------------

S = np.sqrt(0.5)


def test_quaternion_90_degrees_about_z():
    T = g.pose_to_matrix([1, 2, 3], [0, 0, S, S])
    np.testing.assert_allclose(T, [[0, -1, 0, 1], [1, 0, 0, 2], [0, 0, 1, 3], [0, 0, 0, 1]], atol=1e-12)
    t, q = g.matrix_to_pose(T)
    np.testing.assert_allclose(t, [1, 2, 3])
    np.testing.assert_allclose(q, [0, 0, S, S], atol=1e-12)


@pytest.mark.parametrize(
    "q,R",
    [
        ([1, 0, 0, 0], [[1, 0, 0], [0, -1, 0], [0, 0, -1]]),  # 180 deg about x (w = 0: the non-trace branch)
        ([0, S, 0, S], [[0, 0, 1], [0, 1, 0], [-1, 0, 0]]),  # 90 deg about y
        ([0, 0, 0, 1], np.eye(3)),
        ([0.5, 0.5, 0.5, 0.5], [[0, 0, 1], [1, 0, 0], [0, 1, 0]]),  # 120 deg about (1,1,1): x->y->z->x
    ],
)
def test_quaternion_known_rotations_and_back(q, R):
    np.testing.assert_allclose(g.quaternion_to_rotation(q), R, atol=1e-12)
    np.testing.assert_allclose(g.rotation_to_quaternion(np.asarray(R, float)), q, atol=1e-12)


def test_quaternion_is_normalised_and_sign_fixed():
    np.testing.assert_allclose(
        g.quaternion_to_rotation([0, 0, 2, 2]), g.quaternion_to_rotation([0, 0, S, S]), atol=1e-12
    )
    R = g.quaternion_to_rotation([0, 0, -S, -S])  # same rotation as +q
    np.testing.assert_allclose(g.rotation_to_quaternion(R), [0, 0, S, S], atol=1e-12)


def test_random_pose_round_trip():
    rng = np.random.default_rng(3)
    for _ in range(50):
        q = rng.normal(size=4)
        t = rng.normal(size=3)
        T = g.pose_to_matrix(t, q)
        t2, q2 = g.matrix_to_pose(T)
        q = q / np.linalg.norm(q) * np.sign(q[3])
        np.testing.assert_allclose(q2, q, atol=1e-9)
        np.testing.assert_allclose(g.pose_to_matrix(t2, q2), T, atol=1e-12)


@pytest.mark.parametrize(
    "t,q,needle",
    [
        ([0, 0, 0], [np.nan, 0, 0, 1], "non-finite"),
        ([0, 0, 0], [0, 0, 0, 0], "zero length"),
        ([0, np.nan, 0], [0, 0, 0, 1], "translation"),
        ([0, 0], [0, 0, 0, 1], "translation"),
        ([0, 0, 0], [0, 0, 1], "4 values"),
    ],
)
def test_bad_poses_raise(t, q, needle):
    with pytest.raises(InputError, match=needle):
        g.pose_to_matrix(t, q)


def test_matrix_to_pose_rejects_non_rigid():
    with pytest.raises(InputError, match="not rigid"):
        g.matrix_to_pose(np.diag([2.0, 1, 1, 1]))


def test_interpolate_pose_halfway():
    T0 = g.pose_to_matrix([0, 0, 0], [0, 0, 0, 1])
    T1 = g.pose_to_matrix([2, 0, 0], [0, 0, S, S])  # 90 deg about z
    mid = g.interpolate_pose(T0, T1, 0.5)
    c, s = np.cos(np.pi / 4), np.sin(np.pi / 4)  # 45 deg about z
    np.testing.assert_allclose(mid[:3, :3], [[c, -s, 0], [s, c, 0], [0, 0, 1]], atol=1e-12)
    np.testing.assert_allclose(mid[:3, 3], [1, 0, 0])
    np.testing.assert_allclose(g.interpolate_pose(T0, T1, 0.0), T0, atol=1e-12)
    np.testing.assert_allclose(g.interpolate_pose(T0, T1, 1.0), T1, atol=1e-12)


def test_look_at_is_a_rigid_opencv_camera():
    T = g.look_at([1, 2, 1.5], [4, 2, 1.5])
    validate_pose(T)
    np.testing.assert_allclose(T[:3, 2], [1, 0, 0])  # z forward
    np.testing.assert_allclose(T[:3, 1], [0, 0, -1])  # y down
    np.testing.assert_allclose(T[:3, 0], [0, -1, 0])  # x right of a camera looking along +x with z up


def test_keys_near_equals_the_offset_definition_on_the_grid_and_the_kdtree_fallback():
    from ros2_opentrack.voxel_store import isin_sorted

    rng = np.random.default_rng(1)
    for r in (0, 1, 2, 3, 4):
        seeds = np.unique(g.pack_keys(rng.integers(-30, 10, (300, 3))))
        keys = np.unique(g.pack_keys(rng.integers(-40, 20, (4000, 3))))
        expected = np.zeros(len(keys), bool)
        for d in g.key_neighbourhood(r):
            expected |= isin_sorted(keys + d, seeds)
        assert 0 < expected.sum() < len(keys)
        np.testing.assert_array_equal(g.keys_near(keys, seeds, r), expected)
        np.testing.assert_array_equal(g.keys_near(keys, seeds, r, max_grid_cells=1000), expected)  # KD-tree
    far = g.pack_keys(np.array([[0, 0, 0], [500_000, -500_000, 500_000]]))  # a grid would need 1e17 cells
    probe = g.pack_keys(np.array([[1, 1, 1], [500_000, -500_002, 500_000], [3, 0, 0]]))
    assert g.keys_near(probe, far, 2).tolist() == [True, True, False]
    assert g.keys_near(probe[:0], far, 2).shape == (0,) and not g.keys_near(probe, far[:0], 2).any()


def test_unique_keys_and_key_bounds_equal_their_plain_numpy_forms():
    rng = np.random.default_rng(2)
    keys = g.pack_keys(rng.integers(-50, 50, (2000, 3)))
    np.testing.assert_array_equal(g.unique_keys(keys), np.unique(keys))
    assert g.unique_keys(keys[:0]).shape == (0,)
    bounds = g.key_bounds(keys)
    np.testing.assert_array_equal(bounds, [g.unpack_keys(keys).min(axis=0), g.unpack_keys(keys).max(axis=0)])
    centers = g.voxel_centers(keys, 0.02)  # the centres of the bounds bound the centres
    np.testing.assert_array_equal(
        g.voxel_centers(g.pack_keys(bounds), 0.02), [centers.min(axis=0), centers.max(axis=0)]
    )
