"""`opentrack` end to end: run then eval on a tiny synthetic scene folder, demo, query, error exits."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from _cli_support import WEIGHT_FREE_SETS

from ros2_opentrack.cli import main, parse_sets
from ros2_opentrack.errors import ConfigError
from ros2_opentrack.synthetic import MaskNoise, make_room, render_sequence, write_scene_folder

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory):
    room = make_room(seed=1, n_objects=4)
    frames = render_sequence(room, n_frames=16, hw=(120, 160), seed=1, noise=MaskNoise(p_drop=0.0, false_blobs=0.0))
    return write_scene_folder(room, frames, tmp_path_factory.mktemp("cli") / "scene")


SETS = WEIGHT_FREE_SETS


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
    # perfect masks on a 4-object room: one prediction per object, and table, cabinet and box each matched at IoU
    # 0.25 (AP25 1); the chair's prediction overlaps its GT less (today: AP25 0.68 overall, AP50 0.50)
    assert result["n_pred"] == 4 and result["ap25"] >= 0.6, result
    assert all(result["per_class"][c]["ap25"] == 1.0 for c in ("box", "cabinet", "table")), result["per_class"]
    # the dataset masks carry the class names, so the run is labelled (labeler 'none' only means no MLLM): a
    # query answers the one chair with its id and centroid from instances.json, and nothing else
    assert sorted(r["label"] for r in doc["instances"]) == ["box", "cabinet", "chair", "table"]
    chair = next(r for r in doc["instances"] if r["label"] == "chair")
    assert main(["query", str(out), "where is the chair", "--no-model"]) == 0
    lines = capsys.readouterr().out.splitlines()
    x, y, z = chair["centroid"]
    assert lines == [f"id {chair['id']:<5} {'chair':<20} score 1.000  at ({x:.2f}, {y:.2f}, {z:.2f})"], lines
    assert main(["query", str(out), "sofa", "--no-model"]) == 1  # no such class: exit 1, and why
    n = len(doc["instances"])
    assert capsys.readouterr().out == f"no instance matches 'sofa' ({n} instances, 0 unlabelled)\n"


def test_bench_times_each_stage_run_one_after_another(scene_dir, capsys, monkeypatch):
    """bench runs the stages sequentially even where the config overlaps them (their times are then their costs),
    and says so; --overlap keeps the overlap. Both print a row per stage with 16 keyframes."""
    import ros2_opentrack.cli as cli_module

    seen = []
    real = cli_module.run_pipeline
    monkeypatch.setattr(
        cli_module,
        "run_pipeline",
        lambda cfg, *a, **k: seen.append(cfg.perception.overlap_stages) or real(cfg, *a, **k),
    )
    for extra, overlapped in (([], False), (["--overlap"], True)):
        assert main(["bench", str(scene_dir), "--masks", "dataset", *SETS, *extra]) == 0
        text = capsys.readouterr().out
        assert ("overlapped" in text) == overlapped and ("one after another" in text) != overlapped
        rows = {line.split()[0]: line.split()[1:] for line in text.splitlines() if line.split()}
        assert rows["lift"][2] == rows["track"][2] == rows["total"][2] == "16"  # calls: one per keyframe
        assert 0 < float(rows["lift"][0]) < float(rows["total"][0])
    assert seen == [False, True]


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
    demo = subprocess.run(
        [env_py, "-m", "ros2_opentrack", "demo", "--frames", "24", "--objects", "5"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert demo.returncode == 0, demo.stderr
    line = [ln for ln in demo.stdout.splitlines() if ln.startswith("result")][0]
    found = int(line.split()[1])
    ap50 = float(line.split("AP50")[1].split()[0])
    ap25 = float(line.split("AP25")[1].split()[0])
    # seed 0, 24 frames, 5 objects, perturbed masks: the tracker gives 8 instances, AP50 0.78, AP25 1.00 (seeds 1-3:
    # AP50 0.74-0.98). Broken association falls well below: never matching (tau_match 1) AP50 0.60 / AP25 0.75,
    # matching every pair (tau_match 0) AP50 0.60, voxel IoU only (alpha 0) AP50 0.53, 10 fragments.
    assert "for 5 objects" in line and 5 <= found <= 9, line
    assert ap50 >= 0.7 and ap25 >= 0.9, line
    bad = subprocess.run(
        [env_py, "-m", "ros2_opentrack", "eval", "/nonexistent", "--gt", "/nonexistent"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
