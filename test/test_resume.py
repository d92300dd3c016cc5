"""`opentrack run --resume`: a run cut in two (first half -> map state -> a new process resumes the second half)
answers like the run in one go; a bad state is one line and exit 2."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from _cli_support import WEIGHT_FREE_SETS

from ros2_opentrack.cli import main
from ros2_opentrack.synthetic import MaskNoise, load_scannet_npy, make_room, render_sequence, write_scene_folder

ROOT = Path(__file__).resolve().parents[1]
SCANNET_NPY = Path(__file__).resolve().parents[2] / "shared" / "data" / "scannet_scene0451_01" / "scene0451_01.npy"
SETS = [*WEIGHT_FREE_SETS, "--masks", "dataset", "--no-progress"]


def _cli(*args):
    r = subprocess.run(
        [sys.executable, "-m", "ros2_opentrack", *args], capture_output=True, text=True, cwd=ROOT, timeout=600
    )
    return r


def _eval(run_dir, scene):
    r = _cli("eval", str(run_dir), "--gt", str(scene), "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def resume_equivalence(scene, frames, root: Path):
    """(whole, resumed) eval results: one run over all frames; a run over the first half, then a new process
    resuming from its map state over the rest."""
    scene_dir = write_scene_folder(scene, frames, root / "scene")
    half = len(frames) // 2
    for args in (
        ("--out", root / "whole"),
        ("--out", root / "half", "--max-frames", half),
        ("--out", root / "resumed", "--resume", root / "half"),
    ):
        r = _cli("run", str(scene_dir), *map(str, args), *SETS)
        assert r.returncode == 0, r.stderr
    assert (root / "half" / "map" / "state.json").is_file()
    resumed_meta = json.loads((root / "resumed" / "instances.json").read_text())["meta"]
    assert resumed_meta["frames"] == len(frames)  # the state's frames plus the second half, none twice
    return _eval(root / "whole", scene_dir), _eval(root / "resumed", scene_dir)


def test_resume_in_a_new_process_matches_one_run_procedural_room(tmp_path):
    room = make_room(seed=3, n_objects=8)
    frames = render_sequence(room, n_frames=40, hw=(120, 160), seed=3, noise=MaskNoise(seed=3))
    whole, resumed = resume_equivalence(room, frames, tmp_path)
    print(
        f"procedural room: AP50 whole {whole['ap50']:.4f} resumed {resumed['ap50']:.4f}; instances "
        f"{whole['n_pred']} / {resumed['n_pred']}"
    )
    assert abs(whole["ap50"] - resumed["ap50"]) <= 0.02 and whole["n_pred"] == resumed["n_pred"]


def test_resume_in_a_new_process_matches_one_run_scannet_room(tmp_path):
    if not SCANNET_NPY.is_file():
        pytest.skip(f"shared data not found at {SCANNET_NPY}")
    room = load_scannet_npy(SCANNET_NPY)
    frames = render_sequence(room, n_frames=60, hw=(240, 320), seed=0)  # perfect masks: AP50 about 0.5
    whole, resumed = resume_equivalence(room, frames, tmp_path)
    print(
        f"scannet room: AP50 whole {whole['ap50']:.4f} resumed {resumed['ap50']:.4f}; instances "
        f"{whole['n_pred']} / {resumed['n_pred']}"
    )
    assert abs(whole["ap50"] - resumed["ap50"]) <= 0.02 and whole["n_pred"] == resumed["n_pred"]


@pytest.fixture(scope="module")
def small_scene(tmp_path_factory):
    room = make_room(seed=1, n_objects=3)
    frames = render_sequence(room, n_frames=8, hw=(120, 160), seed=1, noise=MaskNoise(p_drop=0.0, false_blobs=0.0))
    return write_scene_folder(room, frames, tmp_path_factory.mktemp("resume") / "scene")


def test_start_skips_frames_and_defaults_to_after_the_last_one(small_scene, tmp_path, capsys):
    first = tmp_path / "first"
    assert main(["run", str(small_scene), "--out", str(first), "--max-frames", "5", *SETS]) == 0
    state = json.loads((first / "map" / "state.json").read_text())
    assert state["counters"]["last_frame_index"] == 4 and state["counters"]["frames"] == 5
    capsys.readouterr()
    assert main(["run", str(small_scene), "--out", str(tmp_path / "a"), "--resume", str(first / "map"), *SETS]) == 0
    assert "frames      8 " in capsys.readouterr().out  # 5 from the state + frames 5..7
    assert (
        main(["run", str(small_scene), "--out", str(tmp_path / "b"), "--resume", str(first), "--start", "7", *SETS])
        == 0
    )
    assert "frames      6 " in capsys.readouterr().out  # 5 + frame 7 only
    assert main(["run", str(small_scene), "--out", str(tmp_path / "c"), "--start", "6", *SETS]) == 0
    assert "frames      2 " in capsys.readouterr().out  # no state: frames 6 and 7


@pytest.mark.parametrize("damage", ["missing", "not_a_state", "garbage", "voxel_size"])
def test_a_bad_state_is_one_line_and_exit_2(small_scene, tmp_path, capsys, damage):
    first = tmp_path / "first"
    assert main(["run", str(small_scene), "--out", str(first), "--max-frames", "3", *SETS]) == 0
    capsys.readouterr()
    target, extra = first, []
    if damage == "missing":
        target = tmp_path / "nothing"
    elif damage == "not_a_state":
        target = small_scene
    elif damage == "garbage":
        (first / "map" / "state.json").write_text("{oops")
    elif damage == "voxel_size":
        extra = ["--set", "tracking.voxel_size_m=0.1"]
    assert main(["run", str(small_scene), "--out", str(tmp_path / "o"), "--resume", str(target), *SETS, *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert {
        "missing": "does not exist",
        "not_a_state": "no state.json",
        "garbage": "corrupt",
        "voxel_size": "tracking.voxel_size_m",
    }[damage] in err
    assert not (tmp_path / "o").exists()  # nothing written for a failed resume
