"""Export path (perception/onnx_export.py, scripts/export_onnx.py) on tiny random-weight models built offline:
ONNX Runtime equals torch within the stated tolerances, and the exported files load into the onnx backends.

Tolerances (float32, CPU): SAM2 encoder outputs and decoder logits 1e-4 absolute (measured ~3e-6), DINOv2
feature map 1e-4 (measured ~1e-6), pooled descriptors 1e-5."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
torch = pytest.importorskip("torch")

from ros2_opentrack.config import OpenTrackConfig  # noqa: E402
from ros2_opentrack.perception import onnx_export as X  # noqa: E402
from ros2_opentrack.perception.registry import build  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-4
TINY_SAM2 = ["++model.image_size=128", *X.TINY_SAM2_OVERRIDES]  # 128 px input


def tiny_sam2():
    pytest.importorskip("sam2")
    from sam2.build_sam import build_sam2

    torch.manual_seed(0)
    return build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", None, device="cpu", hydra_overrides_extra=TINY_SAM2).eval()


@pytest.fixture(scope="module")
def sam2_pair(tmp_path_factory):
    model = tiny_sam2()
    enc, dec = X.export_sam2(tmp_path_factory.mktemp("sam2") / "tiny", model=model)
    return model, enc, dec


def perception(**role_sets):
    cfg = OpenTrackConfig()
    for role, sets in role_sets.items():
        for k, v in sets.items():
            setattr(getattr(cfg.perception, role), k, v)
    return cfg.perception


def test_sam2_encoder_and_decoder_match_torch(sam2_pair):
    import onnxruntime as ort

    model, enc, dec = sam2_pair
    se = ort.InferenceSession(str(enc), providers=["CPUExecutionProvider"])
    sd = ort.InferenceSession(str(dec), providers=["CPUExecutionProvider"])
    x = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = X.Sam2Encoder.build(model)(x)
    got = se.run(None, {"image": x.numpy()})
    assert [g.shape for g in got] == [(1, 256, 8, 8), (1, 32, 32, 32), (1, 64, 16, 16)]
    for g, r in zip(got, ref):
        assert X.max_abs_diff(g, r) < TOL
    for n in (1, 5):  # the box count is dynamic
        coords = torch.rand(n, 2, 2, generator=torch.Generator().manual_seed(n)) * 64
        coords[:, 1] += 64
        labels = torch.tensor([[2, 3]] * n, dtype=torch.int32)
        with torch.no_grad():
            ref_masks, ref_iou = X.Sam2Decoder.build(model)(*ref, coords, labels)
        masks, iou = sd.run(
            None,
            dict(
                zip(["image_embed", "high_res_feats_0", "high_res_feats_1"], got),
                point_coords=coords.numpy(),
                point_labels=labels.numpy(),
            ),
        )
        assert masks.shape == (n, 3, 32, 32) and iou.shape == (n, 3)
        assert X.max_abs_diff(masks, ref_masks) < TOL and X.max_abs_diff(iou, ref_iou) < TOL


def test_onnx_segmenter_equals_the_torch_sam2_backend(sam2_pair):
    from ros2_opentrack.perception.onnx_segmenter import OnnxSam2Segmenter
    from ros2_opentrack.perception.sam2_segmenter import Sam2Segmenter

    model, enc, _ = sam2_pair
    p = perception(segmenter={"name": "onnx", "model": str(enc), "device": "cpu"})
    seg = build("segmenter", p.segmenter, p)
    assert isinstance(seg, OnnxSam2Segmenter) and seg.image_size == 128
    rgb = np.random.default_rng(0).integers(0, 255, (128, 128, 3), np.uint8)  # encoder size: no resize differences
    boxes = np.array([[10, 20, 70, 90], [40, 40, 120, 110], [5, 5, 5, 60], [0, 0, 128, 128]], np.float32)
    masks, ious = seg.segment(rgb, boxes)
    assert masks.shape == (4, 128, 128) and masks.dtype == bool
    assert not masks[2].any() and ious[2] == 0 and seg.degenerate_boxes == 1  # degenerate box stays aligned
    torch_seg = Sam2Segmenter(model, "cpu", multimask=True)
    ref_masks, ref_iou = torch_seg.segment(rgb, boxes)
    keep = [0, 1, 3]
    np.testing.assert_allclose(ious[keep], ref_iou[keep], atol=TOL)
    with torch.no_grad():
        ref_logits, _ = torch_seg._decode(rgb, boxes[keep])
    assert X.max_abs_diff(seg.logits(rgb, boxes[keep]), ref_logits.numpy()) < 1e-3
    agree = (masks[keep] == ref_masks[keep]).mean()
    assert agree > 0.999
    # a frame of another size goes through the resize
    masks, _ = seg.segment(np.zeros((96, 160, 3), np.uint8), boxes[:2])
    assert masks.shape == (2, 96, 160)


def tiny_dinov2():
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    return Dinov2Model(
        Dinov2Config(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            patch_size=14,
            image_size=56,
        )
    ).eval()


def test_dinov2_export_matches_torch_and_pools_like_the_dinov2_backend(tmp_path):
    import onnxruntime as ort

    from ros2_opentrack.perception.dinov2 import Dinov2Features

    model = tiny_dinov2()
    path = X.export_dinov2(tmp_path / "dinov2_tiny.onnx", model=model, height=56, width=84)
    x = torch.rand(1, 3, 56, 84, generator=torch.Generator().manual_seed(1))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"images": x.numpy()})[0]
    mean = torch.tensor(X.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(X.IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        tokens = model(pixel_values=(x - mean) / std).last_hidden_state[0, 1:]
    assert got.shape == (1, 32, 4, 6)
    assert X.max_abs_diff(got[0].reshape(32, -1).T, tokens) < TOL
    # the exported file in the features backend == the torch DINOv2 backend on the same frame and masks
    p = perception(features={"name": "onnx", "model": str(path), "device": "cpu"})
    onnx_feats = build("features", p.features, p)
    assert onnx_feats.stride == 14 and onnx_feats.dim == 32 and onnx_feats.fixed == (56, 84)
    rgb = np.random.default_rng(2).integers(0, 255, (56, 84, 3), np.uint8)
    masks = np.zeros((3, 56, 84), bool)
    masks[0, 5:30, 10:50] = True
    masks[1, 20:56, 40:84] = True
    masks[2, 0:3, 0:3] = True
    ref = Dinov2Features(model, image_size=56, device="cpu").extract(rgb, masks, np.zeros((len(masks), 4), np.float32))
    got = onnx_feats.extract(rgb, list(masks), np.zeros((3, 4), np.float32))
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_export_script_writes_a_sam2_pair_that_loads(tmp_path):
    pytest.importorskip("sam2")
    out = tmp_path / "cli" / "sam2"
    res = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "export_onnx.py"),
            "sam2",
            "--size",
            "tiny",
            "--random-weights",
            "--image-size",
            "128",
            "--tiny-test-model",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "cli" / "sam2.encoder.onnx").is_file() and (tmp_path / "cli" / "sam2.decoder.onnx").is_file()
    assert "max abs diff" in res.stdout
    p = perception(segmenter={"name": "onnx", "model": str(tmp_path / "cli" / "sam2.encoder.onnx")})
    seg = build("segmenter", p.segmenter, p)
    masks, _ = seg.segment(np.zeros((60, 80, 3), np.uint8), np.array([[10, 10, 50, 40]], np.float32))
    assert masks.shape == (1, 60, 80)


def test_yolo_world_export_needs_ultralytics(tmp_path):
    from ros2_opentrack.perception.yolo_world import import_ultralytics

    module, reason = import_ultralytics()
    if module is None:
        from ros2_opentrack.errors import BackendUnavailable

        with pytest.raises(BackendUnavailable, match="ultralytics"):
            X.export_yolo_world(tmp_path / "yw.onnx", vocabulary=["mug"])
        pytest.skip(f"ultralytics unavailable here: {reason}")
    pytest.skip("YOLO-World export needs the CLIP text weights (a download); run scripts/export_onnx.py online")
