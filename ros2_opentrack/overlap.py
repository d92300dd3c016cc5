"""Pipeline.step over a stream with the stages of consecutive keyframes overlapped.

    for result in run_overlapped(pipe, reader):  # the same results, in the same order, as pipe.step(frame)
        ...

Three threads, joined by queues of one frame each: (1) admit + segment (detector and segmenter) of keyframe k+2,
(2) describe (the features backend) of keyframe k+1, (3) the caller's thread tracks keyframe k. Throughput is then
bound by the slowest stage instead of their sum, where the backends release the GIL (ONNX Runtime and torch do).
Admit and track keep frame order and own all state; segment and describe touch none of it, so the results equal
those of a plain step() loop.
"""

from __future__ import annotations

import queue
import threading
from typing import Iterable, Iterator

from .pipeline import Pipeline, StepResult

_DONE = object()


class _Failed:
    def __init__(self, exc: BaseException):
        self.exc = exc


def run_overlapped(pipe: Pipeline, frames: Iterable, depth: int = 1, stop_reading=None) -> Iterator[StepResult]:
    """pipe.step(frame) for every frame, in order, with segment / describe / track running concurrently.

    ``stop_reading`` (an Event-like flag): once set, no further frame is read; the frames already read are
    still tracked and yielded, so a run stopped by Ctrl-C keeps all it has read."""
    stop = threading.Event()
    to_describe: queue.Queue = queue.Queue(maxsize=depth)
    to_track: queue.Queue = queue.Queue(maxsize=depth)

    def put(q: queue.Queue, item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def first_stage() -> None:
        try:
            for frame in frames:
                if not put(to_describe, pipe.segment(pipe.admit(frame))):
                    return
                if stop_reading is not None and stop_reading.is_set():
                    break
        except BaseException as exc:  # the reader or a model failed: the caller re-raises it
            put(to_describe, _Failed(exc))
            return
        put(to_describe, _DONE)

    def second_stage() -> None:
        while not stop.is_set():
            try:
                item = to_describe.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is _DONE or isinstance(item, _Failed):
                put(to_track, item)
                return
            try:
                item = pipe.describe(item)
            except BaseException as exc:
                put(to_track, _Failed(exc))
                return
            if not put(to_track, item):
                return

    threads = [
        threading.Thread(target=t, name=f"opentrack-{n}", daemon=True)
        for t, n in ((first_stage, "segment"), (second_stage, "describe"))
    ]
    for t in threads:
        t.start()
    try:
        while True:
            item = to_track.get()
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.exc
            yield pipe.track(item)
    finally:  # the caller stopped early (Ctrl-C, an error): let the stages end
        stop.set()
        for q in (to_describe, to_track):
            while not q.empty():
                q.get_nowait()
        for t in threads:
            t.join(timeout=5.0)
