"""The transformers transport through its real code: a tiny random-initialised Qwen3-VL / Qwen2.5-VL saved to a
folder, loaded by MllmLabeler.from_config, prompted with red-boxed images. Random weights answer randomly, so
the tests assert the plumbing: image tokens per image, parsed results, batching, errors as results."""

import re

import numpy as np
import pytest
from support.tiny_qwen_vl import save_tiny_qwen_vl

from ros2_opentrack.config import LabelerConfig, PerceptionConfig
from ros2_opentrack.errors import BackendUnavailable, ConfigError
from ros2_opentrack.perception.base import LabelRequest, LabelResult
from ros2_opentrack.perception.mllm import MllmLabeler, TransformersTransport
from ros2_opentrack.perception.prompts import build_prompt, parse_answer
from ros2_opentrack.perception.registry import build
from ros2_opentrack.views import draw_red_box

CLASSES = ["chair", "table", "sofa", "lamp"]


def boxed_images(n, seed=0, hw=(48, 64)):
    rng = np.random.default_rng(seed)
    return [draw_red_box(rng.integers(0, 256, (*hw, 3), dtype=np.uint8), (8, 6, 40, 30)) for _ in range(n)]


def perception_cfg(weights_dir):
    cfg = PerceptionConfig(weights_dir=str(weights_dir), offline=True)
    cfg.text_matcher.name = "none"
    return cfg


@pytest.fixture(scope="module", params=["qwen3_vl", "qwen2_5_vl"])
def labeler(request, tmp_path_factory):
    folder = save_tiny_qwen_vl(tmp_path_factory.mktemp(request.param), request.param)
    cfg = LabelerConfig(name="mllm", model=str(folder), device="cpu", max_batch=4, max_new_tokens=6)
    return build("labeler", cfg, perception_cfg(folder.parent))


def test_registry_builds_the_transformers_transport(labeler):
    assert isinstance(labeler, MllmLabeler)
    assert isinstance(labeler.transport, TransformersTransport)
    assert labeler.transport.processor.tokenizer.padding_side == "left"


def test_prompt_has_one_image_block_per_image_and_matching_image_tokens(labeler):
    transport = labeler.transport
    requests = [LabelRequest(1, boxed_images(1), CLASSES), LabelRequest(2, boxed_images(3, seed=1), CLASSES)]
    inputs = transport.prepare([build_prompt(r) for r in requests])
    tok = transport.processor.tokenizer
    image_id = tok.convert_tokens_to_ids("<|image_pad|>")
    start_id = tok.convert_tokens_to_ids("<|vision_start|>")
    grids = inputs["image_grid_thw"]
    assert grids.shape == (4, 3)  # 1 + 3 images, in request order
    merge = transport.processor.image_processor.merge_size**2
    per_image = (grids.prod(dim=1) // merge).tolist()
    ids = inputs["input_ids"]
    assert (ids[0] == start_id).sum().item() == 1
    assert (ids[1] == start_id).sum().item() == 3
    assert (ids[0] == image_id).sum().item() == per_image[0]
    assert (ids[1] == image_id).sum().item() == sum(per_image[1:])
    # left padding: the shorter prompt starts with padding, both end with the assistant turn
    assert inputs["attention_mask"][0, 0].item() == 0 and inputs["attention_mask"][:, -1].tolist() == [1, 1]
    text = tok.decode(ids[1][inputs["attention_mask"][1] == 1])
    assert "Return the class name from chair, table, sofa, lamp." in text


def test_label_returns_parsed_results_for_every_request(labeler):
    requests = [
        LabelRequest(11, boxed_images(1), CLASSES),
        LabelRequest(12, boxed_images(2, seed=2), CLASSES),
        LabelRequest(13, boxed_images(1, seed=3), ["open the door", "sit down"], mode="tasks"),
        LabelRequest(14, [], CLASSES),
    ]  # malformed: fails alone
    results = labeler.label(requests)
    assert [r.track_id for r in results] == [11, 12, 13, 14]
    assert all(isinstance(r, LabelResult) for r in results)
    # random weights answer anything: each result must be exactly its own raw answer parsed against its own
    # choices and mode (a result paired with another request's answer, or a parse error dropped, fails)
    for r, q in zip(results[:3], requests[:3]):
        assert isinstance(r.raw, str)
        expected = parse_answer(re.sub(r"<think>.*?</think>", "", r.raw, flags=re.S).strip(), q.mode, q.choices)
        assert (r.label, r.task_indices, r.error) == (expected.label, expected.task_indices, expected.error), r
    assert results[3].label is None and "carries no image" in results[3].error


def test_batched_generation_with_left_padding_equals_one_at_a_time(labeler):
    requests = [LabelRequest(1, boxed_images(1), CLASSES), LabelRequest(2, boxed_images(3, seed=4), CLASSES)]
    batched = labeler.label(requests)
    single = [labeler.label([r])[0] for r in requests]
    assert [r.raw for r in batched] == [r.raw for r in single]


class BrokenTransport:
    def complete(self, prompts):
        raise RuntimeError("CUDA out of memory")


def test_a_failing_transport_becomes_error_results_not_an_exception():
    results = MllmLabeler(BrokenTransport()).label([LabelRequest(5, boxed_images(1), CLASSES)])
    assert results[0].label is None and results[0].error == "RuntimeError: CUDA out of memory"


def test_missing_weights_offline_name_the_model_and_where_to_put_it(tmp_path):
    cfg = LabelerConfig(name="mllm", model="Qwen/Qwen3-VL-4B-Instruct", device="cpu")
    with pytest.raises(BackendUnavailable) as err:
        MllmLabeler.from_config(cfg, perception_cfg(tmp_path))
    message = str(err.value)
    assert "Qwen/Qwen3-VL-4B-Instruct" in message
    assert str(tmp_path / "Qwen3-VL-4B-Instruct") in message


@pytest.mark.parametrize(
    "field, value", [("max_batch", 0), ("timeout_s", 0.0), ("max_new_tokens", 0), ("transport", "grpc")]
)
def test_bad_labeler_parameters_are_config_errors(field, value):
    cfg = LabelerConfig(name="mllm", transport="openai")
    setattr(cfg, field, value)
    with pytest.raises(ConfigError, match=f"perception.labeler.{field}"):
        MllmLabeler.from_config(cfg, PerceptionConfig())
