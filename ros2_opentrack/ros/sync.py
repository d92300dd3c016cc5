"""Stamp matching of several message streams (rgb, depth, masks, ...), without ROS imports.

message_filters has no PyPI wheel, so this is a small approximate-time synchroniser: a set is emitted when
every stream has a message within ``tolerance`` seconds of the anchor stream's message. Each stream keeps a
short bounded buffer; what can never be matched any more is dropped and counted by reason, never silently.

Time jumps (tf2's practice, which message_filters lacks): a stamp more than ``jump_back_s`` older than the
newest one seen means time went back (a bag played with --loop, a simulator reset, a driver restart). The
buffers are cleared (their messages counted as ``cleared_by_time_jump``), ``on_jump`` is told (the node clears
its TF history there and warns once) and matching goes on from the new stamps. A stamp more than
``max_ahead_s`` ahead of ``clock()`` is dropped as ``future_stamp`` without touching the state, so one wildly
stamped message cannot blind the stream; one only moderately ahead is recovered from as a jump back.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Tuple


class StampSync:
    """Approximate-time matching of named streams on their stamps (seconds).

    ``add`` returns the matched sets (dict name -> message) that the new message completed, oldest first.
    Drop reasons: ``out_of_order`` (stamp not newer than the stream's previous one, or older than the last
    emitted set), ``unmatched`` (pushed out of its buffer or overtaken without a partner), ``buffer_full``,
    ``future_stamp`` (beyond ``max_ahead_s`` of the clock), ``cleared_by_time_jump`` (buffered when time jumped
    back; the jumps themselves are counted in ``jumps_back``), ``bad_stamp`` (NaN / inf)."""

    def __init__(
        self,
        streams: Sequence[str],
        tolerance: float = 0.02,
        buffer_size: int = 10,
        anchor: Optional[str] = None,
        jump_back_s: float = 1.0,
        max_ahead_s: float = 0.0,
        clock: Optional[Callable[[], float]] = None,
        on_jump: Optional[Callable[[str, float, float], None]] = None,
    ):
        """``jump_back_s``: how far back a stamp may lie behind the newest before it counts as a time jump
        (0 disables: such stamps stay out_of_order). ``max_ahead_s`` with ``clock`` (seconds; a clock reading
        0, as sim time before /clock, disables the check): the farthest a stamp may lie in the future (0
        disables). ``on_jump(stream, newest_before, stamp)`` is called after a jump, outside the lock."""
        if not streams:
            raise ValueError("StampSync needs at least one stream")
        self.streams = list(streams)
        self.anchor = anchor or self.streams[0]
        self.tolerance = float(tolerance)
        self.jump_back_s = float(jump_back_s)
        self.max_ahead_s = float(max_ahead_s)
        self._clock = clock
        self._on_jump = on_jump
        self._buffers: Dict[str, Deque[Tuple[float, Any]]] = {s: deque() for s in self.streams}
        self._buffer_size = max(1, int(buffer_size))
        self._last_in: Dict[str, float] = {}
        self._last_out = float("-inf")
        self.dropped: Counter = Counter()
        self.received: Counter = Counter()  # messages offered per stream (for accounting: see ``accounted``)
        self.emitted = 0  # matched sets handed out
        self.jumps_back = 0
        self._lock = threading.Lock()

    def add(self, stream: str, stamp: float, msg: Any) -> List[Dict[str, Any]]:
        jumped = None
        with self._lock:
            self.received[stream] += 1
            stamp = float(stamp)
            if stamp != stamp or stamp in (float("inf"), float("-inf")):
                self.dropped["bad_stamp"] += 1
                return []
            if self._too_far_ahead(stamp):
                self.dropped["future_stamp"] += 1
                return []
            newest = max(self._last_out, max(self._last_in.values(), default=float("-inf")))
            if self.jump_back_s > 0 and stamp < newest - self.jump_back_s:
                self._clear_for_jump()
                jumped = newest
            elif stamp <= self._last_in.get(stream, float("-inf")) or stamp <= self._last_out - self.tolerance:
                self.dropped["out_of_order"] += 1
                return []
            self._last_in[stream] = stamp
            buf = self._buffers[stream]
            buf.append((stamp, msg))
            if len(buf) > self._buffer_size:
                buf.popleft()
                self.dropped["buffer_full"] += 1
            out = self._match_all()
        if jumped is not None and self._on_jump is not None:
            self._on_jump(stream, jumped, stamp)
        return out

    def _too_far_ahead(self, stamp: float) -> bool:
        if self.max_ahead_s <= 0 or self._clock is None:
            return False
        now = float(self._clock())
        return now > 0 and stamp > now + self.max_ahead_s

    def _clear_for_jump(self) -> None:
        self.jumps_back += 1
        self._clear("cleared_by_time_jump")

    def _clear(self, reason: str) -> None:
        """Empty every buffer (what was in them counted as dropped under reason) and forget the last stamps."""
        for buf in self._buffers.values():
            if buf:
                self.dropped[reason] += len(buf)
            buf.clear()
        self._last_in.clear()
        self._last_out = float("-inf")

    def accounted(self) -> Tuple[int, int]:
        """(messages received, messages accounted for: in an emitted set, counted under a drop reason, or still
        buffered). Equal unless a message was lost silently."""
        with self._lock:
            return (
                sum(self.received.values()),
                self.emitted * len(self.streams)
                + sum(self.dropped.values())
                + sum(len(b) for b in self._buffers.values()),
            )

    def reset(self) -> None:
        with self._lock:
            self._clear("cleared_by_reset")

    def pending(self) -> Dict[str, int]:
        return {s: len(b) for s, b in self._buffers.items()}

    def _match_all(self) -> List[Dict[str, Any]]:
        out = []
        while True:
            matched = self._match_oldest()
            if matched is None:
                return out
            out.append(matched)

    def _match_oldest(self) -> Optional[Dict[str, Any]]:
        anchor = self._buffers[self.anchor]
        while anchor:
            t, msg = anchor[0]
            picks = {self.anchor: (0, msg)}
            for name in self.streams:
                if name == self.anchor:
                    continue
                idx = _closest(self._buffers[name], t)
                if idx is None or abs(self._buffers[name][idx][0] - t) > self.tolerance:
                    if self._can_still_match(name, t):
                        return None  # wait for the partner
                    anchor.popleft()  # no partner will ever come for this anchor message
                    self.dropped["unmatched"] += 1
                    break
                picks[name] = (idx, self._buffers[name][idx][1])
            else:
                return self._emit(t, picks)
        return None

    def _can_still_match(self, name: str, t: float) -> bool:
        """A partner for stamp t may still arrive on ``name`` unless that stream is already past t."""
        return self._last_in.get(name, float("-inf")) < t + self.tolerance

    def _emit(self, t: float, picks: Dict[str, Tuple[int, Any]]) -> Dict[str, Any]:
        for name, (idx, _) in picks.items():
            buf = self._buffers[name]
            for _ in range(idx):  # older messages of this stream lost their chance
                buf.popleft()
                self.dropped["unmatched"] += 1
            buf.popleft()
        self._last_out = t
        self.emitted += 1
        return {name: msg for name, (_, msg) in picks.items()}


def _closest(buf: Deque[Tuple[float, Any]], t: float) -> Optional[int]:
    if not buf:
        return None
    best, best_dt = 0, abs(buf[0][0] - t)
    for i in range(1, len(buf)):
        dt = abs(buf[i][0] - t)
        if dt < best_dt:
            best, best_dt = i, dt
    return best


class DropOldestQueue:
    """Bounded FIFO between the executor (put, never blocks) and the worker (get, waits); when full the oldest
    item is dropped and counted, so a slow worker sees the newest data instead of a growing backlog."""

    def __init__(self, maxsize: int):
        self.maxsize = max(1, int(maxsize))
        self._items: Deque[Any] = deque()
        self._cond = threading.Condition()
        self.dropped = 0
        self._closed = False

    def put(self, item: Any) -> bool:
        """Returns False when an old item had to be dropped to make room."""
        with self._cond:
            dropped = len(self._items) >= self.maxsize
            if dropped:
                self._items.popleft()
                self.dropped += 1
            self._items.append(item)
            self._cond.notify()
            return not dropped

    def get(self, timeout: Optional[float] = None) -> Any:
        """The oldest item, or None after ``timeout`` seconds / once closed."""
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait(timeout)
            return self._items.popleft() if self._items else None

    def clear(self) -> None:
        with self._cond:
            self._items.clear()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)
