"""Issue 8, core and CLI: hostile input, interrupted runs and bad output paths lose nothing and stop nothing.

Every input is made here (a small synthetic ScanNet-layout scene, then damaged one way per test); each test
asserts the exact outcome: the exit code, the one error line naming the input, the counted drop reason, the
partial files written and readable."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _cli_support import WEIGHT_FREE_SETS

from ros2_opentrack import cli, geometry
from ros2_opentrack.config import ConfigError, OpenTrackConfig, load_config, unwrap_ros_yaml
from ros2_opentrack.errors import BackendUnavailable, InputError
from ros2_opentrack.io import open_scene
from ros2_opentrack.io.writers import read_outputs, write_outputs
from ros2_opentrack.pipeline import Pipeline
from ros2_opentrack.synthetic import MaskNoise, make_room, render_sequence, write_scene_folder
from ros2_opentrack.types import Frame, validate_frame

ROOT = Path(__file__).resolve().parents[1]
SETS = ["--no-progress", "--masks", "dataset", *WEIGHT_FREE_SETS]
N_FRAMES = 10


@pytest.fixture(scope="module")
def clean_scene(tmp_path_factory):
    room = make_room(seed=1, n_objects=4)
    frames = render_sequence(
        room, n_frames=N_FRAMES, hw=(120, 160), seed=1, noise=MaskNoise(p_drop=0.0, false_blobs=0.0)
    )
    return write_scene_folder(room, frames, tmp_path_factory.mktemp("rel") / "scene")


@pytest.fixture
def scene(clean_scene, tmp_path):
    """A private copy of the scene, to damage."""
    return Path(shutil.copytree(clean_scene, tmp_path / "scene"))


@pytest.fixture(scope="module")
def run_dir(clean_scene, tmp_path_factory):
    out = tmp_path_factory.mktemp("relrun") / "run"
    assert cli.main(["run", str(clean_scene), "--out", str(out), *SETS]) == 0
    return out


def run(scene, out, *extra):
    return cli.main(["run", str(scene), "--out", str(out), *SETS, *extra])


def _set_pose(scene, i, T):
    np.savetxt(scene / "pose" / f"{i}.txt", T)


# ---------------------------------------------------------------------------------------------------------
# item 4: absurd but finite values are rejected at the entry, with a reason


def test_huge_translation_is_rejected_with_a_reason_not_an_indexerror(scene, tmp_path, capsys):
    T = np.loadtxt(scene / "pose" / "3.txt")
    T[0, 3] = 1e300  # used to end the run with an IndexError from geometry.visibility
    _set_pose(scene, 3, T)
    assert run(scene, tmp_path / "out") == 0
    out = capsys.readouterr().out
    assert "bad_frame: 1" in out
    assert f"first bad_frame: {scene / 'color' / '3.jpg'}: pose translation [1.000e+300" in out
    assert "validation.max_translation_m = 10000" in out
    assert read_outputs(tmp_path / "out").ids.size > 0


def test_validation_bounds_are_configurable_and_named(scene):
    frame = next(iter(open_scene(scene)))
    cfg = OpenTrackConfig().validation
    far = Frame(**{**frame.__dict__, "T_world_cam": frame.T_world_cam.copy()})
    far.T_world_cam[:3, 3] = [5e4, 0, 0]
    with pytest.raises(InputError, match=r"validation.max_translation_m = 10000"):
        validate_frame(far, limits=cfg)
    cfg.max_translation_m = 1e5
    validate_frame(far, limits=cfg)  # allowed once the bound says so
    deep = Frame(**{**frame.__dict__, "depth": np.where(frame.depth > 0, 1e30, 0).astype(np.float32)})
    with pytest.raises(InputError, match=r"depth holds 1e\+30 m, beyond validation.max_depth_m = 1000"):
        validate_frame(deep)
    K = frame.K.copy()
    K[0, 0] = 1e9
    with pytest.raises(
        InputError,
        match=r"intrinsics fx is 1e\+09 px, outside \[validation.min_focal_px 1, "
        r"validation.max_focal_px 100000\]",
    ):
        validate_frame(Frame(**{**frame.__dict__, "K": K}))
    with pytest.raises(ConfigError, match="validation.max_focal_px"):
        load_config(None, {"validation.max_focal_px": 0.5})
    # the pipeline rejects, counts and goes on
    pipe = Pipeline(
        load_config(
            None,
            {"masks.source": "dataset", "perception.features.name": "color_hist", "perception.labeler.name": "none"},
        )
    )
    result = pipe.step(far)
    assert result.error and "max_translation_m" in result.error and pipe.stats.dropped == {"bad_frame": 1}


def test_visibility_survives_overflowing_poses():
    T = np.eye(4)
    T[0, 3] = 1e300
    depth = np.ones((12, 16), np.float32)
    K = np.array([[10.0, 0, 8], [0, 10.0, 6], [0, 0, 1]])
    pts = np.array([[0, 0, 1.0], [1e38, -1e38, 3e38], [np.nan, 0, 1]], np.float32)
    visible, frustum, px = geometry.visibility(pts, T, K, depth, 0.1, 6.0, 0.05)
    assert not visible.any() and not frustum.any()
    assert px.min() >= 0 and px[:, 0].max() < 16 and px[:, 1].max() < 12


# ---------------------------------------------------------------------------------------------------------
# item 3: the output folder is checked first; SIGINT / SIGTERM write the partial results; writes are atomic


def test_output_under_a_file_fails_before_the_first_frame(scene, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "open_reader", lambda *a: pytest.fail("a frame was read before --out was checked"))
    (tmp_path / "afile").write_text("x")
    assert run(scene, tmp_path / "afile" / "sub") == 2
    err = capsys.readouterr().err
    assert (
        err == f"opentrack run: error: output folder '{tmp_path / 'afile' / 'sub'}' cannot be created: "
        f"'{tmp_path / 'afile'}' is a file\n"
    )
    assert run(scene, tmp_path / "afile") == 2
    assert capsys.readouterr().err == f"opentrack run: error: output folder '{tmp_path / 'afile'}' is a file\n"
    (tmp_path / "o" / "instances.npz").mkdir(parents=True)
    assert run(scene, tmp_path / "o") == 2
    assert (
        capsys.readouterr().err == f"opentrack run: error: output '{tmp_path / 'o' / 'instances.npz'}' is a "
        f"directory: remove it or choose another output folder\n"
    )


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("overlap", [False, True])
def test_signal_mid_run_writes_the_partial_results(scene, tmp_path, capsys, monkeypatch, sig, overlap):
    real = cli.open_reader
    read = []
    before = signal.getsignal(sig)  # SIG_IGN for SIGINT when the suite runs in a background job (nohup ... &)

    class Signalling:
        def __init__(self, reader):
            self.reader, self.dropped = reader, reader.dropped

        def __len__(self):
            return len(self.reader)

        def __iter__(self):
            for k, frame in enumerate(self.reader):
                if k == 4:
                    os.kill(os.getpid(), sig)  # delivered to the main thread: the run stops after this frame
                read.append(k)
                yield frame

    monkeypatch.setattr(cli, "open_reader", lambda args, cfg: Signalling(real(args, cfg)))
    out = tmp_path / "out"
    assert run(scene, out, "--set", f"perception.overlap_stages={str(overlap).lower()}") == 130
    err = capsys.readouterr().err
    # plain loop: stops after the frame being processed (frame 4). Overlapped stages read ahead of tracking:
    # reading stops at the signal and every frame already read is still tracked, so none is lost
    n = 5 if not overlap else len(read)
    assert 5 <= n <= 8 and read == list(range(n))
    assert f"interrupted after {n} frames: partial results written to {out}" in err
    saved = read_outputs(out)
    assert saved.ids.size > 0 and len(saved.points) > 0
    doc = json.loads((out / "instances.json").read_text())
    assert doc["meta"]["frames"] == n and doc["meta"]["interrupted"] is True
    assert signal.getsignal(sig) == before  # handlers restored


def test_an_interrupted_write_leaves_the_old_file_whole(run_dir, tmp_path, monkeypatch):
    out = Path(shutil.copytree(run_dir, tmp_path / "run"))
    before = (out / "instances.npz").read_bytes()
    instances = read_outputs(out).to_instances()

    def dies(f, **arrays):
        f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez_compressed", dies)
    with pytest.raises(KeyboardInterrupt):
        write_outputs(instances, out)
    assert (out / "instances.npz").read_bytes() == before
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    assert read_outputs(out).ids.size == len(instances)


# ---------------------------------------------------------------------------------------------------------
# item 5: nothing usable -> exit 3 and the first reason of each kind, naming the file


def _no_frame_usable(scene, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(scene, out) == 3
    captured = capsys.readouterr()
    assert f"opentrack run: error: no frame of '{scene}' was usable" in captured.err
    assert not out.exists()  # nothing written
    return captured.out


@pytest.mark.parametrize("values", ["0 0 0\n0 0 0\n0 0 1\n", "nan 0 80\n0 nan 60\n0 0 1\n"])
def test_bad_intrinsics_exit_3_naming_the_file(scene, tmp_path, capsys, values):
    (scene / "intrinsic" / "intrinsic_depth.txt").write_text(values)
    text = _no_frame_usable(scene, tmp_path, capsys)
    assert f"bad_intrinsics: {N_FRAMES}" in text
    assert f"first bad_intrinsics: {scene / 'intrinsic' / 'intrinsic_depth.txt'}: intrinsics K " in text


def test_non_rigid_poses_exit_3_naming_the_frame(scene, tmp_path, capsys):
    for i in range(N_FRAMES):
        _set_pose(scene, i, np.loadtxt(scene / "pose" / f"{i}.txt") * np.array([[2.0]] * 3 + [[1.0]]))
    text = _no_frame_usable(scene, tmp_path, capsys)
    assert f"bad_frame: {N_FRAMES}" in text
    assert f"first bad_frame: {scene / 'color' / '0.jpg'}: pose is not rigid" in text


def test_all_zero_depth_exits_3(scene, tmp_path, capsys):
    import cv2

    for i in range(N_FRAMES):
        cv2.imwrite(str(scene / "depth" / f"{i}.png"), np.zeros((120, 160), np.uint16))
    text = _no_frame_usable(scene, tmp_path, capsys)
    assert f"first bad_frame: {scene / 'color' / '0.jpg'}: frame 0: depth has no valid pixel (all zero or NaN)" in text


def test_depth_of_another_size_says_so(scene, tmp_path, capsys):
    import cv2

    for i in range(N_FRAMES):
        d = cv2.imread(str(scene / "depth" / f"{i}.png"), cv2.IMREAD_UNCHANGED)
        cv2.imwrite(str(scene / "depth" / f"{i}.png"), cv2.resize(d, (60, 45), interpolation=cv2.INTER_NEAREST))
    text = _no_frame_usable(scene, tmp_path, capsys)  # intrinsic_depth.txt (cx 79.5, cy 59.5) is the 160x120 one's
    assert (
        f"first bad_frame: {scene / 'color' / '0.jpg'}: depth image is 60x45 but the colour image is 160x120, "
        f"and the intrinsics do not fit the depth image (intrinsics principal point (79.5, 59.5) lies outside "
        f"the 60x45 image): K must be the depth image's" in text
    )


def test_help_documents_the_exit_codes():
    text = cli.build_parser().format_help()
    assert "3 no frame was usable" in text and "130 interrupted" in text


# ---------------------------------------------------------------------------------------------------------
# item 6: whatever convert writes, run reads


def test_convert_to_a_folder_named_dot_bag_then_run_it(clean_scene, tmp_path, capsys):
    bag = tmp_path / "out.bag"
    assert cli.main(["convert", str(clean_scene), str(bag)]) == 0
    assert bag.is_dir() and (bag / "metadata.yaml").is_file()
    renamed = tmp_path / "any name"
    shutil.copytree(bag, renamed)
    capsys.readouterr()
    for path in (bag, renamed):
        assert run(path, tmp_path / f"run_{path.name}") == 0, capsys.readouterr().err
        assert f"frames      {N_FRAMES} " in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------------
# item 7: the smaller ones


def test_truncated_jpeg_is_rejected_naming_the_file(scene, tmp_path, capsys):
    jpg = scene / "color" / "2.jpg"
    data = jpg.read_bytes()
    jpg.write_bytes(data[: len(data) // 2])
    assert run(scene, tmp_path / "out") == 0
    text = capsys.readouterr().out
    assert "truncated_image: 1" in text
    assert (
        f"first truncated_image: {jpg} is a truncated JPEG (no end-of-image marker after {len(data) // 2} "
        f"bytes)" in text
    )


def test_truncated_instances_npz_is_one_line_exit_2(run_dir, clean_scene, tmp_path, capsys):
    out = Path(shutil.copytree(run_dir, tmp_path / "run"))
    npz = out / "instances.npz"
    npz.write_bytes(npz.read_bytes()[:100])
    assert cli.main(["query", str(out), "chair", "--no-model"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"opentrack query: error: '{npz}' is not a readable instances.npz (truncated or corrupt?)")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert cli.main(["eval", str(out), "--gt", str(clean_scene)]) == 2
    assert capsys.readouterr().err.startswith(f"opentrack eval: error: '{npz}' is not a readable instances.npz")


def test_eval_rejects_a_negative_radius_and_writes_json_null(run_dir, clean_scene, capsys):
    assert cli.main(["eval", str(run_dir), "--gt", str(clean_scene), "--radius", "-1"]) == 2
    assert capsys.readouterr().err == "opentrack eval: error: --radius -1.0: expected a transfer radius > 0 in metres\n"
    # every GT instance under --min-size: AP is undefined (NaN), which JSON writes as null
    assert cli.main(["eval", str(run_dir), "--gt", str(clean_scene), "--json", "--min-size", "100000000"]) == 0
    text = capsys.readouterr().out
    assert "NaN" not in text
    assert json.loads(text)["ap"] is None


def test_broken_pipe_is_quiet(run_dir):
    proc = subprocess.Popen(
        [sys.executable, "-m", "ros2_opentrack", "eval", str(run_dir), "--gt", str(run_dir), "--json"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # the reader is gone before anything is written, as with `| head -0`
    err = proc.stderr.read().decode()
    assert proc.wait(60) in (2, 141)  # eval of a folder without GT: its one error line, or the quiet pipe exit
    assert "Traceback" not in err and "BrokenPipeError" not in err
    proc = subprocess.Popen(
        [sys.executable, "-m", "ros2_opentrack", "query", str(run_dir), "table", "--no-model"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(60) == 141 and err == "", err


def test_masks_source_topic_is_rejected_in_the_cli(clean_scene, tmp_path, capsys):
    assert (
        cli.main(
            ["run", str(clean_scene), "--out", str(tmp_path / "o"), "--no-progress", "--set", "masks.source=topic"]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("opentrack run: error: masks.source=topic reads masks from the ROS node's masks topic")
    assert not (tmp_path / "o").exists()


def test_yaml_for_another_node_is_rejected_naming_it(tmp_path):
    assert unwrap_ros_yaml({"opentrack": {"ros__parameters": {"seed": 3}}}) == {"seed": 3}
    assert unwrap_ros_yaml({"/robot1/opentrack": {"ros__parameters": {"seed": 3}}}) == {"seed": 3}
    assert unwrap_ros_yaml(
        {
            "/**": {"ros__parameters": {"seed": 1, "tracking": {"alpha": 0.3}}},
            "opentrack": {"ros__parameters": {"seed": 3}},
        }
    ) == {"seed": 3, "tracking": {"alpha": 0.3}}
    assert unwrap_ros_yaml(
        {"camera_driver": {"ros__parameters": {"fps": 30}}, "opentrack": {"ros__parameters": {"seed": 3}}}
    ) == {"seed": 3}
    path = tmp_path / "other.yaml"
    path.write_text("camera_driver:\n  ros__parameters:\n    seed: 5\n")
    with pytest.raises(ConfigError, match=r"holds parameters for node 'camera_driver', not for 'opentrack'"):
        load_config(path)


def test_yolo_world_hint_names_a_key_that_exists():
    from ros2_opentrack.perception import yolo_world

    try:
        yolo_world.require_ultralytics()
    except BackendUnavailable as exc:
        hint = str(exc).rsplit("use ", 1)[1]
        key, value = hint.split(": ")
        assert load_config(None, {key: value}).perception.detector.name == "owlv2"
    else:
        pytest.skip("ultralytics imports here: no hint to check")


def test_unreachable_hub_means_local_only_at_once(tmp_path, monkeypatch):
    import socket

    from ros2_opentrack.config import PerceptionConfig
    from ros2_opentrack.perception import weights as W

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(k, raising=False)
    probes = []

    def no_route(address, timeout=None):
        probes.append((address, timeout))
        raise OSError("Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", no_route)
    W._reachable.cache_clear()
    calls = []

    def loader(target, local_files_only, **kw):
        calls.append(local_files_only)
        raise OSError("not in the cache")

    pcfg = PerceptionConfig(weights_dir=str(tmp_path), offline=False)
    with pytest.raises(BackendUnavailable, match=r"offline: the hub huggingface.co:443 is unreachable"):
        W.from_pretrained(loader, "google/owlv2-base-patch16-ensemble", "detector (owlv2)", pcfg)
    assert calls == [True]  # the hub client was told not to try the network (no 30 s of retries)
    assert probes == [(("huggingface.co", 443), W.HUB_PROBE_S)]
    W.from_pretrained(
        lambda t, local_files_only: calls.append(local_files_only),
        "google/owlv2-base-patch16-ensemble",
        "detector (owlv2)",
        pcfg,
    )
    assert len(probes) == 1  # remembered for the process
    W._reachable.cache_clear()
