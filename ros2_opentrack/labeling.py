"""Asynchronous labelling: a worker thread asks the Labeler; tracking never waits for it.

The step thread only enqueues small jobs (JPEG bytes + boxes, already encoded for the view store) into a
bounded queue and collects finished results; decoding, drawing the red boxes and the model call all happen
on the worker."""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .io.encodings import decode_jpeg
from .perception.base import LabelRequest, LabelResult
from .views import draw_red_box

log = logging.getLogger("ros2_opentrack")


@dataclass
class LabelJob:
    track_id: int
    views: List[Tuple[bytes, np.ndarray]]  # (jpeg, box) per view, best first
    choices: List[str]
    mode: str = "closed"


class LabelWorker:
    def __init__(self, labeler, max_batch: int = 8, queue_size: int = 64, box_thickness: int = 3):
        self.labeler = labeler
        self.max_batch = max(1, int(max_batch))
        self.box_thickness = box_thickness
        self.jobs: "queue.Queue[Optional[LabelJob]]" = queue.Queue(maxsize=queue_size)
        self.results: "queue.Queue[LabelResult]" = queue.Queue()
        self._busy = threading.Event()
        self._thread = threading.Thread(target=self._run, name="opentrack-labeler", daemon=True)
        self._thread.start()

    def submit(self, job: LabelJob) -> bool:
        """Enqueue without blocking; False when the queue is full (the track is retried later)."""
        try:
            self.jobs.put_nowait(job)
            return True
        except queue.Full:
            return False

    def poll(self) -> List[LabelResult]:
        out = []
        while True:
            try:
                out.append(self.results.get_nowait())
            except queue.Empty:
                return out

    def idle(self) -> bool:
        return self.jobs.empty() and not self._busy.is_set()

    def wait(self, timeout_s: float) -> bool:
        """Wait until every queued job is answered (True) or the timeout passes (False)."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.idle():
                return True
            time.sleep(0.01)
        return self.idle()

    def close(self) -> None:
        try:
            self.jobs.put(None, timeout=1.0)
        except queue.Full:
            pass
        self._thread.join(timeout=2.0)

    def _run(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            self._busy.set()
            batch = [job]
            while len(batch) < self.max_batch:
                try:
                    nxt = self.jobs.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._answer(batch)
                    return
                batch.append(nxt)
            self._answer(batch)
            self._busy.clear()

    def _answer(self, batch: Sequence[LabelJob]) -> None:
        try:
            requests = [
                LabelRequest(
                    track_id=j.track_id,
                    choices=list(j.choices),
                    mode=j.mode,
                    images=[draw_red_box(decode_jpeg(data), box, self.box_thickness) for data, box in j.views],
                )
                for j in batch
            ]
            results = self.labeler.label(requests)
        except Exception as exc:  # a labeller failure must never end the worker
            log.warning("labeller failed on %d request(s): %s", len(batch), exc)
            results = [LabelResult(track_id=j.track_id, label=None, error=str(exc)) for j in batch]
        for r in results:
            self.results.put(r)


@dataclass
class LabelState:
    label: Optional[str] = None
    score: float = 0.0
    labelled_size: int = 0  # track voxel count when the last request was sent
    pending: bool = False


class TrackLabels:
    """The one owner of MLLM label state per track: when to ask (stable, grown since the last answer), the
    asynchronous worker, and the answers. Tracking never waits for it."""

    def __init__(self, labeler, labeler_cfg, box_thickness: int = 3):
        self.cfg = labeler_cfg
        self.worker = (
            LabelWorker(labeler, labeler_cfg.max_batch, box_thickness=box_thickness) if labeler is not None else None
        )
        self._state: dict = {}  # track id -> LabelState

    def get(self, track_id: int) -> LabelState:
        return self._state.get(track_id) or LabelState()

    @property
    def labelled(self) -> int:
        return sum(s.label is not None for s in self._state.values())

    def request(self, tracks, views, vocabulary: List[str]) -> None:
        """Ask for labels of the given tracks that are due: seen min_observations times, not waiting for an
        answer, and grown by relabel_growth since the last request."""
        if self.worker is None:
            return
        self.collect()
        for t in tracks:
            s = self._state.setdefault(t.id, LabelState())
            if s.pending or t.observations < self.cfg.min_observations:
                continue
            if s.labelled_size and len(t.voxels) < self.cfg.relabel_growth * s.labelled_size:
                continue
            jpegs = views.jpegs(t.id)
            if jpegs and self.worker.submit(LabelJob(t.id, jpegs, list(vocabulary), self.cfg.mode)):
                s.pending, s.labelled_size = True, len(t.voxels)

    def collect(self) -> None:
        """Take the answers that arrived; answers for tracks merged or ended meanwhile are dropped."""
        if self.worker is None:
            return
        for r in self.worker.poll():
            s = self._state.get(r.track_id)
            if s is None:
                continue
            s.pending = False
            if r.error:
                log.warning("labelling track %d failed: %s", r.track_id, r.error)
                continue
            s.label, s.score = r.label, float(r.score)

    def move(self, from_id: int, to_id: int) -> None:
        """A merge: the kept track keeps its label, else takes the removed one's."""
        moved = self._state.pop(from_id, None)
        if moved is not None and moved.label is not None:
            kept = self._state.setdefault(to_id, LabelState())
            if kept.label is None:
                kept.label, kept.score = moved.label, moved.score

    def forget(self, track_ids) -> None:
        for tid in track_ids:
            self._state.pop(tid, None)

    def restore(self, states: dict) -> None:
        """Replace the label state with a loaded one (nothing is pending after a restart)."""
        self._state = {tid: LabelState(s.label, s.score, s.labelled_size, False) for tid, s in states.items()}

    def wait(self, timeout_s: float) -> None:
        if self.worker is not None:
            self.worker.wait(timeout_s)
            self.collect()

    def clear(self) -> None:
        self._state.clear()
        if self.worker is not None:
            self.worker.poll()

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()
