"""Prompt building and answer parsing (both modes) with hand-made inputs and exact expected outputs."""

import numpy as np
import pytest

from ros2_opentrack.errors import InputError
from ros2_opentrack.perception.base import LabelRequest
from ros2_opentrack.perception.prompts import (
    build_prompt,
    build_prompt_text,
    find_classes,
    normalise,
    parse_answer,
    parse_closed,
    parse_tasks,
)

CLASSES = ["chair", "office chair", "table", "trash can", "shelf", "box", "library", "plant"]
TASKS = ["open the door", "turn on the light", "sit down"]


def test_closed_prompt_is_the_papers_template():
    assert build_prompt_text("closed", ["chair", "table", "trash can"]) == (
        "Identify the object shown in the red rectangle. Return the class name from chair, table, trash can. "
        "If no object is shown, return 'none'."
    )


def test_tasks_prompt_numbers_tasks_from_one():
    assert build_prompt_text("tasks", TASKS) == (
        "The interactive element is shown in the red rectangle. Determine whether the element in the image can "
        "accomplish any task in the task list. If so, return the task index; otherwise return 'no match'. "
        "Tasks:\n1. open the door\n2. turn on the light\n3. sit down"
    )


def test_build_prompt_keeps_images_in_order_and_chat_content_puts_them_first():
    images = [np.full((4, 5, 3), i, np.uint8) for i in range(3)]
    prompt = build_prompt(LabelRequest(track_id=7, images=images, choices=["cup"]))
    assert [int(im[0, 0, 0]) for im in prompt.images] == [0, 1, 2]
    assert prompt.chat_content() == [{"type": "image"}] * 3 + [{"type": "text", "text": prompt.text}]


@pytest.mark.parametrize(
    "request_kwargs, message",
    [
        (dict(images=[], choices=["cup"]), "carries no image"),
        (dict(images=[np.zeros((4, 5), np.uint8)], choices=["cup"]), "must be uint8 HxWx3"),
        (dict(images=[np.zeros((4, 5, 3), np.float32)], choices=["cup"]), "must be uint8 HxWx3"),
        (dict(images=[np.zeros((4, 5, 3), np.uint8)], choices=[]), "non-empty list"),
        (dict(images=[np.zeros((4, 5, 3), np.uint8)], choices=["cup"], mode="open"), "expected one of closed, tasks"),
    ],
)
def test_bad_requests_raise_input_error_naming_the_problem(request_kwargs, message):
    with pytest.raises(InputError, match=message):
        build_prompt(LabelRequest(track_id=3, **request_kwargs))


def test_normalise():
    assert normalise("The object is a 'Chair'.") == "the object is a chair"
    assert normalise('  "Trash-Can!" ') == "trash can"


@pytest.mark.parametrize(
    "answer, label",
    [
        ("chair", "chair"),
        ("Chair", "chair"),
        ("The object is a Chair.", "chair"),
        ("'table'", "table"),
        ('"Office chair"', "office chair"),  # the longer class wins over the contained one
        ("It is an office chair next to a table", "office chair"),
        ("Chairs", "chair"),
        ("trash cans", "trash can"),
        ("Trash-can", "trash can"),
        ("shelves", "shelf"),
        ("boxes", "box"),
        ("libraries", "library"),
        ("Answer: Plant", "plant"),
        ("a table, not a chair", "table"),  # earliest named class
    ],
)
def test_closed_answers_map_to_the_class(answer, label):
    parsed = parse_closed(answer, CLASSES)
    assert (parsed.label, parsed.score, parsed.error) == (label, 1.0, None)


@pytest.mark.parametrize("answer", ["none", "None.", "'none'", "NONE", "There is none", "No object", "nothing"])
def test_closed_none_answers_give_no_label_and_no_error(answer):
    parsed = parse_closed(answer, CLASSES)
    assert (parsed.label, parsed.error) == (None, None)


@pytest.mark.parametrize("answer", ["banana", "", "   ", "12345", "chairman"])
def test_closed_unknown_answer_without_matcher_is_an_error(answer):
    parsed = parse_closed(answer, CLASSES)
    assert parsed.label is None
    assert "names none of the 8 classes" in parsed.error


class TableMatcher:
    """A hand-made similarity table standing in for the sentence embedder (only parse logic is under test)."""

    def __init__(self, table):
        self.table = table

    def similarity(self, queries, candidates):
        return np.array([[self.table.get((q, c), 0.0) for c in candidates] for q in queries], np.float32)


def test_closed_free_answer_maps_through_the_matcher_above_the_threshold():
    matcher = TableMatcher({("a comfy seat", "chair"): 0.72, ("a comfy seat", "table"): 0.31, ("xyzzy", "plant"): 0.2})
    parsed = parse_closed("a comfy seat", CLASSES, matcher, min_similarity=0.5)
    assert parsed.label == "chair" and parsed.score == pytest.approx(0.72) and parsed.error is None
    parsed = parse_closed("xyzzy", CLASSES, matcher, min_similarity=0.5)
    assert parsed.label is None and parsed.error is not None


@pytest.mark.parametrize(
    "answer, indices",
    [
        ("1", [0]),
        ("1, 3", [0, 2]),
        ("[1, 2]", [0, 1]),
        ("Task 2.", [1]),
        ("The answer is 3", [2]),
        ("2 and 7", [1]),  # 7 is out of range: dropped
        ("3, 3, 1", [2, 0]),  # duplicates removed, order kept
        ("turn on the light", [1]),  # the task quoted instead of its index
    ],
)
def test_task_answers_give_zero_based_indices(answer, indices):
    parsed = parse_tasks(answer, TASKS)
    assert parsed.task_indices == indices
    assert parsed.label == TASKS[indices[0]]
    assert parsed.error is None


@pytest.mark.parametrize("answer", ["no match", "No match.", "'no match'", "none"])
def test_task_no_match_is_empty_without_error(answer):
    parsed = parse_tasks(answer, TASKS)
    assert (parsed.task_indices, parsed.label, parsed.error) == ([], None, None)


@pytest.mark.parametrize(
    "answer, message",
    [
        ("5", "no task index in 1..3"),
        ("0", "no task index in 1..3"),
        ("3.5 meters", "neither task indices nor 'no match'"),
        ("blah", "neither task indices nor 'no match'"),
    ],
)
def test_task_nonsense_is_an_error(answer, message):
    parsed = parse_tasks(answer, TASKS)
    assert parsed.task_indices == [] and message in parsed.error


def test_parse_answer_dispatches_on_mode():
    assert parse_answer("2", "tasks", TASKS).task_indices == [1]
    assert parse_answer("Table.", "closed", CLASSES).label == "table"


def test_find_classes_positions_are_offsets_in_the_normalised_answer():
    assert find_classes("A chair, by the office-chair!", CLASSES) == [(2, 0), (15, 1)]
