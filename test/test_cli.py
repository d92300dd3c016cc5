"""`opentrack` end to end: run then eval on a tiny synthetic scene folder, demo, query, error exits."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ros2_opentrack.cli import main, parse_sets
from ros2_opentrack.errors import ConfigError
from ros2_opentrack.synthetic import MaskNoise, make_room, render_sequence, write_scene_folder

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory):
    room = make_room(seed=1, n_objects=4)
    frames = render_sequence(room, n_frames=16, hw=(120, 160), seed=1, noise=MaskNoise(p_drop=0.0, false_blobs=0.0))
    return write_scene_folder(room, frames, tmp_path_factory.mktemp("cli") / "scene")


SETS = ["--set", "perception.features.name=color_hist", "--set", "perception.labeler.name=none",
        "--set", "keyframes.every_n=1", "--set", "lift.min_mask_pixels=40"]


def test_run_then_eval(scene_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", str(scene_dir), "--out", str(out), "--masks", "dataset", "--no-progress", *SETS]) == 0
    text = capsys.readouterr().out
    assert "frames      16" in text and "keyframes   16" in text and "instances" in text
    for name in ("instances.json", "instances.npz", "instances.ply", "map.ply"):
        assert (out / name).is_file()
    doc = json.loads((out / "instances.json").read_text())
    assert doc["instances"] and all("best_views" in r and len(r["centroid"]) == 3 for r in doc["instances"])
    assert main(["eval", str(out), "--gt", str(scene_dir), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n_gt"] == 4
    assert result["ap25"] > 0.5  # perfect masks on a 4-object room: most objects found
    assert main(["query", str(out), "chair", "--no-model"]) in (0, 1)
    assert "chair" in capsys.readouterr().out


def test_error_exits_are_one_line(tmp_path, capsys):
    assert main(["run", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err and "Traceback" not in err
    assert main(["eval", str(tmp_path), "--gt", str(tmp_path)]) == 2
    assert "gt_instances.txt" in capsys.readouterr().err
    assert main(["run", str(tmp_path), "--out", str(tmp_path / "o"), "--set", "tracking.alpha=2"]) == 2
    assert "tracking.alpha" in capsys.readouterr().err
    with pytest.raises(ConfigError):
        parse_sets(["novalue"])
    assert parse_sets(["a.b=0.5", "c=true", "d=x, y"]) == {"a.b": 0.5, "c": True, "d": "x, y"}


def test_demo_and_help_in_a_subprocess():
    env_py = sys.executable
    help_text = subprocess.run([env_py, "-m", "ros2_opentrack", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert help_text.returncode == 0 and "opentrack demo" in help_text.stdout and "eval" in help_text.stdout
    demo = subprocess.run([env_py, "-m", "ros2_opentrack", "demo", "--frames", "24", "--objects", "5"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert demo.returncode == 0, demo.stderr
    line = [ln for ln in demo.stdout.splitlines() if ln.startswith("result")][0]
    ap50 = float(line.split("AP50")[1].split()[0])
    assert 0.0 <= ap50 <= 1.0 and "for 5 objects" in line
    bad = subprocess.run([env_py, "-m", "ros2_opentrack", "eval", "/nonexistent", "--gt", "/nonexistent"], cwd=ROOT,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
