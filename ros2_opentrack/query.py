"""Text queries over the labelled instances ("where is the red mug"), paper 3.3 / DESIGN step 9.

1. Shortlist: instances whose label is similar to the query (sentence-embedding cosine with a text matcher, or a
   word-overlap score without one), at least ``min_similarity``, best ``shortlist`` kept.
2. Confirm (when a labeller and a view-image function are given): each candidate's best view, red box drawn, is
   sent to the MLLM in the task mode with the query as the one task, all candidates in one batch.
Result: objects present at their place first, then last-known places (presence moved / removed: the camera saw
the place empty); within each, confirmed candidates first, then unconfirmed (no view, failed request), then
rejected; each group by score. Rejected candidates are kept (confirmed=False) so a caller can show them or filter them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import numpy as np

from .errors import InputError
from .perception.base import LabelRequest
from .perception.prompts import normalise


@dataclass
class QueryMatch:
    instance_id: int
    score: float  # text similarity of the query and the instance label
    label: Optional[str]
    confirmed: Optional[bool]  # MLLM verdict on the best view; None: not asked or no answer
    presence: str = "present"  # the instance's presence: moved / removed answers are a last-known place

    @property
    def last_known(self) -> bool:
        """The answer is where the object was last seen, not where it is (its place was seen empty)."""
        return self.presence != "present"


def answer_query(
    text: str,
    instances: Sequence,
    text_matcher=None,
    labeler=None,
    view_image: Optional[Callable] = None,
    shortlist: int = 5,
    min_similarity: float = 0.3,
) -> List[QueryMatch]:
    """Instances matching ``text``, best first (see the module doc). Raises InputError on an empty query."""
    query = text.strip() if isinstance(text, str) else ""
    if not query:
        raise InputError("query text is empty")
    labelled = [inst for inst in instances if getattr(inst, "label", None)]
    if not labelled:
        return []
    scores = label_scores(query, [inst.label for inst in labelled], text_matcher)
    order = sorted(
        range(len(labelled)), key=lambda i: (_presence(labelled[i]) != "present", -scores[i], labelled[i].id)
    )  # present objects make the shortlist first
    picked = [i for i in order if scores[i] >= min_similarity][: max(0, int(shortlist))]
    matches = [
        QueryMatch(int(labelled[i].id), float(scores[i]), labelled[i].label, None, _presence(labelled[i]))
        for i in picked
    ]
    if labeler is not None and view_image is not None and matches:
        _confirm(query, matches, [labelled[i] for i in picked], labeler, view_image)
    rank = {True: 0, None: 1, False: 2}
    return sorted(matches, key=lambda m: (m.last_known, rank[m.confirmed], -m.score, m.instance_id))


def _presence(inst) -> str:
    p = getattr(inst, "presence", "present")
    return str(getattr(p, "value", p) or "present")


def label_scores(query: str, labels: Sequence[str], text_matcher=None) -> np.ndarray:
    """Similarity of the query to each label: cosine with a matcher, else word overlap (see word_score)."""
    if text_matcher is not None:
        return np.asarray(text_matcher.similarity([query], list(labels)), dtype=np.float64)[0]
    return np.array([word_score(query, label) for label in labels], dtype=np.float64)


def word_score(query: str, label: str) -> float:
    """Fraction of the label's words found in the query (plural-insensitive): 'mug' in 'where is the red mug'
    -> 1.0, 'coffee mug' -> 0.5; a query that is part of a longer label counts the query's share."""
    q = {_singular(w) for w in normalise(query).split()}
    words = [_singular(w) for w in normalise(label).split()]
    if not words or not q:
        return 0.0
    hit = sum(w in q for w in words)
    return max(hit / len(words), hit / len(q) if hit == len(q) else 0.0)


def _singular(word: str) -> str:
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def _confirm(query: str, matches: List[QueryMatch], candidates: Sequence, labeler, view_image) -> None:
    requests, targets = [], []
    for match, inst in zip(matches, candidates):
        views = list(getattr(inst, "views", None) or [])
        if not views:
            continue
        try:
            image = view_image(views[0])
        except Exception:  # an evicted or unreadable view leaves the candidate unconfirmed
            continue
        requests.append(LabelRequest(track_id=match.instance_id, images=[image], choices=[query], mode="tasks"))
        targets.append(match)
    if not requests:
        return
    try:
        results = labeler.label(requests)
    except Exception:  # the labeller contract says it never raises; stay safe if one does
        return
    for match, result in zip(targets, results):
        if result.error is None:
            match.confirmed = 0 in result.task_indices
