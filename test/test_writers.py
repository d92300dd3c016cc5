"""PLY / JSON / NPZ writers and readers round trip."""

import json

import numpy as np
import pytest

from ros2_opentrack.errors import InputError
from ros2_opentrack.io.ply import read_ply, read_ply_points, write_ply
from ros2_opentrack.io.writers import instance_color, read_instances_ply, read_outputs, write_outputs
from ros2_opentrack.types import Instance, View


def test_ply_binary_round_trip_with_extra_column(tmp_path):
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(50, 3)).astype(np.float32)
    cols = rng.integers(0, 256, (50, 3)).astype(np.uint8)
    ids = np.arange(50, dtype=np.int32)
    path = write_ply(tmp_path / "a.ply", pts, cols, extra={"instance": ids})
    head = path.read_bytes()[:400]
    assert b"format binary_little_endian 1.0" in head and b"property int instance" in head
    p2, c2 = read_ply_points(path)
    np.testing.assert_array_equal(p2, pts)
    np.testing.assert_array_equal(c2, cols)
    np.testing.assert_array_equal(read_ply(path)["instance"], ids)


def test_ply_ascii_and_mesh_with_faces(tmp_path):
    text = (
        "ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nelement face 1\n"
        "property list uchar int vertex_indices\nend_header\n0 0 0 255 0 0\n1 0 0 0 255 0\n0 1 0 0 0 255\n"
        "3 0 1 2\n"
    )
    (tmp_path / "m.ply").write_text(text)
    pts, cols = read_ply_points(tmp_path / "m.ply")
    np.testing.assert_array_equal(pts, [[0, 0, 0], [1, 0, 0], [0, 1, 0]])
    assert cols.tolist() == [[255, 0, 0], [0, 255, 0], [0, 0, 255]]


def test_ply_big_endian_and_bad_files(tmp_path):
    data = np.array([(1.0, 2.0, 3.0)], dtype=[("x", ">f4"), ("y", ">f4"), ("z", ">f4")])
    hdr = (
        b"ply\nformat binary_big_endian 1.0\nelement vertex 1\nproperty float x\nproperty float y\n"
        b"property float z\nend_header\n"
    )
    (tmp_path / "be.ply").write_bytes(hdr + data.tobytes())
    pts, cols = read_ply_points(tmp_path / "be.ply")
    assert pts.tolist() == [[1, 2, 3]] and cols is None
    (tmp_path / "trunc.ply").write_bytes(hdr.replace(b"vertex 1", b"vertex 5") + data.tobytes())
    with pytest.raises(InputError, match="truncated"):
        read_ply(tmp_path / "trunc.ply")
    (tmp_path / "junk.ply").write_bytes(b"hello")
    with pytest.raises(InputError, match="not a PLY"):
        read_ply(tmp_path / "junk.ply")


def make_instances():
    a = Instance(
        id=4,
        points=np.array([[0, 0, 0], [2, 0, 0], [0, 4, 1]], np.float32),
        colors=np.full((3, 3), 10, np.uint8),
        label="chair",
        score=0.9,
        observations=7,
        views=[
            View(
                image_key=1,
                frame_index=12,
                stamp=0.4,
                box=np.array([1, 2, 30, 40]),
                visible_fraction=0.75,
                mask_area=300,
            )
        ],
    )
    b = Instance(
        id=9,
        points=np.array([[5, 5, 5]] * 2, np.float32),
        colors=np.full((2, 3), 200, np.uint8),
        label=None,
        score=0.3,
        observations=2,
    )
    return [a, b]


def test_outputs_round_trip(tmp_path):
    insts = make_instances()
    paths = write_outputs(insts, tmp_path / "run", meta={"scene": "x"})
    assert set(paths) == {"json", "npz", "ply", "map", "preview"}
    doc = json.loads(paths["json"].read_text())
    rec = doc["instances"][0]
    assert rec["id"] == 4 and rec["label"] == "chair" and rec["observations"] == 7
    assert rec["centroid"] == pytest.approx([2 / 3, 4 / 3, 1 / 3], abs=1e-4)
    assert rec["extent"] == pytest.approx([2, 4, 1])
    assert rec["best_views"] == [{"frame_index": 12, "stamp": 0.4, "box": [1, 2, 30, 40], "visible_fraction": 0.75}]
    saved = read_outputs(tmp_path / "run")
    assert saved.ids.tolist() == [4, 9] and saved.labels == ["chair", None]
    assert saved.instance.tolist() == [4, 4, 4, 9, 9]
    np.testing.assert_allclose(saved.scores, [0.9, 0.3])
    back = saved.to_instances()
    np.testing.assert_array_equal(back[0].points, insts[0].points)
    assert back[1].label is None and back[0].extra["best_views"][0]["frame_index"] == 12
    pts, rgb, ids = read_instances_ply(paths["ply"])
    assert ids.tolist() == [4, 4, 4, 9, 9]
    assert (rgb[:3] == instance_color(4)).all() and (rgb[3:] == instance_color(9)).all()
    map_pts, map_cols = read_ply_points(paths["map"])
    assert len(map_pts) == 5 and map_cols[0].tolist() == [10, 10, 10]  # own colours when no scene map


def test_empty_outputs_and_missing_run(tmp_path):
    write_outputs([], tmp_path / "empty")
    saved = read_outputs(tmp_path / "empty")
    assert len(saved.ids) == 0 and saved.points.shape == (0, 3)
    with pytest.raises(InputError, match="instances.npz"):
        read_outputs(tmp_path / "nothing")


def test_instance_colors_stable_and_distinct():
    ids = np.arange(1, 200)
    c = instance_color(ids)
    assert c.shape == (199, 3) and c.dtype == np.uint8
    np.testing.assert_array_equal(c[4], instance_color(5))
    assert len({tuple(x) for x in c}) > 150
    assert (c.max(axis=1) >= 150).all()  # bright enough to see on a dark background
