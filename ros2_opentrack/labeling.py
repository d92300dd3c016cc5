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

from .perception.base import LabelRequest, LabelResult
from .io.encodings import decode_jpeg
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
            requests = [LabelRequest(track_id=j.track_id, choices=list(j.choices), mode=j.mode,
                                     images=[draw_red_box(decode_jpeg(data), box, self.box_thickness)
                                             for data, box in j.views]) for j in batch]
            results = self.labeler.label(requests)
        except Exception as exc:  # a labeller failure must never end the worker
            log.warning("labeller failed on %d request(s): %s", len(batch), exc)
            results = [LabelResult(track_id=j.track_id, label=None, error=str(exc)) for j in batch]
        for r in results:
            self.results.put(r)
