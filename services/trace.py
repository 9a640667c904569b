"""Stage timestamps carried by every message, so latency is measured where it happens.

A trace starts at the instant its data describes (`origin`: the newest sample or tick time, on
the LSL clock) and each stage appends the LSL-clock time at which it handed the message on
(drivers.lsl_inlets.local_clock: read without releasing the GIL where possible). The latency of a stage is the gap since the previous stamp (the first stage: since `origin`),
so Ray hops and queueing are charged to the stage that received the message, and the stage
latencies of one message add up to its end-to-end latency.

Messages that merge (several ingest chunks into one tick batch) keep the trace of the chunk
that completed them: that is the one whose latency the output actually paid.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from drivers.lsl_inlets import local_clock

__all__ = ["STAGES", "Trace"]

#: The stage names of gait_stream_stage_latency_seconds{stage} (docs/TEAM_NOTES.md).
STAGES: tuple[str, ...] = ("ingest", "sync", "inference", "gait", "publish")


@dataclass
class Trace:
    origin: float  # s, LSL clock: the time the data describes
    stamps: list[tuple[str, float]] = field(default_factory=list)

    def stamp(self, stage: str, t: float | None = None) -> Trace:
        """Record that `stage` finished with this message now (or at `t`); returns self."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; stages are {STAGES}")
        self.stamps.append((stage, local_clock() if t is None else float(t)))
        return self

    def branch(self, origin: float | None = None) -> Trace:
        """A copy for a message that continues on its own path (e.g. to the gait stage)."""
        return Trace(self.origin if origin is None else origin, list(self.stamps))

    def rebase(self, origin: float) -> Trace:
        """Same stamps, a new origin (a tick batch inherits an ingest chunk's stamps)."""
        return Trace(origin, list(self.stamps))

    def stage_latencies(self) -> dict[str, float]:
        """Seconds each stage took: time since the previous stamp (or since origin)."""
        out: dict[str, float] = {}
        prev = self.origin
        for stage, t in self.stamps:
            out[stage] = out.get(stage, 0.0) + (t - prev)
            prev = t
        return out

    def last(self) -> float:
        return self.stamps[-1][1] if self.stamps else self.origin

    def total(self) -> float:
        """Origin to the last stamp."""
        return self.last() - self.origin
