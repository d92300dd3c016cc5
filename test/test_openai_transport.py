"""The openai transport against a chat-completions server on 127.0.0.1 started by the test. The main server
answers through the tiny Qwen-VL (transformers transport), so the request is decoded exactly as a real server
would: K JPEG images with the red box, the prompt text, the model name and the API key header."""

import re
import threading

import numpy as np
import pytest
from support.chat_server import ChatServer
from support.tiny_qwen_vl import save_tiny_qwen_vl

from ros2_opentrack.config import LabelerConfig, PerceptionConfig
from ros2_opentrack.errors import ConfigError
from ros2_opentrack.perception.base import LabelRequest
from ros2_opentrack.perception.mllm import MllmLabeler, OpenAITransport, TransformersTransport
from ros2_opentrack.perception.prompts import Prompt, build_prompt_text, parse_answer
from ros2_opentrack.views import draw_red_box

CLASSES = ["chair", "table", "sofa"]
BOX = (10, 8, 50, 40)  # x0, y0, x1, y1; outline 3 px inside
KEY_ENV = "OPENTRACK_TEST_MLLM_KEY"


def boxed(seed):
    rng = np.random.default_rng(seed)
    gray = np.full((48, 64, 3), 0, np.uint8) + rng.integers(0, 60, (48, 64, 1), dtype=np.uint8)  # dark, no red
    return draw_red_box(gray, BOX, thickness=3)


def red_outline_present(image):
    r, g, b = (image[..., i].astype(int) for i in range(3))
    red = (r > 180) & (g < 80) & (b < 80)
    x0, y0, x1, y1 = BOX
    return (
        red[y0 + 1, x0 + 4 : x1 - 4].mean() > 0.9
        and red[y1 - 2, x0 + 4 : x1 - 4].mean() > 0.9
        and red[y0 + 4 : y1 - 4, x0 + 1].mean() > 0.9
        and red[y0 + 4 : y1 - 4, x1 - 2].mean() > 0.9
        and red[20:28, 24:36].mean() == 0.0
    )  # the inside is not red


def labeler_cfg(endpoint, **kw):
    return LabelerConfig(
        name="mllm", transport="openai", endpoint=endpoint, model="tiny-qwen-vl", api_key_env=KEY_ENV, **kw
    )


def no_matcher():
    cfg = PerceptionConfig()
    cfg.text_matcher.name = "none"
    return cfg


@pytest.fixture(scope="module")
def tiny_transport(tmp_path_factory):
    folder = save_tiny_qwen_vl(tmp_path_factory.mktemp("qwen3_vl"), "qwen3_vl")
    return TransformersTransport.from_pretrained(str(folder), PerceptionConfig(offline=True), "cpu", max_new_tokens=6)


def test_requests_carry_images_prompt_model_and_key_and_answers_are_parsed(tiny_transport, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-test-123")
    answers = {}

    def answer_with_tiny_qwen(received):
        text = tiny_transport.complete([Prompt(received.text, received.images)])[0]
        answers[received.text, len(received.images)] = text
        return text

    requests = [
        LabelRequest(1, [boxed(0)], CLASSES),
        LabelRequest(2, [boxed(1), boxed(2), boxed(3)], CLASSES),
        LabelRequest(3, [boxed(4)], ["open the door", "sit down"], mode="tasks"),
    ]
    with ChatServer(answer_with_tiny_qwen) as server:
        labeler = MllmLabeler.from_config(labeler_cfg(server.endpoint, max_batch=2, timeout_s=20), no_matcher())
        results = labeler.label(requests)
    assert [r.track_id for r in results] == [1, 2, 3]
    assert len(server.received) == 3
    by_count = {len(r.images): r for r in server.received}
    assert sorted(by_count) == [1, 3]
    for received in server.received:
        assert received.path == "/v1/chat/completions"
        assert received.body["model"] == "tiny-qwen-vl"
        assert received.headers["authorization"] == "Bearer sk-test-123"
        assert all(image.shape == (48, 64, 3) and red_outline_present(image) for image in received.images)
    texts = sorted(r.text for r in server.received)
    assert texts == sorted(
        [build_prompt_text("closed", CLASSES)] * 2 + [build_prompt_text("tasks", ["open the door", "sit down"])]
    )
    for result, request in zip(results, requests):
        assert result.raw == answers[build_prompt_text(request.mode, request.choices), len(request.images)]
        expected = parse_answer(
            re.sub(r"<think>.*?</think>", "", result.raw, flags=re.S).strip(), request.mode, request.choices
        )  # the server's own answer, parsed against this request's choices
        assert (result.label, result.task_indices, result.error) == (
            expected.label,
            expected.task_indices,
            expected.error,
        ), result


def test_key_is_read_from_the_named_env_var_at_request_time_and_never_stored(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with ChatServer(lambda received: "Chair.") as server:
        labeler = MllmLabeler.from_config(labeler_cfg(server.endpoint), no_matcher())
        first = labeler.label([LabelRequest(1, [boxed(0)], CLASSES)])[0]
        monkeypatch.setenv(KEY_ENV, "sk-later")
        second = labeler.label([LabelRequest(2, [boxed(0)], CLASSES)])[0]
    assert "authorization" not in server.received[0].headers
    assert server.received[1].headers["authorization"] == "Bearer sk-later"
    assert "sk-later" not in repr(vars(labeler.transport))
    assert (first.label, first.error, second.label) == ("chair", None, "chair")


def test_a_server_slower_than_the_timeout_gives_an_error_quickly():
    release = threading.Event()

    def slow(received):
        release.wait(10.0)
        return "chair"

    with ChatServer(slow) as server:
        labeler = MllmLabeler.from_config(labeler_cfg(server.endpoint, timeout_s=0.5, max_batch=4), no_matcher())
        results = labeler.label([LabelRequest(i, [boxed(i)], CLASSES) for i in range(3)])
        release.set()
    assert all(r.label is None and "within 0.5 s" in r.error for r in results)


def test_a_batch_is_sent_concurrently():
    barrier = threading.Barrier(3, timeout=10.0)  # passes only when three requests are in flight together

    def wait_for_all(received):
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            return 503, "requests arrived one at a time"
        return "sofa"

    with ChatServer(wait_for_all) as server:
        labeler = MllmLabeler.from_config(labeler_cfg(server.endpoint, timeout_s=20, max_batch=3), no_matcher())
        results = labeler.label([LabelRequest(i, [boxed(i)], CLASSES) for i in range(3)])
    assert [(r.label, r.error) for r in results] == [("sofa", None)] * 3


@pytest.mark.parametrize(
    "reply, message",
    [
        ((500, '{"error": "engine crashed"}'), "HTTP 500"),
        ((200, "not json at all"), "malformed chat-completions response"),
        ((200, '{"choices": []}'), "malformed chat-completions response"),
        ("I like turtles", "names none of the 3 classes"),
    ],
)
def test_http_errors_and_nonsense_give_label_none_with_error(reply, message):
    with ChatServer(lambda received: reply) as server:
        labeler = MllmLabeler.from_config(labeler_cfg(server.endpoint, timeout_s=5), no_matcher())
        result = labeler.label([LabelRequest(9, [boxed(0)], CLASSES)])[0]
    assert result.track_id == 9 and result.label is None and message in result.error


def test_unreachable_endpoint_is_an_error_result():
    with ChatServer(lambda received: "chair") as server:
        endpoint = server.endpoint
    labeler = MllmLabeler.from_config(labeler_cfg(endpoint, timeout_s=2), no_matcher())  # server is closed
    result = labeler.label([LabelRequest(1, [boxed(0)], CLASSES)])[0]
    assert result.label is None and "cannot reach" in result.error


def test_endpoint_must_be_an_http_url():
    with pytest.raises(ConfigError, match="perception.labeler.endpoint"):
        OpenAITransport("127.0.0.1:8000/v1", "m")
