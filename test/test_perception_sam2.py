"""SAM2 segmenter through the real sam2 model (packaged tiny config, random weights, 256 px input for speed)."""

import numpy as np
import pytest
import torch

from ros2_opentrack.config import PerceptionConfig, SegmenterConfig
from ros2_opentrack.errors import BackendUnavailable, ConfigError, InputError
from ros2_opentrack.perception import build
from ros2_opentrack.perception.sam2_segmenter import IMAGENET_MEAN, IMAGENET_STD, Sam2Segmenter, parse_model

pytest.importorskip("sam2")


@pytest.fixture(scope="module")
def seg():
    torch.manual_seed(0)
    return Sam2Segmenter.build("tiny", image_size=256)


@pytest.fixture(scope="module")
def rgb():
    return np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def batch(seg, rgb):
    """One batched call over boxes of every kind, with the decoder's own IoU predictions captured."""
    boxes = np.array(
        [
            [10, 10, 40, 40],  # inside
            [-10, -5, 20, 30],  # partly outside -> clipped to the next box
            [0, 0, 20, 30],
            [100, 100, 120, 120],  # fully outside -> degenerate
            [5, 5, 5, 30],  # zero width -> degenerate
            [np.nan, 0, 10, 10],
        ],
        np.float32,
    )  # not finite -> degenerate
    captured = []
    hook = seg.model.sam_mask_decoder.register_forward_hook(lambda m, i, out: captured.append(out[1].detach()))
    before = seg.degenerate_boxes
    try:
        masks, ious = seg.segment(rgb, boxes)
    finally:
        hook.remove()
    return boxes, masks, ious, captured, seg.degenerate_boxes - before


def test_one_batched_decoder_call_for_all_boxes(batch):
    boxes, masks, ious, captured, _ = batch
    assert masks.shape == (6, 60, 80) and masks.dtype == bool and ious.shape == (6,)
    assert len(captured) == 1 and captured[0].shape == (3, 3)  # 3 valid boxes x 3 candidate masks


def test_multimask_keeps_the_candidate_with_best_predicted_iou(batch):
    _, _, ious, captured, _ = batch
    np.testing.assert_allclose(ious[:3], captured[0].max(dim=1).values.numpy(), atol=1e-6)


def test_box_outside_the_image_is_clipped(batch):
    _, masks, ious, _, _ = batch
    assert np.array_equal(masks[1], masks[2]) and ious[1] == pytest.approx(ious[2], abs=1e-6)


def test_degenerate_boxes_get_empty_masks_and_are_counted(batch):
    _, masks, ious, _, dropped = batch
    assert dropped == 3
    assert not masks[3:].any() and (ious[3:] == 0).all()


def test_batched_result_equals_single_box_call(seg, rgb, batch):
    _, masks, ious, _, _ = batch
    single, single_iou = seg.segment(rgb, np.array([[10, 10, 40, 40]], np.float32))
    assert np.array_equal(single[0], masks[0])
    assert single_iou[0] == pytest.approx(ious[0], abs=1e-5)


def test_preprocessing_is_imagenet_normalisation_at_model_size(seg):
    img = np.random.default_rng(3).integers(0, 256, (256, 256, 3), dtype=np.uint8)  # already model size
    expected = (img / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    got = seg.preprocess(img)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert tuple(seg.preprocess(np.zeros((60, 80, 3), np.uint8)).shape) == (1, 3, 256, 256)


def test_zero_boxes_give_empty_results(seg, rgb):
    masks, ious = seg.segment(rgb, np.zeros((0, 4), np.float32))
    assert masks.shape == (0, 60, 80) and ious.shape == (0,)


def test_bad_inputs_raise_input_error(seg, rgb):
    with pytest.raises(InputError, match=r"\(N, 4\)"):
        seg.segment(rgb, np.zeros((2, 3), np.float32))
    with pytest.raises(InputError, match="uint8"):
        seg.segment(rgb.astype(np.float32), np.zeros((1, 4), np.float32))
    with pytest.raises(InputError, match="None"):
        seg.segment(None, np.zeros((1, 4), np.float32))


@pytest.mark.parametrize(
    "ref, size, config, ckpt",
    [
        ("large", "large", "configs/sam2.1/sam2.1_hiera_l.yaml", "sam2.1_hiera_large.pt"),
        ("sam2.1_hiera_large", "large", "configs/sam2.1/sam2.1_hiera_l.yaml", "sam2.1_hiera_large.pt"),
        ("sam2.1_hiera_b+", "base_plus", "configs/sam2.1/sam2.1_hiera_b+.yaml", "sam2.1_hiera_base_plus.pt"),
        ("small", "small", "configs/sam2.1/sam2.1_hiera_s.yaml", "sam2.1_hiera_small.pt"),
        ("/w/sam2.1_hiera_tiny.pt", "tiny", "configs/sam2.1/sam2.1_hiera_t.yaml", "/w/sam2.1_hiera_tiny.pt"),
    ],
)
def test_model_references(ref, size, config, ckpt):
    spec = parse_model(ref)
    assert (spec.size, spec.config, spec.checkpoint) == (size, config, ckpt)


def test_unknown_model_reference_is_a_config_error():
    with pytest.raises(ConfigError, match="segmenter.model"):
        parse_model("huge")


def test_from_config_offline_without_checkpoint_names_file_and_place(tmp_path):
    pcfg = PerceptionConfig(weights_dir=str(tmp_path), offline=True)
    with pytest.raises(BackendUnavailable) as err:
        build("segmenter", SegmenterConfig(model="tiny", device="cpu"), pcfg)
    assert "sam2.1_hiera_tiny.pt" in str(err.value) and str(tmp_path) in str(err.value)


def test_from_config_loads_checkpoint_from_weights_dir(tmp_path, seg):
    state = {k: v.half() if v.is_floating_point() else v for k, v in seg.model.state_dict().items()}
    torch.save({"model": state}, tmp_path / "sam2.1_hiera_tiny.pt")
    pcfg = PerceptionConfig(weights_dir=str(tmp_path), offline=True)
    loaded = build("segmenter", SegmenterConfig(model="sam2.1_hiera_tiny", device="cpu"), pcfg)
    name = "sam_mask_decoder.iou_prediction_head.layers.0.weight"
    assert loaded.image_size == 1024  # the packaged config, not the test's 256
    assert torch.equal(loaded.model.state_dict()[name], state[name].float())
