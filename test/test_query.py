"""answer_query: shortlist by label similarity, optional MLLM confirmation, ordering, empty query."""

import numpy as np
import pytest

from ros2_opentrack.errors import InputError
from ros2_opentrack.perception.base import LabelResult
from ros2_opentrack.query import QueryMatch, answer_query, word_score
from ros2_opentrack.types import Instance, View


def instance(i, label, views=1):
    view = View(
        image_key=i,
        frame_index=i,
        stamp=0.0,
        box=np.array([1, 1, 6, 6], np.float32),
        visible_fraction=1.0,
        mask_area=25,
    )
    return Instance(
        id=i, points=np.zeros((3, 3), np.float32), colors=np.zeros((3, 3), np.uint8), label=label, views=[view] * views
    )


INSTANCES = [
    instance(1, "chair"),
    instance(2, "coffee mug"),
    instance(3, "mug"),
    instance(4, None),
    instance(5, "table"),
    instance(6, "mugs", views=0),
]


class TableMatcher:
    """Hand-made similarities standing in for the embedder: only the ranking logic is under test."""

    def __init__(self, table):
        self.table = table

    def similarity(self, queries, candidates):
        return np.array([[self.table.get((q, c), 0.0) for c in candidates] for q in queries])


@pytest.mark.parametrize("text", ["", "   ", "\n\t", None])
def test_empty_query_is_an_input_error(text):
    with pytest.raises(InputError, match="query text is empty"):
        answer_query(text, INSTANCES)


def test_word_scores():
    assert word_score("where is the red mug", "mug") == 1.0
    assert word_score("where is the red mug", "coffee mug") == 0.5
    assert word_score("mug", "coffee mug") == 1.0  # the whole query is in the label
    assert word_score("Mugs!", "mug") == 1.0
    assert word_score("where is the chair", "table") == 0.0


def test_word_match_shortlist_without_matcher():
    matches = answer_query("where is the red mug", INSTANCES, shortlist=5, min_similarity=0.3)
    assert matches == [
        QueryMatch(3, 1.0, "mug", None),
        QueryMatch(6, 1.0, "mugs", None),
        QueryMatch(2, 0.5, "coffee mug", None),
    ]


def test_matcher_scores_order_the_shortlist_and_cut_it():
    table = {
        ("something to sit on", "chair"): 0.62,
        ("something to sit on", "table"): 0.41,
        ("something to sit on", "mug"): 0.12,
        ("something to sit on", "coffee mug"): 0.1,
    }
    matches = answer_query(
        "something to sit on", INSTANCES, text_matcher=TableMatcher(table), shortlist=5, min_similarity=0.3
    )
    assert [(m.instance_id, round(m.score, 2)) for m in matches] == [(1, 0.62), (5, 0.41)]
    assert [
        m.instance_id
        for m in answer_query("something to sit on", INSTANCES, text_matcher=TableMatcher(table), shortlist=1)
    ] == [1]


class RecordingLabeler:
    """Confirms the instances in ``yes``; fails for those in ``fail``; records the requests it got."""

    text_matcher = None  # Labeler protocol: no matcher of its own

    def __init__(self, yes, fail=()):
        self.yes, self.fail, self.requests = set(yes), set(fail), []

    def label(self, requests):
        self.requests.extend(requests)
        return [
            LabelResult(r.track_id, None, error="timeout")
            if r.track_id in self.fail
            else LabelResult(
                r.track_id,
                r.choices[0] if r.track_id in self.yes else None,
                task_indices=[0] if r.track_id in self.yes else [],
            )
            for r in requests
        ]


def test_mllm_confirmation_reorders_confirmed_first():
    labeler = RecordingLabeler(yes={2}, fail=set())
    seen_views = []

    def view_image(view):
        seen_views.append(view.image_key)
        return np.full((8, 8, 3), view.image_key, np.uint8)

    matches = answer_query("  where is the red mug ", INSTANCES, labeler=labeler, view_image=view_image)
    assert [(m.instance_id, m.confirmed) for m in matches] == [(2, True), (6, None), (3, False)]
    assert sorted(seen_views) == [2, 3]  # instance 6 has no view: not asked
    assert all(
        r.mode == "tasks" and r.choices == ["where is the red mug"] and len(r.images) == 1 for r in labeler.requests
    )
    assert {int(r.images[0][0, 0, 0]) for r in labeler.requests} == {2, 3}


def test_failed_confirmation_leaves_the_candidate_unconfirmed():
    labeler = RecordingLabeler(yes={3}, fail={2})
    matches = answer_query("mug", INSTANCES, labeler=labeler, view_image=lambda v: np.zeros((8, 8, 3), np.uint8))
    assert [(m.instance_id, m.confirmed) for m in matches] == [(3, True), (2, None), (6, None)]


def test_no_labelled_instance_gives_no_match():
    assert answer_query("mug", [instance(1, None)]) == []
