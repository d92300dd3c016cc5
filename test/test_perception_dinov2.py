"""DINOv2 mask descriptors through the real code path with a tiny random Dinov2Config (no weights)."""

import logging

import numpy as np
import pytest
import torch

from ros2_opentrack.config import FeatureConfig, PerceptionConfig
from ros2_opentrack.errors import BackendUnavailable, InputError
from ros2_opentrack.perception import build, tensorrt_engine
from ros2_opentrack.perception.dinov2 import IMAGENET_MEAN, IMAGENET_STD, Dinov2Features, grid_for, pool

transformers = pytest.importorskip("transformers")


def extract(features, rgb, masks):
    """FeatureExtractor.extract with placeholder boxes: dinov2 ignores them."""
    return features.extract(rgb, masks, np.zeros((len(masks), 4), np.float32))


def tiny_model():
    torch.manual_seed(0)
    cfg = transformers.Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, patch_size=14, image_size=56
    )
    return transformers.Dinov2Model(cfg).eval()


@pytest.fixture(scope="module")
def features():
    return Dinov2Features(tiny_model(), image_size=56)


@pytest.fixture
def rgb():
    return np.random.default_rng(1).integers(0, 256, (56, 70, 3), dtype=np.uint8)


def test_patch_tokens_are_the_models_on_imagenet_normalised_pixels(features, rgb):
    # 56x70 with image_size 56 is not resized: the input is plain ImageNet normalisation of the image
    pixels = (rgb.astype(np.float32) / 255.0 - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    x = torch.from_numpy(pixels).permute(2, 0, 1)[None]
    with torch.no_grad():
        expected = features.model(pixel_values=x).last_hidden_state[0, 1:].numpy()
    tokens = features.patch_tokens(rgb).numpy()
    assert tokens.shape == (4 * 5, 32)
    np.testing.assert_allclose(tokens, expected, atol=1e-4)


def test_mask_pooling_is_the_area_weighted_mean_of_patch_tokens(features, rgb):
    tokens = features.patch_tokens(rgb).numpy()  # (20, 32), grid 4 x 5, patches 14x14 pixels here
    masks = np.zeros((2, 56, 70), bool)
    masks[0, 0:14, 0:7] = True  # half of patch (0, 0)
    masks[0, 14:28, 14:28] = True  # all of patch (1, 1) -> index 6
    masks[1, 42:56, 56:70] = True  # exactly the last patch
    out = extract(features, rgb, masks)
    expected0 = (0.5 * tokens[0] + 1.0 * tokens[6]) / 1.5
    expected0 /= np.linalg.norm(expected0)
    expected1 = tokens[19] / np.linalg.norm(tokens[19])
    assert out.shape == (2, 32) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], expected0, atol=1e-5)
    np.testing.assert_allclose(out[1], expected1, atol=1e-5)


def test_empty_mask_falls_back_to_the_image_mean_never_nan(features, rgb):
    tokens = features.patch_tokens(rgb).numpy()
    masks = np.zeros((2, 56, 70), bool)
    masks[1, 5:20, 5:20] = True
    before = features.empty_masks
    out = extract(features, rgb, masks)
    mean = tokens.mean(axis=0)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out[0], mean / np.linalg.norm(mean), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert features.empty_masks == before + 1


def test_pool_of_zero_tokens_is_zero_not_nan():
    out = pool(torch.zeros(4, 3), torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 0]]))
    assert torch.isfinite(out).all() and float(out.abs().sum()) == 0.0


def test_grid_keeps_aspect_with_sides_multiple_of_patch(features):
    assert grid_for((480, 640), 448, 14) == (32, 43)  # 448 x 597.3 -> 32 x 43 patches
    assert grid_for((640, 480), 448, 14) == (43, 32)
    rgb = np.zeros((60, 80, 3), np.uint8)
    assert tuple(features.preprocess(rgb).shape) == (1, 3, 56, 70)
    assert extract(features, rgb, np.ones((1, 60, 80), bool)).shape == (1, 32)


def test_no_masks_gives_empty_array(features, rgb):
    out = extract(features, rgb, np.zeros((0, 56, 70), bool))
    assert out.shape == (0, 32) and out.dtype == np.float32


@pytest.mark.parametrize(
    "bad",
    [
        None,
        np.zeros((56, 70), np.uint8),
        np.zeros((56, 70, 3), np.float32),
        np.zeros((0, 70, 3), np.uint8),
        "not an image",
    ],
)
def test_bad_images_raise_input_error(features, bad):
    with pytest.raises(InputError, match="rgb"):
        extract(features, bad, np.zeros((1, 56, 70), bool))


def test_masks_of_another_size_raise_input_error(features, rgb):
    with pytest.raises(InputError, match=r"\(N, 56, 70\)"):
        extract(features, rgb, np.zeros((2, 30, 30), bool))


def test_from_config_offline_without_weights_names_id_and_place(tmp_path):
    pcfg = PerceptionConfig(weights_dir=str(tmp_path), offline=True)
    with pytest.raises(BackendUnavailable) as err:
        build("features", FeatureConfig(name="dinov2", model="base", device="cpu"), pcfg)
    text = str(err.value)
    assert "facebook/dinov2-base" in text and str(tmp_path) in text and "offline" in text


def test_from_config_loads_a_saved_folder_from_weights_dir(tmp_path, rgb):
    tiny_model().save_pretrained(tmp_path / "tiny-dinov2")
    pcfg = PerceptionConfig(weights_dir=str(tmp_path), offline=True)
    feats = build("features", FeatureConfig(name="dinov2", model="tiny-dinov2", image_size=56, device="cpu"), pcfg)
    reference = Dinov2Features(tiny_model(), image_size=56)
    masks = np.ones((1, 56, 70), bool)
    np.testing.assert_allclose(extract(feats, rgb, masks), extract(reference, rgb, masks), atol=1e-5)


def test_tensorrt_requested_without_tensorrt_falls_back_once(rgb, caplog):
    if tensorrt_engine.tensorrt_status()[0]:
        pytest.skip("TensorRT is usable here: the fallback path is not taken")
    tensorrt_engine._warned.clear()
    with caplog.at_level(logging.WARNING, logger="ros2_opentrack.perception.tensorrt_engine"):
        a = Dinov2Features(tiny_model(), image_size=56, tensorrt=True)
        b = Dinov2Features(tiny_model(), image_size=56, tensorrt=True)
        out = extract(a, rgb, np.ones((1, 56, 70), bool))
        extract(b, rgb, np.ones((1, 56, 70), bool))
    assert a.backend == "torch" and np.isfinite(out).all()
    messages = [r.getMessage() for r in caplog.records if "features.tensorrt" in r.getMessage()]
    assert len(messages) == 1 and "PyTorch" in messages[0]
