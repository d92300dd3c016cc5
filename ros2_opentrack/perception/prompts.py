"""The labeller's prompts and answer parsing, shared by every transport (paper supplement sec. 6).

Two modes:
- closed: a label set -> one class name or 'none';
- tasks: a list of free-text tasks (or one query) -> the indices of the tasks the boxed object fits, or
  'no match', all in one call.
Tasks are shown numbered from 1 (what a model is used to read); parsed indices are 0-based into the list.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..config import LABEL_MODES
from ..errors import InputError
from ..types import check_rgb

CLOSED_TEMPLATE = (
    "Identify the object shown in the red rectangle. Return the class name from {classes}. "
    "If no object is shown, return 'none'."
)
TASKS_TEMPLATE = (
    "The interactive element is shown in the red rectangle. Determine whether the element in the "
    "image can accomplish any task in the task list. If so, return the task index; otherwise return "
    "'no match'. Tasks:\n{tasks}"
)
MODES = LABEL_MODES  # the values of labeler.mode

# Answers that mean "nothing here" (after normalisation).
_NONE_ANSWERS = {
    "none",
    "no object",
    "nothing",
    "no",
    "n a",
    "na",
    "null",
    "unknown",
    "no match",
    "none of them",
    "none of the above",
    "no object is shown",
}
_NO_MATCH_ANSWERS = {"no match", "none", "no", "no matches", "nothing", "no task", "none of them", "null"}
_WORD = re.compile(r"[a-z0-9]+")


@dataclass
class Prompt:
    """One chat turn for the MLLM: the images first (each a full frame with the red box), then the text."""

    text: str
    images: List[np.ndarray] = field(default_factory=list)

    def chat_content(self) -> List[dict]:
        """The message content in the chat-template form the Qwen-VL processors read."""
        return [{"type": "image"} for _ in self.images] + [{"type": "text", "text": self.text}]


def build_prompt_text(mode: str, choices: Sequence[str]) -> str:
    """The paper's template for ``mode`` filled with ``choices`` (class names or task descriptions)."""
    choices = [str(c).strip() for c in choices]
    if mode not in MODES:
        raise InputError(f"label request mode {mode!r}: expected one of {', '.join(MODES)}")
    if not choices or not all(choices):
        raise InputError(f"label request ({mode}) needs a non-empty list of non-empty choices, got {list(choices)}")
    if mode == "closed":
        return CLOSED_TEMPLATE.format(classes=", ".join(choices))
    return TASKS_TEMPLATE.format(tasks="\n".join(f"{i + 1}. {t}" for i, t in enumerate(choices)))


def build_prompt(request) -> Prompt:
    """A LabelRequest -> Prompt. Raises InputError for requests without images or choices."""
    images = list(request.images or [])
    if not images:
        raise InputError(f"label request for track {request.track_id} carries no image")
    for i, image in enumerate(images):
        check_rgb(image, f"label request for track {request.track_id}: image {i}", min_side=2)
    return Prompt(text=build_prompt_text(request.mode, request.choices), images=images)


# ---------------------------------------------------------------------------------------------------------
# Answer parsing


def normalise(text: str) -> str:
    """Lower case, words only: "The object is a 'Chair'." -> "the object is a chair"."""
    return " ".join(_WORD.findall(str(text).lower()))


def _forms(name: str) -> List[str]:
    """A normalised class name and its plural forms (last word inflected)."""
    base = normalise(name)
    if not base:
        return []
    head, _, last = base.rpartition(" ")
    prefix = head + " " if head else ""
    plurals = [last + "s", last + "es"]
    if last.endswith("y"):
        plurals.append(last[:-1] + "ies")
    if last.endswith(("f", "fe")):  # shelf -> shelves, knife -> knives
        plurals.append(last[: last.rfind("f")] + "ves")
    if last.endswith("s"):  # a class given in plural also matches its singular
        plurals.append(last[:-1])
    return [base] + [prefix + p for p in plurals]


def find_classes(answer: str, classes: Sequence[str]) -> List[Tuple[int, int]]:
    """Classes named in ``answer`` as (position, class index), earliest first; a longer name wins where names
    overlap ("office chair" over "chair")."""
    text = " " + normalise(answer) + " "
    hits = []
    for ci, name in enumerate(classes):
        for form in _forms(name):
            pos = text.find(" " + form + " ")
            if pos >= 0:
                hits.append((pos, pos + len(form) + 1, ci))
                break
    kept: List[Tuple[int, int, int]] = []
    for start, stop, ci in sorted(hits, key=lambda h: (h[0] - h[1], h[0])):  # longest first
        if all(stop <= s or e <= start for s, e, _ in kept):
            kept.append((start, stop, ci))
    return sorted((start, ci) for start, _, ci in kept)


def _means_none(answer: str, none_answers) -> bool:
    text = normalise(answer)
    if text in none_answers:
        return True
    # "There is none.", "Answer: none", "no match." as the last words of a longer reply
    return any(text.endswith(" " + n) or text.startswith(n + " ") for n in ("none", "no match"))


@dataclass
class ParsedAnswer:
    label: Optional[str] = None
    task_indices: List[int] = field(default_factory=list)
    score: float = 0.0
    error: Optional[str] = None


def parse_closed(answer: str, classes: Sequence[str], text_matcher=None, min_similarity: float = 0.5) -> ParsedAnswer:
    """Map a free answer to one of ``classes``.

    A class named in the answer (any case, plural, within a sentence) wins, score 1. 'none' and its
    paraphrases give label None without error. Anything else goes to the nearest class by ``text_matcher``
    when one is given and the cosine reaches ``min_similarity`` (score = that cosine); otherwise label None with
    an error naming the answer."""
    hits = find_classes(answer, classes)
    if hits:
        return ParsedAnswer(label=classes[hits[0][1]], score=1.0)
    if _means_none(answer, _NONE_ANSWERS):
        return ParsedAnswer()
    text = normalise(answer)
    if text and text_matcher is not None:
        sims = np.asarray(text_matcher.similarity([str(answer).strip()], list(classes)), dtype=np.float32)[0]
        best = int(np.argmax(sims))
        if float(sims[best]) >= min_similarity:
            return ParsedAnswer(label=classes[best], score=float(sims[best]))
    return ParsedAnswer(error=f"answer {_clip(answer)!r} names none of the {len(classes)} classes")


_INDEX = re.compile(r"(?<![\w.])(\d+)(?![\w]|\.\d)")


def parse_tasks(answer: str, tasks: Sequence[str]) -> ParsedAnswer:
    """Task indices (1-based in the prompt, 0-based out) named in the answer, in order, without duplicates;
    indices outside the list are dropped. 'no match' -> [] without error. An answer with no number that quotes
    a task's text selects that task. Anything else is an error."""
    n = len(tasks)
    numbers = [int(m) for m in _INDEX.findall(str(answer))]
    if numbers:
        indices = list(dict.fromkeys(k - 1 for k in numbers if 1 <= k <= n))
        if not indices:
            return ParsedAnswer(error=f"answer {_clip(answer)!r} names no task index in 1..{n}")
        return _task_result(indices, tasks)
    if _means_none(answer, _NO_MATCH_ANSWERS):
        return ParsedAnswer()
    quoted = [ci for _, ci in find_classes(answer, tasks)]
    if quoted:
        return _task_result(quoted, tasks)
    return ParsedAnswer(error=f"answer {_clip(answer)!r} is neither task indices nor 'no match'")


def _task_result(indices: List[int], tasks: Sequence[str]) -> ParsedAnswer:
    return ParsedAnswer(label=tasks[indices[0]], task_indices=indices, score=1.0)


def parse_answer(
    answer: str, mode: str, choices: Sequence[str], text_matcher=None, min_similarity: float = 0.5
) -> ParsedAnswer:
    if mode == "tasks":
        return parse_tasks(answer, choices)
    return parse_closed(answer, choices, text_matcher, min_similarity)


def _clip(text: str, n: int = 80) -> str:
    text = str(text).strip()
    return text if len(text) <= n else text[:n] + "..."
