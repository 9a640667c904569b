"""Helpers the LSL tests share (not a test module)."""

from __future__ import annotations

import pylsl


def open_inlet(source_id: str, timeout: float = 5.0) -> pylsl.StreamInlet:
    """An open inlet on the stream with this source id (asserts that it is visible)."""
    found = pylsl.resolve_byprop("source_id", source_id, 1, timeout)
    assert found, f"no stream with source_id {source_id!r}"
    inlet = pylsl.StreamInlet(found[0], max_buflen=10)
    inlet.open_stream(timeout)
    return inlet
