import textwrap

import pytest

from ros2_opentrack import config as C
from ros2_opentrack.errors import ConfigError


def test_defaults_are_the_papers():
    cfg = C.OpenTrackConfig()
    assert cfg.tracking.alpha == 0.5
    assert cfg.tracking.tau_match == 0.4
    # the paper's tau_vis = 0.1 is a ratio over every frame that sees a point; ours counts only the keyframes
    # where the track has a mask (vote_only_observed), a sharper ratio with its own threshold (issue 9 ablation)
    assert cfg.refine.vote_only_observed and cfg.refine.tau_vis == 0.8
    assert cfg.refine.tau_merge == 0.6
    assert cfg.refine.tau_exp == 0.03
    cfg.validate()


def test_unknown_key_is_rejected_by_dotted_name(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("tracking:\n  alpah: 0.3\n")
    with pytest.raises(ConfigError, match=r"unknown parameter 'tracking\.alpah'"):
        C.load_config(path)


def test_ros_wrapped_and_plain_yaml_give_the_same_tree(tmp_path):
    plain = tmp_path / "plain.yaml"
    plain.write_text("tracking:\n  alpha: 0.7\nrefine:\n  tau_vis: 0.8\n")
    wrapped = tmp_path / "ros.yaml"
    wrapped.write_text(
        textwrap.dedent("""\
        opentrack:
          ros__parameters:
            tracking:
              alpha: 0.7
            refine:
              tau_vis: 0.8
        """)
    )
    a, b = C.load_config(plain), C.load_config(wrapped)
    assert a == b
    assert a.tracking.alpha == 0.7 and a.refine.tau_vis == 0.8
    assert a.tracking.tau_match == 0.4  # untouched keys keep defaults


def test_flat_view_round_trips():
    cfg = C.OpenTrackConfig()
    cfg.tracking.alpha = 0.25
    cfg.perception.detector.vocabulary = ["mug", "chair"]
    flat = C.flatten(cfg)
    assert flat["tracking.alpha"] == 0.25
    assert flat["perception.detector.vocabulary"] == ["mug", "chair"]
    assert C.from_flat(flat) == cfg


def test_flat_overrides_are_coerced_and_checked():
    cfg = C.from_flat(
        {"keyframes.every_n": "3", "dbscan.enabled": "false", "perception.detector.vocabulary": "red mug, chair"}
    )
    assert cfg.keyframes.every_n == 3
    assert cfg.dbscan.enabled is False
    assert cfg.perception.detector.vocabulary == ["red mug", "chair"]
    with pytest.raises(ConfigError, match="unknown parameter 'tracking.nope'"):
        C.from_flat({"tracking.nope": 1})
    with pytest.raises(ConfigError, match="'tracking' is not a group|unknown parameter 'tracking'"):
        C.from_flat({"tracking": 1})
    with pytest.raises(ConfigError, match="'keyframes.every_n' must be an integer"):
        C.from_flat({"keyframes.every_n": 2.5})
    with pytest.raises(ConfigError, match="'tracking.alpha' must be a number"):
        C.from_flat({"tracking.alpha": "high"})


@pytest.mark.parametrize(
    "key,value,expected",
    [
        ("tracking.alpha", 1.5, r"\[0, 1\]"),
        ("tracking.voxel_size_m", 0.0, "> 0"),
        ("masks.source", "camera", "model, dataset or topic"),
        ("lift.depth_max_m", 0.05, "depth_max_m > depth_min_m"),
    ],
)
def test_out_of_range_values_name_the_parameter(key, value, expected):
    with pytest.raises(ConfigError, match=rf"'{key}'.*{expected}"):
        C.from_flat({key: value})


def test_bad_yaml_files_give_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        C.load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("tracking: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        C.load_config(broken)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="mapping at its top level"):
        C.load_config(scalar)
    group = tmp_path / "group.yaml"
    group.write_text("tracking: 3\n")
    with pytest.raises(ConfigError, match="'tracking' must be a mapping"):
        C.load_config(group)


def test_every_parameter_has_a_description():
    docs = C.field_docs()
    flat = C.flatten(C.OpenTrackConfig())
    assert docs["tracking.alpha"].startswith("s = alpha")
    missing = [k for k in flat if k not in docs]
    # every leaf becomes a ROS parameter, and each needs a description
    assert not missing, missing


@pytest.mark.parametrize("name", sorted(C.field_choices()))
def test_an_invalid_choice_is_rejected_naming_the_allowed_values(name):
    allowed = C.field_choices()[name]
    assert C.get_value(C.OpenTrackConfig(), name) in allowed
    expected = C.one_of(allowed)
    with pytest.raises(ConfigError, match=rf"'{name}' = 'bogus': expected {expected}"):
        C.from_flat({name: "bogus"})  # rejected while the tree is built
    cfg = C.OpenTrackConfig()
    group, leaf = name.rsplit(".", 1)
    setattr(C.get_value(cfg, group), leaf, "bogus")
    with pytest.raises(ConfigError, match=rf"'{name}' = 'bogus': expected {expected}"):
        cfg.validate()  # and when set on the object directly


def test_choices_are_the_constants_the_code_branches_on():
    from ros2_opentrack import lifting
    from ros2_opentrack.perception import prompts

    choices = C.field_choices()
    assert choices["dbscan.backend"] == C.DBSCAN_BACKENDS is lifting.DBSCAN_BACKENDS
    assert choices["perception.labeler.mode"] == C.LABEL_MODES is prompts.MODES
    assert choices["perception.labeler.transport"] == C.LABELER_TRANSPORTS
    assert choices["masks.source"] == C.MASK_SOURCES and choices["tracking.association"] == C.ASSOCIATIONS


def test_field_docs_come_from_field_metadata_not_source(monkeypatch):
    import inspect

    def no_source(obj):
        raise OSError("no .py sources in this install")

    monkeypatch.setattr(inspect, "getsource", no_source)
    docs = C.field_docs()
    assert set(docs) == set(C.flatten(C.OpenTrackConfig()))  # every leaf
    assert all(docs.values())
    # a description written over two source lines comes back whole
    assert docs["tracking.min_visible_fraction"] == (
        "a track this much in view counts as seen: if missed it ages, "
        "and it cannot take an observation it does not overlap"
    )


def test_param_copies_a_list_default():
    a, b = C.DetectorConfig(), C.DetectorConfig()
    a.vocabulary.append("robot")
    assert "robot" not in b.vocabulary and b.vocabulary == list(C.DEFAULT_VOCABULARY)
