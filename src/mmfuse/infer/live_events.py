"""Scored windows → event lines: a line when an event starts, one when it ends.

An event is a run of scored windows with one label (`"anomaly"`, or a classifier's class other
than the background); windows skipped while behind end it (what they held is unknown), so an
event never spans minutes it did not see. The start line
goes out as soon as the first window of the run is scored, so an alarm never waits for the
event to end; the end line sums the run up (its span, the peak score, which inputs fired).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone


@dataclass
class Decision:
    """One scored window: its label (None: normal / background), the score that decided it,
    the per-input scores and the inputs that fired on their own."""

    label: str | None
    score: float
    scores: dict[str, float]
    fired: list[str]


@dataclass
class _Open:
    label: str
    start: float
    end: float
    peak: float
    peak_at: float
    windows: int = 1
    fired: set[str] = field(default_factory=set)
    scores: dict[str, float] = field(default_factory=dict)  # per input, its highest


class EventTracker:
    """Feed `update(start, end, decision, latency)` per scored window; it returns the lines
    to write. `close()` ends an event still open when the source ends."""

    def __init__(self, source: str, extra: dict | None = None):
        self.source = source
        self.extra = dict(extra or {})  # fields every line carries (e.g. the threshold)
        self.current: _Open | None = None
        self.events = 0

    def update(
        self, start: float, end: float, decision: Decision, latency: float | None
    ) -> list[dict]:
        lines = []
        current = self.current
        if current is not None and current.label != decision.label:
            lines.append(self._end(latency))
            current = None
        if decision.label is None:
            return lines
        if current is None:
            current = self.current = _Open(decision.label, start, end, decision.score, start)
            self.events += 1
            lines.append(self._start(decision, start, end, latency))
        else:
            current.end, current.windows = end, current.windows + 1
            if decision.score > current.peak:
                current.peak, current.peak_at = decision.score, start
        current.fired.update(decision.fired)
        for name, value in decision.scores.items():
            current.scores[name] = max(value, current.scores.get(name, value))
        return lines

    def close(self, latency: float | None = None) -> list[dict]:
        return [self._end(latency)] if self.current is not None else []

    def _start(self, d: Decision, start: float, end: float, latency: float | None) -> dict:
        line = self._line("start", d.label, start, end, latency)
        line.update(score=_round(d.score), inputs=sorted(d.fired), scores=_rounded(d.scores))
        return line

    def _end(self, latency: float | None) -> dict:
        e, self.current = self.current, None
        line = self._line("end", e.label, e.start, e.end, latency)
        line.update(
            peak=_round(e.peak),
            peak_at=round(e.peak_at, 3),
            windows=e.windows,
            inputs=sorted(e.fired),
            scores=_rounded(e.scores),
        )
        return line

    def _line(self, state, label, start, end, latency) -> dict:
        return {
            "event": label,
            "state": state,
            "start": round(start, 3),
            "end": round(end, 3),
            "source": self.source,
            "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "latency_s": None if latency is None else round(latency, 3),
            **self.extra,
        }


def _round(x: float) -> float:
    return round(float(x), 4)


def _rounded(scores: dict[str, float]) -> dict[str, float]:
    return {k: _round(v) for k, v in sorted(scores.items())}


__all__ = ["Decision", "EventTracker"]
