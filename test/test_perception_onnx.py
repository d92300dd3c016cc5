"""ONNX Runtime backends: the real pretrained NanoDet-m and EfficientNet-Lite0 of ../shared/models on a real
7-Scenes frame (known answers from shared/models/README.md), the raw YOLOv8 head format through a tiny exported
torch head, vocabulary mapping, and the execution-provider choice."""

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from ros2_opentrack.config import OpenTrackConfig  # noqa: E402
from ros2_opentrack.errors import ConfigError  # noqa: E402
from ros2_opentrack.perception import onnx_runtime as R  # noqa: E402
from ros2_opentrack.perception.onnx_detector import OnnxDetector, letterbox, map_vocabulary  # noqa: E402
from ros2_opentrack.perception.registry import build  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"
MODELS = SHARED / "models"
FRAME0 = SHARED / "data" / "7scenes_redkitchen" / "frame-000000.color.jpg"
DETECTOR = MODELS / "detector_nanodet_m_coco.onnx"
FEATURES = MODELS / "features_efficientnet_lite0.onnx"
# shared/models/README.md, letterbox mode / cosine table
CUP = (366, 163, 401, 202)
CHAIR_RIGHT = (419, 144, 545, 213)
CHAIR_LEFT = (173, 130, 304, 314)
TABLE = (227, 165, 640, 460)


def need(*paths: Path) -> None:
    for p in paths:
        if not p.is_file():
            pytest.skip(f"shared data not found: {p}")


def frame0() -> np.ndarray:
    import cv2

    return np.ascontiguousarray(cv2.imread(str(FRAME0))[..., ::-1])


def perception(**sets):
    cfg = OpenTrackConfig()
    for dotted, value in sets.items():
        obj = cfg.perception
        *parents, leaf = dotted.split("__")
        for part in parents:
            obj = getattr(obj, part)
        setattr(obj, leaf, value)
    return cfg.perception


@pytest.fixture(scope="module")
def matcher():
    from ros2_opentrack.config import TextMatcherConfig

    return build("text_matcher", TextMatcherConfig())


@pytest.fixture(scope="module")
def nanodet():
    need(DETECTOR, FRAME0)
    p = perception(
        detector__name="onnx",
        detector__model=str(DETECTOR),
        detector__device="cpu",
        detector__vocabulary=["chair", "table", "mug", "bottle"],
    )
    return build("detector", p.detector, p)


def iou(a, b) -> float:
    lt = np.maximum(a[:2], b[:2])
    rb = np.minimum(a[2:], b[2:])
    inter = np.prod(np.clip(rb - lt, 0, None))
    area = lambda x: (x[2] - x[0]) * (x[3] - x[1])  # noqa: E731
    return float(inter / (area(a) + area(b) - inter))


# ------------------------------------------------------------------------------------------------ detector
def test_real_detector_finds_the_cup_chairs_and_table_in_vocabulary_words(nanodet):
    det = nanodet.detect(frame0())
    assert isinstance(nanodet, OnnxDetector) and nanodet.format == "end2end"
    labels = list(det.labels)
    assert set(labels) <= {"chair", "table", "mug", "bottle"}  # the user's words, never COCO's
    mugs = [b for b, label in zip(det.boxes, labels) if label == "mug"]
    assert any(np.abs(b - np.array(CUP)).max() <= 4 for b in mugs), mugs  # the cup, called "mug"
    chairs = [b for b, label in zip(det.boxes, labels) if label == "chair"]
    assert len(chairs) >= 2
    assert max(iou(b, np.array(CHAIR_LEFT, float)) for b in chairs) > 0.8
    assert max(iou(b, np.array(CHAIR_RIGHT, float)) for b in chairs) > 0.8
    tables = [b for b, label in zip(det.boxes, labels) if label == "table"]
    assert max(iou(b, np.array(TABLE, float)) for b in tables) > 0.8  # "dining table"
    assert np.all(np.diff(det.scores[:5]) <= 1e-6) or len(det) < 2
    assert det.boxes.dtype == np.float32 and (det.boxes[:, 2:] <= [640, 480]).all()


def test_detector_honours_threshold_max_detections_and_ignores_unmapped_classes(nanodet):
    rgb = frame0()
    nanodet.set_vocabulary(["chair"])
    try:
        only = nanodet.detect(rgb)
        assert len(only) and set(only.labels) == {"chair"}
        nanodet.score_threshold, nanodet.max_detections = 0.5, 2
        few = nanodet.detect(rgb)
        assert 1 <= len(few) <= 2 and (few.scores >= 0.5).all()
    finally:
        nanodet.score_threshold, nanodet.max_detections = 0.1, 50
        nanodet.set_vocabulary(["chair", "table", "mug", "bottle"])


def test_vocabulary_mapping_uses_exact_names_words_and_the_text_matcher(matcher):
    coco = ["person", "chair", "couch", "dining table", "cup", "bottle", "tv", "potted plant", "bowl", "toilet"]
    to_word, report = map_vocabulary(
        ["mug", "chair", "table", "sofa", "plant", "cup", "trash can"], coco, matcher, 0.62
    )
    assert report["mug"][0] == "cup" and report["chair"][0] == "chair"
    assert report["table"][0] == "dining table" and report["sofa"][0] == "couch"
    assert report["plant"][0] == "potted plant" and report["trash can"][0] is None
    assert to_word[coco.index("cup")] == "cup"  # an exact name beats a similar word on the same class
    assert coco.index("person") not in to_word  # unmapped model classes are ignored
    to_word, _ = map_vocabulary(["mug"], coco, matcher, 0.62)
    assert to_word == {coco.index("cup"): "mug"}


def test_class_names_from_json_ultralytics_dict_and_sidecar(tmp_path):
    assert R.parse_names('["a", "b"]') == ["a", "b"]
    assert R.parse_names("{0: 'person', 1: 'bicycle', 10: 'z', 2: 'car'}") == ["person", "bicycle", "car", "z"]
    assert R.parse_names("not names") is None
    model = tmp_path / "m.onnx"
    (tmp_path / "m.classes.txt").write_text("cup\nchair\n")
    assert R.sidecar_names(model) == ["cup", "chair"]


def test_letterbox_pads_centred_and_keeps_aspect():
    img = np.full((48, 96, 3), 7, np.uint8)
    out, scale, (px, py) = letterbox(img, (64, 64))
    assert out.shape == (64, 64, 3) and scale == pytest.approx(64 / 96)
    assert (px, py) == (0.0, 16.0)
    assert (out[:16] == 114).all() and (out[16:48] == 7).all() and (out[48:] == 114).all()


class _TinyYoloHead:
    """A random-weight conv head exported to ONNX in the raw YOLOv8 layout [1, 4 + nc, anchors]."""

    NAMES = ["cup", "chair", "person"]

    @classmethod
    def export(cls, path: Path, size: int = 64, with_names: bool = True):
        import onnx
        import torch

        torch.manual_seed(0)

        class Head(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = torch.nn.Conv2d(3, 4 + len(cls.NAMES), 8, stride=8)

            def forward(self, x):
                y = self.conv(x * 4.0 - 2.0).flatten(2)  # (1, 4 + nc, A)
                boxes = torch.sigmoid(y[:, :4]) * torch.tensor([size, size, size / 2, size / 2]).view(1, 4, 1)
                return torch.cat([boxes, torch.sigmoid(y[:, 4:] * 3.0)], dim=1)

        head = Head().eval()
        torch.onnx.export(
            head,
            (torch.rand(1, 3, size, size),),
            str(path),
            input_names=["images"],
            output_names=["output0"],
            dynamo=False,
            opset_version=17,
        )
        model = onnx.load(str(path))
        if with_names:
            entry = model.metadata_props.add()
            entry.key, entry.value = "names", str(dict(enumerate(cls.NAMES)))  # ultralytics' dict literal
        onnx.save(model, str(path))
        return head


def test_raw_yolo_head_is_decoded_letterbox_undone_and_suppressed_per_class(tmp_path):
    import torch

    from ros2_opentrack.perception.owlv2 import nms

    path = tmp_path / "tiny_yolo.onnx"
    head = _TinyYoloHead.export(path)
    p = perception(
        detector__name="onnx",
        detector__model=str(path),
        detector__device="cpu",
        detector__vocabulary=["cup", "chair"],
        detector__score_threshold=0.3,
    )
    det = build("detector", p.detector, p)
    assert det.format == "yolo" and det.class_names == _TinyYoloHead.NAMES
    rgb = np.random.default_rng(1).integers(0, 255, (48, 96, 3), np.uint8)
    got = det.detect(rgb)
    # reference: the torch head on the same letterboxed input, decoded by hand
    x, scale, (px, py) = det.preprocess(rgb)
    with torch.no_grad():
        out = head(torch.from_numpy(x))[0].numpy()
    cls = out[4:].argmax(0)
    score = out[4:].max(0)
    cx, cy, w, h = out[:4]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
    boxes = np.clip((boxes - [px, py, px, py]) / scale, 0, [96, 48, 96, 48]).astype(np.float32)
    ok = (score >= 0.3) & (cls < 2) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    keep = nms(boxes[ok], score[ok], 0.5, labels=cls[ok], max_keep=50)
    assert len(got) == len(keep) > 0
    np.testing.assert_allclose(got.boxes, boxes[ok][keep], atol=1e-3)
    np.testing.assert_allclose(got.scores, score[ok][keep], atol=1e-5)
    assert got.labels == [["cup", "chair"][c] for c in cls[ok][keep]]


def test_detector_without_class_names_is_a_clear_error(tmp_path):
    from ros2_opentrack.errors import BackendUnavailable

    path = tmp_path / "nameless.onnx"
    _TinyYoloHead.export(path, with_names=False)
    p = perception(detector__name="onnx", detector__model=str(path), detector__device="cpu")
    with pytest.raises(BackendUnavailable, match="classes.txt"):
        build("detector", p.detector, p)
    p = perception(detector__name="onnx", detector__model=str(tmp_path / "absent.onnx"))
    with pytest.raises(Exception, match="absent.onnx"):
        build("detector", p.detector, p)


# ------------------------------------------------------------------------------------------------ features
@pytest.fixture(scope="module")
def efflite():
    need(FEATURES, FRAME0)
    p = perception(
        features__name="onnx", features__model=str(FEATURES), features__device="cpu", features__image_size=480
    )
    return build("features", p.features, p)


def box_mask(box, hw=(480, 640)):
    m = np.zeros(hw, bool)
    m[box[1] : box[3], box[0] : box[2]] = True
    return m


def test_real_features_separate_the_mug_from_the_chairs(efflite):
    rgb = frame0()
    masks = [box_mask(b) for b in (CUP, CHAIR_RIGHT, CHAIR_LEFT, TABLE)]
    f = efflite.extract(rgb, masks, np.array([CUP, CHAIR_RIGHT, CHAIR_LEFT, TABLE], np.float32))
    assert f.shape == (4, 1280) and f.dtype == np.float32 and efflite.stride == 32
    np.testing.assert_allclose(np.linalg.norm(f, axis=1), 1.0, atol=1e-5)
    cos = f @ f.T
    assert cos[0, 1] < cos[1, 2] and cos[0, 2] < cos[1, 2]  # mug-chair further than chair-chair
    # shared/models/README.md cosine table (same box masks on the 15x20 grid)
    np.testing.assert_allclose([cos[0, 1], cos[1, 3], cos[2, 3], cos[0, 2]], [0.37, 0.69, 0.73, 0.16], atol=0.02)
    assert np.allclose(efflite.extract(rgb, np.stack(masks)), f, atol=1e-6)  # (N, H, W) array, no boxes


def test_features_pool_exactly_like_adaptive_avg_pool():
    import torch

    from ros2_opentrack.perception.onnx_features import mask_weights, pool

    rng = np.random.default_rng(0)
    masks = rng.random((4, 97, 131)) > 0.6
    masks[2] = False
    masks[3, 10:20, 30:50] = True
    for grid in [(4, 5), (7, 9), (97, 131), (13, 3)]:
        ref = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(masks)[:, None].float(), grid).flatten(1)
        np.testing.assert_allclose(mask_weights(masks, grid), ref.numpy(), atol=1e-6)
    tokens = rng.standard_normal((20, 8)).astype(np.float32)
    out, empty = pool(tokens, mask_weights(masks, (4, 5)))
    assert empty == 1 and np.isfinite(out).all()
    mean = tokens.mean(0)
    np.testing.assert_allclose(out[2], mean / np.linalg.norm(mean), atol=1e-6)  # empty mask -> image mean


# ------------------------------------------------------------------------------------------------ providers
def test_provider_choice_and_single_line_fallback(tmp_path):
    p = perception(weights_dir=str(tmp_path))
    prov, note = R.provider_list("tensorrt", p, half=True, available=[R.TRT, R.CUDA, R.CPU])
    assert prov[0][0] == R.TRT and prov[0][1]["trt_engine_cache_enable"] is True
    assert prov[0][1]["trt_engine_cache_path"] == str(tmp_path / "onnx_trt_engines")
    assert prov[0][1]["trt_fp16_enable"] is True and prov[1][0] == R.CUDA and prov[2] == R.CPU and note is None
    prov, note = R.provider_list("cuda:1", p, available=[R.CUDA, R.CPU])
    assert prov == [(R.CUDA, {"device_id": 1}), R.CPU] and note is None
    prov, note = R.provider_list("auto", p, available=[R.CPU])
    assert prov == [R.CPU] and note is None  # auto without a GPU is not a fallback
    prov, note = R.provider_list("tensorrt", p, available=[R.CPU], role="detector (onnx)")
    assert prov == [R.CPU] and "TensorrtExecutionProvider" in note and "running on CPUExecutionProvider" in note
    prov, _ = R.provider_list("cuda", p, tensorrt=True, available=[R.TRT, R.CUDA, R.CPU])
    assert prov[0][0] == R.TRT  # tensorrt: true in the role config
    with pytest.raises(ConfigError, match="tensorrt"):
        R.parse_device("tpu")


def test_session_falls_back_to_cpu_with_one_warning(tmp_path, caplog):
    path = tmp_path / "tiny.onnx"
    _TinyYoloHead.export(path)
    with caplog.at_level("WARNING"):
        session = R.make_session(path, "tensorrt", perception(weights_dir=str(tmp_path)), role="detector (onnx)")
    assert session.get_providers()[0] in R.available_providers()
    if R.TRT not in R.available_providers():
        warnings = [r for r in caplog.records if r.levelname == "WARNING"]
        assert len(warnings) == 1 and "lacks" in warnings[0].getMessage()


def test_cpu_profile_loads_and_doctor_lists_the_onnx_providers(tmp_path):
    import io

    from ros2_opentrack.config import load_config
    from ros2_opentrack.perception.doctor import run_doctor

    root = Path(__file__).resolve().parents[1]
    cfg = load_config(root / "config" / "cpu.yaml", {"perception.weights_dir": str(tmp_path)})
    p = cfg.perception
    assert (p.detector.name, p.segmenter.name, p.features.name, p.labeler.name) == ("onnx", "box_depth", "onnx", "none")
    assert OpenTrackConfig().perception.labeler.name == "mllm"  # the default is the paper's whole pipeline
    out = io.StringIO()
    assert run_doctor(cfg, out) == 1  # the model files are named, not found in an empty weights_dir
    text = out.getvalue()
    assert "providers: " in text and "CPU" in text and "detector_nanodet_m_coco.onnx" in text
    need(DETECTOR, FEATURES)
    out = io.StringIO()
    cfg = load_config(root / "config" / "cpu.yaml", {"perception.weights_dir": str(MODELS)})
    assert run_doctor(cfg, out) == 0, out.getvalue()
